"""Session prompts, examples in the OpenAI fine-tuning layouts, and the one reward every
route optimises (pinned on hand-written completions)."""

import json

import pandas as pd
import pytest

from logfit_dagster.core import llm_sessions as ls

RIGHT = '{"label": "anomalous", "reason": "the block was deleted before it was written"}'


@pytest.mark.parametrize(
    ("completion", "label", "expected"),
    [
        (RIGHT, "anomalous", 1.0),  # right label, valid schema
        (RIGHT, "normal", 0.2),  # valid schema, wrong label
        ('{"label": "normal", "reason": "ok"}', "normal", 1.0),
        ("```json\n" + RIGHT + "\n```", "anomalous", 0.3),  # right label, fenced
        ('{"label": "anomalous"}', "anomalous", 0.3),  # missing reason: broken schema
        ('{"label": "anomalous", "reason": "x", "score": 1}', "anomalous", 0.3),  # extra key
        ("The session is anomalous.", "anomalous", 0.3),  # prose, right word
        ("The session is anomalous.", "normal", 0.0),  # prose, wrong word
        ("anomalous or normal, hard to say", "anomalous", 0.0),  # both words: no guess
        ("abnormal", "normal", 0.0),  # 'normal' inside another word does not count
        ("", "normal", 0.0),
        ("   ", "anomalous", 0.0),
        ("anomalous " + "x" * 700, "anomalous", 0.15),  # long prose: 0.3 x 0.5
        ("\n".join(["the session is anomalous"] * 3), "anomalous", 0.15),  # repeated line
    ],
)
def test_reward_values(completion, label, expected):
    assert ls.reward(completion, label) == pytest.approx(expected)


def test_weights_come_from_config():
    assert ls.reward(RIGHT, "normal", {"format_only": 0.0}) == 0.0


def test_the_python_grader_is_the_reward_itself():
    grader = ls.python_grader({"format_only": 0.1})
    assert grader["type"] == "python"
    namespace: dict = {}
    exec(grader["source"], namespace)  # the grader runs alone: no logfit import
    for completion in (RIGHT, "The session is anomalous.", '{"label": "normal", "reason": ""}'):
        for label in ls.LABELS:
            assert namespace["grade"]({"output_text": completion}, {"label": label}) == (
                ls.reward(completion, label, {"format_only": 0.1})
            )
    multi = ls.multi_grader()
    assert multi["type"] == "multi" and set(multi["graders"]) == {
        "right",
        "is_anomalous",
        "is_normal",
    }


def test_a_long_session_keeps_head_and_tail_and_says_what_was_left_out():
    lines = [f"INFO dfs.DataNode: step {i:04d} of a long block's life" for i in range(400)]
    text, left_out = ls.session_prompt("\n".join(lines), token_budget=300)
    assert ls.estimate_tokens(text) <= 300
    assert text.startswith(lines[0]) and text.endswith(lines[-1])
    assert f"[... {left_out} lines left out ...]" in text and left_out > 300
    short, none = ls.session_prompt("\n".join(lines[:3]), token_budget=300)
    assert none == 0 and short == "\n".join(lines[:3])


def _data(n_normal=40, n_anomalous=6):
    ids = [f"s{i}" for i in range(n_normal + n_anomalous)]
    sessions = pd.DataFrame(
        {
            "session_id": ids,
            "text": [f"INFO app: step {i}\nINFO app: done" for i in range(len(ids))],
            "n_lines": 2,
        }
    )
    labels = pd.DataFrame({"session_id": ids, "label": [0] * n_normal + [1] * n_anomalous})
    split = ["train"] * 30 + ["dev"] * 5 + ["test"] * 5 + ["train"] * 4 + ["test"] * 2
    splits = pd.DataFrame({"session_id": ids, "split": split})
    return sessions, labels, splits


