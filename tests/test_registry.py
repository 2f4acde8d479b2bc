"""The source registry: defaults per origin, unsafe names and bad entries refused with names."""

import re

import pytest

from logfit_dagster.core.errors import RegistryError
from logfit_dagster.core.registry import (
    add_loghub_entries,
    check_source_name,
    load_registry,
    parse_source,
    read_registry,
)


def _write(tmp_path, body):
    path = tmp_path / "sources.yaml"
    path.write_text(body)
    return path


def test_defaults_follow_the_origin(tmp_path):
    path = _write(
        tmp_path,
        "sources:\n"
        "  - {name: a, origin: synthetic, kind: openstack, lines: 10}\n"
        "  - {name: b, origin: loghub, system: BGL}\n"
        "  - {name: c, origin: files, path: 'logs/*.log'}\n",
    )
    sources = load_registry(path)
    assert (
        sources["a"].session.by == "instance_id"
        and sources["a"].ground_truth.provider == "synthetic"
    )
    assert sources["b"].format == "BGL" and sources["b"].ground_truth.provider == "alert_field"
    assert sources["c"].format == "generic" and not sources["c"].has_ground_truth


@pytest.mark.parametrize("name", ["../x", "a/b", "..", ".hidden", "", "x" * 200])
def test_unsafe_names_are_rejected(name):
    with pytest.raises(RegistryError, match="not a safe file name"):
        check_source_name(name)


@pytest.mark.parametrize(
    "entry,message",
    [
        ("{name: '../x', origin: synthetic, kind: hdfs}", "not a safe file name"),
        ("{name: a, origin: ftp}", "origin"),
        ("{name: a, origin: synthetic, kind: hdfs, colour: red}", "unknown field"),
        ("{name: a, origin: loghub, system: Nope}", "system"),
        ("{name: a, origin: files}", "needs field 'path'"),
        ("{name: a, origin: files, path: x, format: '<A> <B>'}", "no <Content>"),
        ("{name: a, origin: files, path: x, session: {by: nope}}", "session.by"),
    ],
)
def test_bad_entries_name_file_and_entry(tmp_path, entry, message):
    path = _write(tmp_path, f"sources:\n  - {entry}\n")
    with pytest.raises(RegistryError, match=message) as info:
        load_registry(path)
    assert "sources.yaml: sources[0]" in str(info.value)


def test_duplicate_names_are_refused(tmp_path):
    path = _write(
        tmp_path,
        "sources:\n  - {name: a, origin: loghub, system: HDFS}\n"
        "  - {name: a, origin: loghub, system: BGL}\n",
    )
    with pytest.raises(RegistryError, match="appears twice"):
        load_registry(path)


def test_enable_loghub_appends_once(tmp_path):
    path = _write(tmp_path, "sources:\n  - {name: a, origin: loghub, system: HDFS}\n")
    assert add_loghub_entries(path, ["HDFS", "BGL"]) == ["loghub_HDFS", "loghub_BGL"]
    assert add_loghub_entries(path, ["BGL"]) == []
    assert set(load_registry(path)) == {"a", "loghub_HDFS", "loghub_BGL"}


