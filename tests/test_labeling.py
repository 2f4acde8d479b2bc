"""Labelers through the real anthropic and openai SDKs against local servers with faults."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from logfit_dagster.core.errors import BudgetExceededError, LabelerError
from logfit_dagster.core.labeling.anthropic_batch import AnthropicBatchLabeler
from logfit_dagster.core.labeling.base import label_source
from logfit_dagster.core.labeling.cache import LabelCache
from logfit_dagster.core.labeling.openai_chat import OpenAILabeler
from logfit_dagster.core.labeling.prompt import Window, cut_windows, parse_reply, render_window
from tests.llm_servers import FakeAnthropic, FakeOpenAI, expected_label

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def make_lines(n: int, offset: int = 0) -> list[str]:
    kinds = [
        "INFO served block {i}",
        "ERROR disk {i} failed",
        "INFO heartbeat {i}",
        "WARN slow {i}",
    ]
    return [kinds[(i * 7) % 5 % 4].format(i=i + offset) for i in range(n)]


def anthropic_labeler(server, **kwargs) -> AnthropicBatchLabeler:
    return AnthropicBatchLabeler(
        api_key=server.api_key, base_url=server.url, poll_interval_s=0.01, **kwargs
    )


def assert_right(frame, lines):
    assert frame["line_number"].tolist() == list(range(1, len(lines) + 1))
    assert frame["label"].tolist() == [expected_label(x) for x in lines]


# -- prompt and reply parsing ------------------------------------------------------------------


def test_windows_and_prompt():
    windows = cut_windows("svc", [f"l{i}" for i in range(120)], 50)
    assert [(w.start, w.end) for w in windows] == [(1, 50), (51, 100), (101, 120)]
    text = render_window(windows[1])
    assert text.startswith("System: svc\nLines 51-100 (of 120):\n\n1: l50\n2: l51")
    follow = render_window(windows[1], only=[3, 7])
    assert "3: l52\n7: l56" in follow and "1: l50" not in follow
    assert windows[0].content_hash != windows[1].content_hash


def test_reply_repairs_only_what_is_unambiguous():
    window = Window("svc", 101, ("a", "b", "c"), 200)
    fenced = parse_reply('Sure:\n```json\n[{"line":1,"label":"look","reason":"x"}]\n```', window)
    assert fenced.labels == {1: ("LOOK", "x")} and fenced.repairs
    absolute = parse_reply([{"line": 101, "label": "SKIP"}, {"line": 103, "label": "LOOK"}], window)
    assert absolute.labels == {1: ("SKIP", ""), 3: ("LOOK", "")}
    bad = parse_reply(
        [
            {"line": 1, "label": "MAYBE"},
            {"line": 2, "label": "LOOK"},
            {"line": 2, "label": "SKIP"},
            {"line": 9, "label": "LOOK"},
        ],
        window,
    )
    assert bad.labels == {} and bad.missing([1, 2, 3]) == [1, 2, 3]
    assert any("unknown label" in p for p in bad.problems)
    assert any("contradicting" in p for p in bad.problems)
    assert any("outside" in p for p in bad.problems)
    broken = parse_reply('[{"line": 1, "label": "LOOK"', window)
    assert broken.labels == {} and "not valid JSON" in broken.problems[0]
    wrapped = parse_reply({"labels": [{"line": "2", "label": "SKIP", "reason": "r"}]}, window)
    assert wrapped.labels == {2: ("SKIP", "r")}


# -- Anthropic Message Batches -----------------------------------------------------------------


def test_batches_label_everything_once_and_account_cost(tmp_path):
    lines = make_lines(65)
    with FakeAnthropic() as server:
        frame, stats = label_source(
            "svc",
            lines,
            anthropic_labeler(server),
            cache=LabelCache(tmp_path / "c.sqlite"),
            window_size=10,
        )
        assert_right(frame, lines)
        assert set(server.submitted.values()) == {1} and len(server.submitted) == 7
        assert stats.requests == 7 and stats.batches_submitted == 1 and stats.unlabeled_lines == 0
        results = [r for b in server.batches.values() for r in b["results"]]
        tin = sum(r["result"]["message"]["usage"]["input_tokens"] for r in results)
        tout = sum(r["result"]["message"]["usage"]["output_tokens"] for r in results)
        assert (stats.input_tokens, stats.output_tokens) == (tin, tout)
        # claude-haiku-4-5: $1 / $5 per million tokens, half price in batches
        assert stats.estimated_cost_usd == pytest.approx((tin * 1.0 + tout * 5.0) / 1e6 * 0.5)
        assert set(frame["labeler"]) == {"anthropic_batch"}
        assert set(frame["model"]) == {"claude-haiku-4-5"}


@pytest.mark.faults
def test_batches_survive_faults_without_paying_twice(tmp_path):
    lines = make_lines(60)
    windows = {w.start: f"w-{w.content_hash}" for w in cut_windows("svc", lines, 10)}
    faults = {
        windows[1]: "expired",
        windows[11]: "errored",
        windows[21]: "malformed",
        windows[31]: "missing_line",
        windows[41]: "absolute_numbers",
        windows[51]: "fenced",
    }
    with FakeAnthropic() as server:
        server.create_statuses = [429]  # the first create is rate-limited, the SDK retries
        server.fault = lambda cid, attempt: faults.get(cid) if attempt == 0 else None
        frame, stats = label_source(
            "svc",
            lines,
            anthropic_labeler(server),
            cache=LabelCache(tmp_path / "c.sqlite"),
            window_size=10,
        )
        assert_right(frame, lines)
        # expired and errored requests were resubmitted once; malformed and short replies were
        # followed up once; nothing else was sent twice
        assert server.submitted[windows[1]] == 2 and server.submitted[windows[11]] == 2
        followups = {c: n for c, n in server.submitted.items() if c.startswith("f-")}
        assert followups == {windows[21].replace("w-", "f-"): 1, windows[31].replace("w-", "f-"): 1}
        assert all(server.submitted[windows[s]] == 1 for s in (21, 31, 41, 51))
        assert stats.resubmitted_requests == 2 and stats.followup_requests == 2
        assert stats.repairs >= 2 and stats.unlabeled_lines == 0


def test_a_line_never_answered_stays_unlabeled(tmp_path):
    lines = make_lines(10)
    with FakeAnthropic() as server:
        server.fault = lambda cid, attempt: "missing_line"
        frame, stats = label_source(
            "svc",
            lines,
            anthropic_labeler(server),
            cache=LabelCache(tmp_path / "c.sqlite"),
            window_size=10,
        )
    assert stats.unlabeled_lines == 1 and frame["label"].isna().tolist() == [False] * 9 + [True]
    assert frame["label"].iloc[:9].tolist() == [expected_label(x) for x in lines[:9]]


def test_rerun_uses_the_cache_and_a_grown_source_pays_only_new_windows(tmp_path):
    cache = LabelCache(tmp_path / "c.sqlite")
    lines = make_lines(40)
    with FakeAnthropic() as server:
        label_source("svc", lines, anthropic_labeler(server), cache=cache, window_size=10)
        _, again = label_source(
            "svc", lines, anthropic_labeler(server), cache=cache, window_size=10
        )
        assert again.requests == 0 and again.cache_hits == 4 and again.input_tokens == 0
        assert len(server.batches) == 1
        grown = lines + make_lines(15, offset=40)
        frame, stats = label_source(
            "svc", grown, anthropic_labeler(server), cache=cache, window_size=10
        )
        assert stats.cache_hits == 4 and stats.requests == 2
        assert_right(frame, grown)
        assert set(server.submitted.values()) == {1}


def test_budget_cap_stops_before_submitting(tmp_path):
    with FakeAnthropic() as server:
        with pytest.raises(
            BudgetExceededError, match=r"would cost about \$[0-9.]+.*limit of \$0.00"
        ):
            label_source(
                "svc",
                make_lines(500),
                anthropic_labeler(server),
                cache=LabelCache(tmp_path / "c.sqlite"),
                max_cost_usd=0.001,
            )
        assert server.batches == {}


def test_work_larger_than_one_batch_is_split(tmp_path):
    lines = make_lines(50)
    with FakeAnthropic() as server:
        frame, stats = label_source(
            "svc",
            lines,
            anthropic_labeler(server, max_batch_requests=2),
            cache=LabelCache(tmp_path / "c.sqlite"),
            window_size=10,
        )
        assert stats.batches_submitted == 3 and [
            len(b["requests"]) for b in server.batches.values()
        ] == [2, 2, 1]
        assert_right(frame, lines)


def test_missing_key_names_the_variable():
    with pytest.raises(LabelerError, match="ANTHROPIC_API_KEY"):
        AnthropicBatchLabeler(api_key="")
    with pytest.raises(LabelerError, match="OPENAI_API_KEY"):
        OpenAILabeler(api_key="")


CRASHING_RUN = """
import sys
from logfit_dagster.core.labeling.anthropic_batch import AnthropicBatchLabeler
from logfit_dagster.core.labeling.base import label_source
from logfit_dagster.core.labeling.cache import LabelCache
from tests.test_labeling import make_lines
labeler = AnthropicBatchLabeler(api_key=sys.argv[1], base_url=sys.argv[2], poll_interval_s=0.05,
                                max_poll_interval_s=0.05)