def test_examples_rebalance_training_only_and_never_leak_test_sessions(tmp_path):
    sessions, labels, splits = _data()
    examples, stats = ls.build_examples(
        sessions, labels, splits, ls.ExampleParams(normal_per_anomalous=2, seed=1)
    )
    train = examples[examples["split"] == "train"]
    assert (train["label"] == 1).sum() == 4 and (train["label"] == 0).sum() == 8
    assert stats["normal_train_sessions_dropped_by_rebalancing"] == 22
    assert (examples["split"] == "test").sum() == 7  # test is never rebalanced
    counts = ls.write_jsonl(examples, tmp_path)
    assert counts == {
        "sft_train.jsonl": 12,
        "sft_valid.jsonl": 5,
        "rft_train.jsonl": 12,
        "rft_valid.jsonl": 5,
        "test.jsonl": 7,
    }
    sft = json.loads((tmp_path / "sft_train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in sft["messages"]] == ["system", "user", "assistant"]
    assert ls.parse_answer(sft["messages"][-1]["content"]) in ls.LABELS
    rft = json.loads((tmp_path / "rft_train.jsonl").read_text().splitlines()[0])
    assert rft["messages"][-1]["role"] == "user" and rft["label"] in ls.LABELS
    test_ids = set(splits.loc[splits["split"] == "test", "session_id"])
    assert ls.leaked_test_sessions(tmp_path, test_ids) == []

    # a test session written into a training file is caught
    with open(tmp_path / "rft_train.jsonl", "a") as handle:
        handle.write(
            json.dumps({"messages": rft["messages"], "label": "normal", "session_id": "s45"}) + "\n"
        )
    assert ls.leaked_test_sessions(tmp_path, test_ids) == ["s45"]


def test_the_same_events_in_two_splits_are_counted_not_called_a_leak(tmp_path):
    """Sequence data sets repeat sessions (434 of 500 HDFS test sessions equal a training one):
    another session with the same prompt is no leak; the same session id is."""
    sessions, labels, splits = _data()
    examples, _ = ls.build_examples(sessions, labels, splits, ls.ExampleParams(seed=1))
    ls.write_jsonl(examples, tmp_path)
    test = json.loads((tmp_path / "test.jsonl").read_text().splitlines()[0])
    with open(tmp_path / "rft_train.jsonl", "a") as handle:
        handle.write(
            json.dumps({"messages": test["messages"], "label": test["label"], "session_id": "twin"})
            + "\n"
        )
    test_ids = set(splits.loc[splits["split"] == "test", "session_id"])
    assert ls.leaked_test_sessions(tmp_path, test_ids) == []
    assert ls.repeated_test_prompts(tmp_path) == 1
    # the SFT files' sessions are listed beside them, and checked by id
    listed = json.loads((tmp_path / "session_ids.json").read_text())
    listed["sft_train.jsonl"][0] = test["session_id"]
    (tmp_path / "session_ids.json").write_text(json.dumps(listed))
    assert ls.leaked_test_sessions(tmp_path, test_ids) == [test["session_id"]]


def test_parse_answer_never_guesses():
    assert ls.parse_answer(RIGHT) == "anomalous"
    assert ls.parse_answer("```json\n" + RIGHT + "\n```") == "anomalous"
    assert ls.parse_answer("it is anomalous") is None
    assert ls.parse_answer('{"label": "maybe"}') is None


@pytest.mark.parametrize("form", ["lines", "templates"])
def test_the_examples_asset_writes_the_layouts_of_a_source(workdir, form):
    import dagster as dg

    from logfit_dagster.assets import datasets, ingest, llm_sessions
    from logfit_dagster.partitions import LOG_SOURCE
    from logfit_dagster.resources.llm import FineTuningResource, SessionJudgeResource
    from logfit_dagster.resources.sources import LogSources
    from logfit_dagster.resources.storage import ParquetIOManager
    from logfit_dagster.resources.tracking import ExperimentTracker

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_hdfs"])
        result = dg.materialize(
            dg.load_assets_from_modules([ingest, datasets, llm_sessions]),
            selection=dg.AssetSelection.assets("llm_session_examples").upstream(),
            partition_key="tiny_hdfs",
            instance=instance,
            resources={
                "io_manager": ParquetIOManager(),
                "sources": LogSources(),
                "tracker": ExperimentTracker(),
                "judge": SessionJudgeResource(),
                "fine_tuning": FineTuningResource(),
            },
            run_config={
                "ops": {
                    "llm_session_examples": {
                        "config": {"normal_per_anomalous": 3, "prompt_form": form}
                    }
                }
            },
        )
        assert result.success
        checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
        assert checks["no_test_session_in_training_files"]
        splits = result.output_for_node("dataset_splits")
        meta = {
            k: v.value
            for k, v in result.asset_materializations_for_node("llm_session_examples")[
                0
            ].metadata.items()
        }
    # tokens per example of both forms, whichever was written: repeats collapse
    assert meta["prompt_form"] == form and meta["prompt_version"] == ls.PROMPT_FORMS[form]
    lines_form = meta["est_tokens_per_example_lines_form"]
    assert 0 < meta["est_tokens_per_example_templates_form"] < lines_form
    # a stream, written as it is made: what was stored
    examples = pd.read_parquet(
        workdir / "data" / "assets" / "llm_session_examples" / "tiny_hdfs.parquet"
    )
    folder = workdir / "data" / "llm" / "tiny_hdfs" / ls.PROMPT_FORMS[form]
    lines = (folder / "test.jsonl").read_text().splitlines()
    assert len(lines) == (splits["split"] == "test").sum()  # test is whole
    train = examples[examples["split"] == "train"]
    assert (train["label"] == 0).sum() <= 3 * (train["label"] == 1).sum()
    user = json.loads(lines[0])["messages"][1]["content"]
    assert user.splitlines()[0].startswith("INFO dfs.")  # <LEVEL> <COMPONENT>: <CONTENT>


def test_a_model_judges_the_test_sessions_through_the_openai_protocol(workdir, monkeypatch):
    """The asset against a server on 127.0.0.1 through the real openai SDK: 429 and 5xx
    retried, a prose answer counted unparseable (never guessed), and a re-run pays nothing."""
    import dagster as dg

    from logfit_dagster.assets import datasets, ingest, llm_sessions
    from logfit_dagster.partitions import LOG_SOURCE
    from logfit_dagster.resources.llm import FineTuningResource, SessionJudgeResource
    from logfit_dagster.resources.sources import LogSources
    from logfit_dagster.resources.storage import ParquetIOManager
    from logfit_dagster.resources.tracking import ExperimentTracker
    from tests.llm_servers import FakeOpenAI

    assets = dg.load_assets_from_modules([ingest, datasets, llm_sessions])
    resources = {
        "io_manager": ParquetIOManager(),
        "sources": LogSources(),
        "tracker": ExperimentTracker(),
        "judge": SessionJudgeResource(),
        "fine_tuning": FineTuningResource(),
    }
    with FakeOpenAI() as server, dg.instance_for_test() as instance:
        monkeypatch.setenv("JUDGE_KEY", server.api_key)
        seen: dict[str, int] = {}

        def fault(key, attempt):
            seen.setdefault(key, len(seen))
            order = seen[key]
            if order == 0 and attempt == 0:
                return "429"
            if order == 1 and attempt == 0:
                return "500"
            return "prose" if order == 2 else None

        server.fault = fault
        instance.add_dynamic_partitions(LOG_SOURCE, ["tiny_hdfs"])
        # the judge is a resource, configured at run time like the UI's launchpad does
        config = {
            "model": "gpt-4o-mini",
            "base_url": f"{server.url}/v1",
            "api_key_env": "JUDGE_KEY",
            "max_concurrency": 2,
        }

        def run():
            return dg.materialize(
                assets,
                selection=dg.AssetSelection.assets("llm_session_eval").upstream(),
                partition_key="tiny_hdfs",
                instance=instance,
                resources=resources,
                run_config={"resources": {"judge": {"config": config}}},
            )

        first = run()
        assert first.success
        frame = first.output_for_node("llm_session_eval")
        meta = {
            e.asset_key.to_user_string(): e.materialization.metadata
            for e in first.get_asset_materialization_events()
        }["llm_session_eval"]
        tests = len(frame)
        assert meta["asked"].value == tests and meta["unparseable"].value == 1
        assert meta["answered"].value == tests - 1 and frame["predicted"].isna().sum() == 1
        assert server.calls == tests + 2  # two retries by the SDK, nothing else
        body = server.bodies[0]
        assert body["response_format"]["json_schema"]["name"] == "session_label"
        assert body["messages"][0]["role"] == "system"
        calls = server.calls

        again = run()  # the same sessions: every answer from the cache
        assert again.success and server.calls == calls
        meta = {
            e.asset_key.to_user_string(): e.materialization.metadata
            for e in again.get_asset_materialization_events()
        }["llm_session_eval"]
        assert meta["asked"].value == 0 and meta["cached_answers"].value == tests
        assert "nothing paid" in meta["note"].value
    assert server.api_key not in (workdir / "data" / "mlflow" / "mlflow.db").read_bytes().decode(
        "latin-1"
    )


def test_the_templates_form_collapses_repeats_and_marks_rare_and_unseen_events():
    lines = [
        "INFO dfs.DataNode: Receiving block blk_123 src: /10.0.0.1:5000",
        "INFO dfs.DataNode: Receiving block blk_123 src: /10.0.0.2:5001",
        "INFO dfs.DataNode: Receiving block blk_123 src: /10.0.0.3:5002",
        "WARN dfs.DataNode: Checksum mismatch on blk_123 reported by /10.0.0.9",
        "INFO dfs.DataNode: Receiving block blk_123 src: /10.0.0.4:5003",
        "ERROR dfs.DataNode: Disk /data/3 failed for blk_123",
    ]
    # template 1 is common; 7 is rare in training; 8 was never seen there
    ids = [1, 1, 1, 7, 1, 8]
    text, left_out = ls.template_prompt("\n".join(lines), ids, {1}, 2000)
    shown = text.splitlines()
    assert left_out == 0 and len(shown) == 4
    assert shown[0].endswith(" x3") and "10.0.0.1" not in shown[0]  # a pattern, counted
    assert shown[1] == "[rare] " + lines[3]  # rare: marked, as written
    assert not shown[2].endswith("x1") and "blk_123" not in shown[2]
    assert shown[3] == "[rare] " + lines[5]  # never seen in training: rare too
    messages, _ = ls.messages_for("\n".join(lines), 2000, "templates", ids, {1})
    assert messages[0]["content"] == ls.SYSTEM_PROMPT_TEMPLATES and messages[1]["content"] == text
    assert "[rare]" in ls.SYSTEM_PROMPT_TEMPLATES
    # the budget cuts events, and counts the lines they stood for
    long = "\n".join(f"INFO app: step {i} of a long job {'x' * 40}" for i in range(600))
    cut, left = ls.template_prompt(long, list(range(600)), set(), 300)
    assert ls.estimate_tokens(cut) <= 300 and f"[... {left} lines left out ...]" in cut
    with pytest.raises(ValueError, match="2 lines and 3 template ids"):
        ls.template_prompt("a\nb", [1, 2, 3], set(), 100)
    # a cut keeps the rare event of a long session's middle, and says what each gap held
    steps = [f"INFO app: step {i} of a long job {'x' * 40}" for i in range(600)]
    failure = "ERROR app: disk /data/3 failed during step 300"
    body = "\n".join(steps[:300] + [failure] + steps[300:])
    ids = list(range(300)) + [999] + list(range(300, 600))
    cut, left = ls.template_prompt(body, ids, set(range(600)), 300)
    shown = cut.splitlines()
    assert "[rare] " + failure in shown and ls.estimate_tokens(cut) <= 300
    gaps = [int(line.split()[1]) for line in shown if line.startswith("[... ")]
    assert len(gaps) == 2 and sum(gaps) == left == 601 - (len(shown) - 2)
    assert shown.index("[rare] " + failure) not in (0, len(shown) - 1)  # between two cuts
    with pytest.raises(ValueError, match="prompt form must be one of"):
        ls.ExampleParams(form="prose")
    assert ls.ExampleParams(form="templates").prompt_version == ls.PROMPT_FORMS["templates"]
    assert ls.ExampleParams().prompt_version == ls.PROMPT_VERSION == ls.PROMPT_FORMS["lines"]


def test_common_templates_are_those_of_enough_training_sessions():
    sequences = [[1, 2, 2, 3]] * 200 + [[1, 4]] * 2 + [[1, 5]] * 5
    assert ls.common_templates(sequences, share=0.01) == {1, 2, 3, 5}  # 5 of 207 is over 2.07
    assert ls.common_templates(sequences, share=0.05) == {1, 2, 3}
    assert ls.common_templates([], share=0.5) == set()


def test_common_templates_counted_batch_by_batch_are_the_same_and_only_of_training_sessions():
    import pyarrow as pa

    sequences = [[1, 2, 2, 3]] * 200 + [[1, 4]] * 2 + [[1, 5]] * 5 + [[9, 9]] * 50
    ids = [f"s{i}" for i in range(len(sequences))]
    table = pa.table({"session_id": ids, "template_ids": pa.array(sequences, pa.list_(pa.int32()))})
    train = ids[:207]  # the [9, 9] sessions are not training sessions: never counted
    batches = [table.slice(i, 64) for i in range(0, len(ids), 64)]
    for share in (0.01, 0.05):
        assert ls.common_in_batches(batches, train, share) == ls.common_templates(
            sequences[:207], share=share
        )
    assert 9 not in ls.common_in_batches(batches, train, 0.01)
    assert ls.common_in_batches([], train, 0.5) == set()
