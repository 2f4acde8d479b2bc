"""The ``distinct`` labeling plan through the real anthropic and openai SDKs against local
servers: one answer per line shape, propagated, shared across sources, never across labelers,
models or prompt versions, disagreements kept and flagged."""

from __future__ import annotations

import math
import re

import pytest

from logfit_dagster.core.errors import LabelerError
from logfit_dagster.core.labeling.base import label_source
from logfit_dagster.core.labeling.cache import LabelCache
from logfit_dagster.core.labeling.offline import RuleLabeler
from logfit_dagster.core.labeling.prompt import PromptSpec
from tests.llm_servers import NUMBERED, FakeAnthropic, FakeOpenAI, expected_label
from tests.test_labeling import anthropic_labeler, label_svc, openai_labeler

# four shapes, the counter and the disk number masked away
KINDS = ("INFO served block {i}", "ERROR disk {i} failed", "INFO heartbeat {i}", "WARN slow {i}")


def service_log(n: int, offset: int = 0) -> list[str]:
    """``n`` lines of four shapes, with a rare fifth one (a crash) near the end."""
    lines = [KINDS[(i * 7) % 5 % 4].format(i=i + offset) for i in range(n)]
    if n > 10:
        lines[n - 5] = f"kernel panic: task {offset + n} failed"
    return lines


def asked_lines(server: FakeAnthropic) -> list[tuple[str, list[int], int]]:
    """Per request sent: its text, the lines it asked for, and how many lines it showed."""
    sent = []
    for batch in server.batches.values():
        for request in batch["requests"]:
            text = request["params"]["messages"][0]["content"]
            only = next(x for x in text.splitlines() if x.startswith("Label only lines"))
            numbers = [int(n) for n in only.split("lines ")[1].split(", keeping")[0].split(",")]
            sent.append((text, numbers, len(NUMBERED.findall(text))))
    return sent


def test_one_answer_per_shape_labels_every_line_once_and_a_rerun_sends_nothing(tmp_path):
    lines = service_log(2000)
    cache = LabelCache(tmp_path / "c.sqlite")
    with FakeAnthropic() as server:
        frame, stats = label_source(
            "svc", lines, anthropic_labeler(server), cache=cache, plan="distinct"
        )
        # every line labelled exactly once, and right: the fake model's answer is a function
        # of the shape here, so propagation can be checked line by line
        assert frame["line_number"].tolist() == list(range(1, 2001))
        assert frame["label"].tolist() == [expected_label(x) for x in lines]
        assert stats.shapes == 5 and stats.direct_lines == 5 and stats.requests == 1
        assert stats.propagated_lines == 1995 and stats.unlabeled_lines == 0
        assert frame["label_source"].value_counts().to_dict() == {
            "propagated": 1995,
            "direct": 5,
        }
        # the rare shape was asked among its real neighbours, not alone
        ((text, asked, shown),) = asked_lines(server)
        assert len(asked) == 5 and shown > len(asked) and "kernel panic: task 2000 failed" in text
        crash = frame[frame["raw"].str.startswith("kernel panic")]
        assert crash["label_source"].tolist() == ["direct"] and crash["label"].tolist() == ["LOOK"]
        # the windows plan would have sent 40 requests for the same lines
        assert math.ceil(len(lines) / 50) == 40

        batches = len(server.batches)
        again, second = label_source(
            "svc", lines, anthropic_labeler(server), cache=cache, plan="distinct"
        )
        assert second.requests == 0 and len(server.batches) == batches
        assert second.shapes_answered_before == 5
        assert again["label"].equals(frame["label"])


def test_shapes_are_shared_across_sources_but_never_across_labelers_models_or_prompts(tmp_path):
    cache = LabelCache(tmp_path / "c.sqlite")
    with FakeOpenAI() as server:
        _, first = label_source(
            "node-a", service_log(500), openai_labeler(server), cache=cache, plan="distinct"
        )
        calls = server.calls
        # a new source of the same system: its shapes were answered for node-a
        frame, second = label_source(
            "node-b",
            service_log(300, offset=9000),
            openai_labeler(server),
            cache=cache,
            plan="distinct",
        )
        assert first.requests == 1 and second.requests == 0 and server.calls == calls
        assert set(frame["label_source"]) == {"propagated"}
        assert frame["label"].tolist() == [expected_label(x) for x in service_log(300, 9000)]

        # another model, another prompt version, another labeler: asked afresh
        _, other_model = label_source(
            "node-b",
            service_log(300, 9000),
            openai_labeler(server, model="gpt-4.1-nano"),
            cache=cache,
            plan="distinct",
        )
        _, other_prompt = label_source(
            "node-b",
            service_log(300, 9000),
            openai_labeler(server),
            cache=cache,
            plan="distinct",
            prompt=PromptSpec(version="look-skip-v2"),
        )
        assert other_model.requests == 1 and other_prompt.requests == 1
    rules, stats = label_source(
        "node-b", service_log(300, 9000), RuleLabeler(), cache=cache, plan="distinct"
    )
    assert stats.requests == 1 and stats.shapes_answered_before == 0
    assert rules["reason"].str.startswith("rule:").all()