@pytest.mark.faults
def test_one_invalid_entry_never_hides_the_others(workdir):
    from logfit_dagster.resources.sources import LogSources

    (workdir / "sources.yaml").write_text(
        "sources:\n"
        "  - {name: good, origin: synthetic, kind: hdfs, lines: 100}\n"
        "  - {name: ../evil, origin: synthetic, kind: hdfs}\n"
        "  - {name: badregex, origin: files, path: x.log, session: {by: regex, pattern: '(('}}\n"
    )
    sources = LogSources()
    assert list(sources.registered()) == ["good"]
    problems = sources.problems()
    assert set(problems) == {"sources[1]", "badregex"}
    assert "not a safe file name" in problems["sources[1]"]
    assert sources.get("good").lines == 100
    with pytest.raises(RegistryError, match="session.pattern is not a valid regex"):
        sources.get("badregex")


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"lines": 2.9}, "field 'lines' must be a valid integer, got a number with a fractional"),
        (
            {"session": {"by": "window", "size": 2.9}},
            "field 'session.size' must be a valid integer",
        ),
        ({"multiline": "no"}, "field 'multiline' must be a valid boolean, got 'no'"),
        ({"session": "block_id"}, "field 'session' must be a mapping such as {by: block_id}"),
        ({"ground_truth": "none"}, "field 'ground_truth' must be a mapping"),
        ({"seed": True}, "field 'seed' must be a whole number, got True"),
        ({"lines": 0}, "field 'lines' must be greater than or equal to 1, got 0"),
        ({"kind": "hfds"}, "field 'kind' must be 'hdfs', 'openstack', 'bgl' or 'javaapp', got"),
        ({"session": {"by": "window", "szie": 5}}, "unknown field 'session.szie'; allowed: ['by'"),
        ({"layout": "ait"}, "field 'layout' is for origin 'sequences' only"),
    ],
)
@pytest.mark.faults
def test_values_of_the_wrong_type_are_refused_not_cast(entry, words):
    base = {"name": "s", "origin": "synthetic", "kind": "hdfs"}
    with pytest.raises(RegistryError, match=re.escape(words)):
        parse_source({**base, **entry}, "sources.yaml: sources[0]")


def test_whole_numbers_written_as_floats_or_strings_are_kept():
    spec = parse_source(
        {"name": "s", "origin": "synthetic", "kind": "hdfs", "lines": 300.0, "seed": "7"}, "t"
    )
    assert (spec.lines, spec.seed) == (300, 7)


@pytest.mark.faults
@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"", "the registry is empty"),
        (b"- {name: a, origin: synthetic}\n", "must be a mapping with key 'sources'"),
        (b"sourcez:\n  - {name: a}\n", r"unknown top-level key\(s\) \['sourcez'\]"),
        (
            b"sources:\n  - {name: a, origin: synthetic, kind: hdfs, lines: 9, lines: 10}\n",
            r"line 2, column \d+: not valid YAML: key 'lines' appears twice",
        ),
        (
            b"sources:\n  - {name: a, origin: synthetic}\nsources:\n  - {name: b, origin: synthetic}\n",
            "line 3, column 1: not valid YAML: key 'sources' appears twice",
        ),
        (b"sources:\n  - {name: caf\xe9, origin: synthetic}\n", "line 2: not UTF-8"),
        (b"sources:\n  - {name: a, origin: [synthetic\n", "line 3, column 1: not valid YAML"),
        (b"sources: !!python/object/apply:os.system ['true']\n", "not valid YAML"),
    ],
)
def test_a_registry_that_is_not_one_is_refused_naming_the_file(tmp_path, body, words):
    path = tmp_path / "sources.yaml"
    path.write_bytes(body)
    with pytest.raises(RegistryError, match=words) as raised:
        load_registry(path)
    assert str(path) in str(raised.value)


@pytest.mark.faults
def test_one_bad_drop_folder_fails_alone_named_with_its_path_and_line(workdir):
    from logfit_dagster.resources.sources import LogSources

    incoming = workdir / "data" / "incoming"
    bodies = {
        "good": None,
        "yamlerr": "format: [oops\n",
        "listed": "- format: generic\n",
        "badfield": "session: {by: window, szie: 5}\n",
    }
    for name, body in bodies.items():
        (incoming / name).mkdir(parents=True)
        (incoming / name / "app.log").write_text("2024-01-01T00:00:00Z INFO started\n")
        if body is not None:
            (incoming / name / "source.yaml").write_text(body)
    sources = LogSources()
    assert "good" in sources.all_sources() and "tiny_hdfs" in sources.all_sources()
    problems = sources.problems()
    assert set(problems) == {"yamlerr", "listed", "badfield"}
    assert re.search(
        r"incoming/yamlerr/source\.yaml: line 2, column 1: not valid YAML", problems["yamlerr"]
    )
    assert (
        "incoming/listed/source.yaml: a drop folder's source.yaml is a mapping"
        in problems["listed"]
    )
    assert "unknown field 'session.szie'" in problems["badfield"]
    with pytest.raises(RegistryError, match="incoming/yamlerr/source.yaml"):
        sources.get("yamlerr")
    assert sources.get("good").origin == "files"