label_source("svc", make_lines(30), labeler, cache=LabelCache(sys.argv[3]), window_size=10)
"""


@pytest.mark.faults
def test_a_process_killed_in_flight_is_collected_by_the_next_run(tmp_path):
    cache_path = tmp_path / "c.sqlite"
    lines = make_lines(30)
    with FakeAnthropic() as server:
        server.hold = True
        proc = subprocess.Popen(
            [sys.executable, "-c", CRASHING_RUN, server.api_key, server.url, str(cache_path)],
            cwd=PROJECT_ROOT,
            env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
        )
        try:
            deadline = time.monotonic() + 60
            while not (cache_path.exists() and LabelCache(cache_path).batch_count() == 1):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
        assert len(server.batches) == 1
        server.hold = False
        frame, stats = label_source(
            "svc", lines, anthropic_labeler(server), cache=LabelCache(cache_path), window_size=10
        )
        assert_right(frame, lines)
        assert stats.batches_resumed == 1 and stats.batches_submitted == 0 and stats.requests == 0
        assert len(server.batches) == 1 and set(server.submitted.values()) == {1}
        assert stats.input_tokens > 0  # collected tokens are accounted to the run that collects


# -- OpenAI-compatible chat completions --------------------------------------------------------


def openai_labeler(server, **kwargs) -> OpenAILabeler:
    return OpenAILabeler(api_key=server.api_key, base_url=f"{server.url}/v1", **kwargs)


def label_svc(labeler, lines, cache_path, **kwargs):
    """``label_source`` for the source ``svc`` with a cache at ``cache_path``."""
    return label_source("svc", lines, labeler, cache=LabelCache(cache_path), **kwargs)


def window_faults(plan: dict[int, dict[int, str]]):
    """A fault function: the first ask of the window starting at line ``s`` (not a follow-up)
    gets ``plan[s][attempt]``, the other attempts and windows a good answer."""

    def fault(key, attempt):
        for start, faults in plan.items():
            if f"Lines {start}-" in key and "Label only" not in key:
                return faults.get(attempt)
        return None

    return fault


def test_openai_structured_output_with_bounded_concurrency(tmp_path):
    lines = make_lines(120)
    with FakeOpenAI() as server:
        frame, stats = label_svc(
            openai_labeler(server, max_concurrency=3), lines, tmp_path / "c.sqlite", window_size=10
        )
        assert_right(frame, lines)
        assert server.calls == 12 and 1 < server.max_in_flight <= 3
        body = server.bodies[0]
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["strict"] is True
        assert body["messages"][0]["role"] == "system" and "LOOK" in body["messages"][0]["content"]
        assert stats.estimated_cost_usd == pytest.approx(
            (stats.input_tokens * 0.15 + stats.output_tokens * 0.60) / 1e6
        )


@pytest.mark.faults
def test_openai_retries_429_and_500_and_follows_up_bad_replies(tmp_path):
    lines = make_lines(50)
    with FakeOpenAI() as server:
        server.fault = window_faults(
            {1: {0: "429"}, 11: {0: "500"}, 21: {0: "malformed"}, 31: {0: "missing_line"}}
        )
        frame, stats = label_svc(
            openai_labeler(server), lines, tmp_path / "c.sqlite", window_size=10
        )
        assert_right(frame, lines)
        # 5 windows + one retry each for 429 and 500 (by the SDK) + two follow-ups
        assert server.calls == 9 and stats.requests == 7 and stats.followup_requests == 2


@pytest.mark.faults
def test_openai_under_429_bursts_5xx_a_dying_server_and_malformed_json(tmp_path):
    """The faults the batch labeler is tested under, on the chat route: nothing guessed, every
    failure counted, retried with backoff by the SDK, follow-ups for what a reply lacked."""
    lines = make_lines(60)
    with FakeOpenAI() as server:
        server.fault = window_faults(
            {
                1: {0: "dies"},
                11: {0: "429", 1: "429", 2: "429"},  # a burst
                21: {0: "500", 1: "502"},
                31: {0: "malformed"},
                41: {0: "dies", 1: "500"},
            }
        )
        frame, stats = label_svc(
            openai_labeler(server), lines, tmp_path / "c.sqlite", window_size=10
        )
        assert_right(frame, lines)
        # 6 windows, 1 + 3 + 1 + 1 retries by the SDK (the 502 too), 1 follow-up for the
        # malformed reply
        assert stats.requests == 7 and stats.followup_requests == 1
        assert server.calls == 6 + 1 + 3 + 2 + 2 + 1
        assert stats.failed_requests == 0 and stats.unlabeled_lines == 0


@pytest.mark.faults
def test_openai_a_server_that_stays_down_leaves_lines_unlabelled_and_counted(tmp_path):
    lines = make_lines(20)
    with FakeOpenAI() as server:
        server.fault = lambda key, attempt: "dies" if "Lines 11-" in key else None
        frame, stats = label_svc(
            openai_labeler(server, max_retries=2), lines, tmp_path / "c.sqlite", window_size=10
        )
        assert stats.failed_requests == 1 and stats.unlabeled_lines == 10
        assert frame["label"].iloc[:10].tolist() == [expected_label(x) for x in lines[:10]]
        assert frame["label"].iloc[10:].isna().all()  # never guessed
        # the failed window is not cached: the next run asks for it (and only it) again
        server.fault = lambda key, attempt: None
        calls = server.calls
        frame, again = label_svc(
            openai_labeler(server), lines, tmp_path / "c.sqlite", window_size=10
        )
        assert again.requests == 1 and server.calls == calls + 1
        assert_right(frame, lines)


def test_openai_wrong_key_fails_without_showing_it(tmp_path):
    with FakeOpenAI(api_key="right-key") as server:
        labeler = OpenAILabeler(api_key="sk-wrong-secret-123", base_url=f"{server.url}/v1")
        with pytest.raises(LabelerError) as info:
            label_source("svc", make_lines(5), labeler, cache=LabelCache(tmp_path / "c.sqlite"))
    assert "401" in str(info.value) and "sk-wrong-secret-123" not in str(info.value)


def test_the_rule_labels_column_wise_are_the_rule_labels_line_by_line(shared_data):
    from logfit_dagster.core.labeling.offline import rule_label, rule_labels

    lines = []
    for path in sorted((shared_data / "loghub-2k").glob("*/*_2k.log")):
        lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    # non-ASCII words, a vertical tab (not RE2's \s), a stack frame, Android-style levels
    lines += ["\x0b error", "naïve ERROR", "Ünïcode fail", "   at a.B(C.java:1)", "E/ x", ""]
    assert len(lines) > 30_000
    assert rule_labels(lines) == [rule_label(line) for line in lines]