def test_a_shape_answered_two_ways_is_kept_both_ways_and_its_lines_flagged(tmp_path):
    # two far-apart stretches of the same two shapes: with two samples a shape, each is asked
    # once in each stretch; the model answers the second stretch the wrong way round
    lines = (
        [f"INFO heartbeat {i}" if i % 2 else f"ERROR disk {i} failed" for i in range(10)]
        + [f"DEBUG poll {i}" for i in range(200)]
        + [f"INFO heartbeat {i}" if i % 2 else f"ERROR disk {i} failed" for i in range(10)]
    )

    def fault(key, attempt):
        start = int(re.search(r"Lines (\d+)-", key).group(1))
        return "flipped" if start > 100 else None

    two_samples = {"plan": "distinct", "shape_samples": 2, "window_size": 7}
    with FakeOpenAI() as server:
        server.fault = fault
        frame, stats = label_svc(
            openai_labeler(server), lines, tmp_path / "c.sqlite", **two_samples
        )
    disks = frame[frame["raw"].str.startswith("ERROR")]
    assert stats.requests == 2 and stats.direct_lines == 6
    assert stats.conflicted_shapes == 3 and stats.conflicted_lines == 220
    assert disks["shape_conflict"].all()
    # the two lines asked keep what the model said of each; the others are not guessed
    asked = disks[disks["label_source"] == "direct"]
    assert sorted(asked["label"]) == ["LOOK", "SKIP"]
    assert disks[disks["label_source"] != "direct"]["label"].isna().all()
    reason = disks[disks["label"].isna()]["reason"].iloc[0]
    assert "LOOK (svc:" in reason and "SKIP (svc:" in reason
    assert frame["label"].notna().sum() == 6 and stats.unlabeled_lines == 214

    # the same plan against a model that answers consistently: nothing flagged
    with FakeOpenAI() as server:
        frame, stats = label_svc(
            openai_labeler(server), lines, tmp_path / "clean.sqlite", **two_samples
        )
    assert stats.conflicted_shapes == 0 and not frame["shape_conflict"].any()
    assert frame["label"].tolist() == [expected_label(x) for x in lines]


@pytest.mark.faults
def test_a_request_that_fails_is_asked_again_by_the_next_run(tmp_path):
    lines = service_log(400)
    cache = LabelCache(tmp_path / "c.sqlite")
    with FakeAnthropic() as server:
        server.fault = lambda custom_id, attempt: "errored"
        frame, stats = label_source(
            "svc",
            lines,
            anthropic_labeler(server, max_resubmits=0),
            cache=cache,
            plan="distinct",
        )
        assert stats.failed_requests == 1 and frame["label"].isna().all()
        server.fault = lambda custom_id, attempt: None
        frame, stats = label_source(
            "svc", lines, anthropic_labeler(server), cache=cache, plan="distinct"
        )
        assert stats.requests == 1 and frame["label"].tolist() == [expected_label(x) for x in lines]


@pytest.mark.faults
def test_a_batch_left_in_flight_is_collected_and_its_shapes_recorded(tmp_path):
    lines = service_log(600)
    cache = LabelCache(tmp_path / "c.sqlite")
    with FakeAnthropic() as server:
        server.hold = True
        with pytest.raises(LabelerError, match="has not ended"):
            label_source(
                "svc",
                lines,
                anthropic_labeler(server, max_wait_s=0.05),
                cache=cache,
                plan="distinct",
            )
        assert len(server.batches) == 1 and cache.batch_count() == 1
        server.hold = False
        frame, stats = label_source(
            "svc", lines, anthropic_labeler(server), cache=cache, plan="distinct"
        )
    assert stats.batches_resumed == 1 and stats.requests == 0 and len(server.batches) == 1
    assert frame["label"].tolist() == [expected_label(x) for x in lines]
    assert stats.direct_lines == 5 and stats.propagated_lines == 595