@pytest.mark.faults
def test_a_registry_named_but_missing_is_an_error_and_the_default_missing_is_not(
    workdir, monkeypatch
):
    from logfit_dagster.resources.sources import LogSources

    monkeypatch.setenv("LOGFIT_SOURCES", str(workdir / "nope.yaml"))
    with pytest.raises(RegistryError, match=r"source registry not found: .*nope\.yaml"):
        LogSources().all_sources()
    monkeypatch.delenv("LOGFIT_SOURCES")
    monkeypatch.chdir(workdir / "data")
    assert LogSources().all_sources() == {}


def test_templates_from_names_another_mined_source(tmp_path):
    path = tmp_path / "sources.yaml"
    path.write_text(
        "sources:\n"
        "  - {name: a, origin: synthetic, kind: hdfs}\n"
        "  - {name: b, origin: files, path: b.log, templates_from: a}\n"
        "  - {name: c, origin: files, path: c.log, templates_from: nosuch}\n"
        "  - {name: s, origin: sequences, path: s, layout: deeplog}\n"
        "  - {name: d, origin: files, path: d.log, templates_from: s}\n"
        "  - {name: e, origin: files, path: e.log, templates_from: e}\n"
        "  - {name: f, origin: sequences, path: f, layout: deeplog, templates_from: a}\n"
    )
    sources, problems = read_registry(path)
    assert sources["b"].templates_from == "a" and sources["a"].templates_from == ""
    # each bad entry fails alone, named, and the others stay
    assert set(sources) == {"a", "b", "s"}
    assert "templates_from' names 'nosuch', not a registered source" in problems["c"]
    assert "names 's', a sequences source" in problems["d"]
    assert "names the source itself" in problems["e"]
    assert "is for mined sources" in problems["f"]


def test_a_big_source_runs_a_process_per_step_under_the_auto_executor(workdir):
    """``logfit materialize --executor auto`` (the default) sizes each source without reading,
    generating or downloading it, and gives the big ones a process per step."""
    from logfit_dagster.commands.materialize import BIG_SOURCE_BYTES
    from logfit_dagster.commands.runner import SelectionRunner
    from logfit_dagster.resources.sources import LogSources

    big = workdir / "big.log"
    with open(big, "wb") as handle:  # sparse: its size without its bytes
        handle.truncate(BIG_SOURCE_BYTES + 1)
    registry = workdir / "sources.yaml"
    registry.write_text(
        registry.read_text()
        + f"  - {{name: huge, origin: files, path: {big}, format: HDFS}}\n"
        + "  - {name: many, origin: synthetic, kind: hdfs, lines: 2000000, seed: 3}\n"
        + "  - {name: full, origin: loghub, system: HDFS_v1, release: full}\n"
    )
    sources = LogSources()
    every = sources.all_sources()
    sizes = {name: sources.estimated_bytes(spec) for name, spec in every.items()}
    assert sizes["huge"] == BIG_SOURCE_BYTES + 1 and sizes["tiny_hdfs"] < BIG_SOURCE_BYTES
    assert sizes["many"] >= BIG_SOURCE_BYTES and sizes["full"] >= BIG_SOURCE_BYTES
    assert not (workdir / "data" / "sources").exists()  # nothing generated or fetched
    auto = SelectionRunner("auto", None, None, {}, big={"huge"})
    assert auto.kind_for("huge") == "multiprocess" and auto.kind_for("tiny_hdfs") == "in_process"
    assert auto.kind_for(None) == "multiprocess"  # the all-source stages read the big one too
    assert SelectionRunner("auto", None, None, {}).kind_for(None) == "in_process"
    assert (
        SelectionRunner("in_process", None, None, {}, big={"huge"}).kind_for("huge") == "in_process"
    )
