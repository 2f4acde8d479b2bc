"""Line formats compile to RE2 patterns and parse headers column-wise, keeping every line."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from logfit_dagster.core.formats import LOGHUB_FORMATS, compile_log_format, get_line_format
from logfit_dagster.core.masking import mask_text
from logfit_dagster.core.parsing import parse_lines


def test_compile_names_fields_and_anchors():
    pattern, fields = compile_log_format("<Date> <Time> <Level> <Component>: <Content>")
    assert fields == ("Date", "Time", "Level", "Component", "Content")
    assert pattern.startswith("^") and pattern.endswith("$")


@pytest.mark.parametrize("bad", ["<Date> <Time>", "<Content> <Content>", "<Bad Name> <Content>"])
def test_compile_rejects_bad_formats(bad):
    with pytest.raises(ValueError):
        compile_log_format(bad)


def test_unknown_format_name_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown line format 'NoSuch'"):
        get_line_format("NoSuch")


@pytest.mark.parametrize(
    "system,line,expected",
    [
        (
            "HDFS",
            "081109 203518 143 INFO dfs.DataNode$DataXceiver: Receiving block blk_-16 src: /10.0.0.1:5",
            {
                "date": "081109",
                "pid": "143",
                "level": "INFO",
                "component": "dfs.DataNode$DataXceiver",
                "content": "Receiving block blk_-16 src: /10.0.0.1:5",
            },
        ),
        (
            "Linux",
            "Jun 14 15:16:01 combo sshd(pam_unix)[19939]: authentication failure; uid=0",
            {
                "component": "sshd(pam_unix)",
                "pid": "19939",
                "content": "authentication failure; uid=0",
            },
        ),
        (
            "Linux",
            "Jun 15 04:06:18 combo su(pam_unix): session opened for user cyrus",
            {"component": "su(pam_unix)", "pid": None, "content": "session opened for user cyrus"},
        ),
        (
            "BGL",
            "KERNDTLB 1118 2005.06.03 R02 2005-06-03-15.42.50.675872 R02 RAS KERNEL FATAL data TLB error",
            {"label": "KERNDTLB", "level": "FATAL", "content": "data TLB error"},
        ),
    ],
)
def test_loghub_formats_parse_header_fields(system, line, expected):
    row = parse_lines(pa.array([line]), get_line_format(system)).to_pylist()[0]
    assert row["parse_ok"] is True
    for key, value in expected.items():
        assert (row[key] or None) == value


def test_lines_that_do_not_match_are_kept_and_flagged():
    lines = pa.array(["081109 203518 143 INFO dfs.X: ok", "garbage without header", ""])
    table = parse_lines(lines, get_line_format("HDFS"))
    assert table.num_rows == 3
    assert table["parse_ok"].to_pylist() == [True, False, False]
    assert table["content"].to_pylist()[1] == "garbage without header"
    assert table["level"].to_pylist()[1] is None


def test_multiline_continuations_inherit_their_record():
    lines = pa.array(
        [
            "stray line before any record",
            "2024-03-01 12:00:00,001 ERROR [main] com.acme.Svc: boom",
            "java.lang.IllegalStateException: bad",
            "\tat com.acme.Svc.run(Svc.java:1)",
            "2024-03-01 12:00:01,001 INFO [main] com.acme.Svc: fine",
        ]
    )
    table = parse_lines(lines, get_line_format("JavaApp", multiline=True)).to_pylist()
    assert [r["parse_ok"] for r in table] == [False, True, True, True, True]
    assert [r["is_continuation"] for r in table] == [False, False, True, True, False]
    assert (
        table[3]["level"] == "ERROR" and table[3]["content"] == "\tat com.acme.Svc.run(Svc.java:1)"
    )


def test_every_loghub_sample_parses_without_failures(shared_data):
    for system in LOGHUB_FORMATS:
        path = shared_data / "loghub-2k" / system / f"{system}_2k.log"
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        table = parse_lines(pa.array(lines), get_line_format(system))
        failures = pc.sum(pc.invert(table["parse_ok"])).as_py()
        assert failures == 0, f"{system}: {failures} lines failed"


@pytest.mark.parametrize(
    "text,masked",
    [
        (
            "Receiving block blk_-1608999687919862906 src: /10.250.19.102:54106",
            "Receiving block <BLK> src: /<IP>",
        ),
        (
            "[instance: 127e769a-4fe6-4548-93b1-513ac51e0e44] took 19.84 seconds",
            "[instance: <UUID>] took <NUM> seconds",
        ),
        ("ptr 0x1f3a at deadbeefcafe1234", "ptr <HEX> at <HEX>"),
    ],
)
def test_masking_replaces_variable_parts(text, masked):
    assert mask_text(text) == masked


@pytest.mark.parametrize("fmt", ["[<Level>] <Content>", "<Date> (<Level> <Content>"])
def test_a_format_that_is_no_regex_fails_in_the_registry_naming_the_field(fmt):
    from logfit_dagster.core.errors import RegistryError
    from logfit_dagster.core.registry import parse_source

    with pytest.raises(RegistryError, match=r"field 'format': log format .* valid regular"):
        parse_source({"name": "app", "origin": "files", "path": "x.log", "format": fmt}, "test")
