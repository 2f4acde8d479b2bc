"""Requests, tokens and dollars of the two labeling plans, and the quality of propagated labels.

Sources: the 20 recorded sources of ../shared/data/llm-labels and
../shared/data/hdfs/raw/HDFS_20000.log. For each plan (``windows``, ``distinct``) the real
AnthropicBatchLabeler and label cache run against a local server that speaks the Message
Batches protocol (tests/llm_servers.py), so requests, batches and the characters sent are
measured exactly; tokens are the labeler's own estimate (characters / 3.5 plus the prompt;
output 30 tokens a line asked), since Claude's tokenizer is not available offline; dollars are
at Claude Haiku 4.5 batch prices ($0.50 / $2.50 per million input / output tokens). Per source:

- scratch: the source on an empty cache (after the sources before it, in name order: the
  ``distinct`` plan shares shapes across sources, as it does in use);
- grown: 10% new lines appended (its first lines again, each marked as a replay);
- unchanged: the grown source again (must send nothing);
- new source of the same system: for HDFS, the Loghub 2k sample (other lines of the same
  system); for the 20 recorded sources, the source with every digit shifted (3 -> 6, ...), as
  another host of the same system logs the same messages with other ids and numbers.

Quality: the recorded labeler plays the LLM of a ``distinct`` run (it answers for the lines
asked), and every line's label is compared with its recorded one: LOOK precision, recall, F1,
per source and pooled, with one answer per shape and with two (disagreements left unlabelled).

    python benchmarks/labeling_requests.py -> benchmarks/results/labeling_requests.{json,md}
"""

import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import shared_data, write_results  # noqa: E402
from logfit_dagster.core.labeling.anthropic_batch import AnthropicBatchLabeler  # noqa: E402
from logfit_dagster.core.labeling.base import (  # noqa: E402
    CHARS_PER_TOKEN,
    OUTPUT_TOKENS_PER_LINE,
    PROMPT_OVERHEAD_TOKENS,
    label_source,
)
from logfit_dagster.core.labeling.cache import LabelCache  # noqa: E402
from logfit_dagster.core.labeling.offline import RecordedLabeler  # noqa: E402
from logfit_dagster.core.labeling.prompt import DEFAULT_SYSTEM_PROMPT  # noqa: E402
from logfit_dagster.core.scores import confusion_counts, rates  # noqa: E402
from tests.llm_servers import NUMBERED, FakeAnthropic  # noqa: E402

PLANS = ("windows", "distinct")
HAIKU_BATCH = (0.5, 2.5)  # USD per million input / output tokens, batch discount applied
ONLY = re.compile(r"^Label only lines ([\d, ]+),", re.MULTILINE)
SHIFT = str.maketrans("0123456789", "3456789012")


def sent(server: FakeAnthropic, before: set[str]) -> tuple[int, int, int]:
    """Requests, estimated input and output tokens of the batches created after ``before``."""
    requests = chars = asked = 0
    for batch_id, batch in server.batches.items():
        if batch_id in before:
            continue
        for request in batch["requests"]:
            requests += 1
            params = request["params"]
            content = params["messages"][0]["content"]
            chars += len(params["system"]) + len(content)
            only = ONLY.search(content)
            asked += len(only.group(1).split(",")) if only else len(NUMBERED.findall(content))
    tokens_in = int(chars / CHARS_PER_TOKEN) + requests * (
        PROMPT_OVERHEAD_TOKENS - int(len(DEFAULT_SYSTEM_PROMPT) / CHARS_PER_TOKEN)
    )
    return requests, tokens_in, asked * OUTPUT_TOKENS_PER_LINE


def dollars(tokens_in: int, tokens_out: int) -> float:
    return round((tokens_in * HAIKU_BATCH[0] + tokens_out * HAIKU_BATCH[1]) / 1e6, 4)


def load_sources() -> dict[str, tuple[list[str], list[str]]]:
    """name -> (lines, lines of a new source of the same system)."""
    data = shared_data()
    sources = {}
    for path in sorted((data / "llm-labels").glob("*.jsonl")):
        lines = [json.loads(x)["raw_line"] for x in path.read_text().splitlines() if x]
        sources[path.stem] = (lines, [line.translate(SHIFT) for line in lines])
    hdfs = (data / "hdfs" / "raw" / "HDFS_20000.log").read_text().splitlines()
    other = (data / "loghub-2k" / "HDFS" / "HDFS_2k.log").read_text().splitlines()
    sources["HDFS_20000"] = (hdfs, other)
    return sources


def costs(sources) -> list[dict]:
    rows = []
    for plan in PLANS:
        with FakeAnthropic() as server, tempfile.TemporaryDirectory() as tmp:
            cache = LabelCache(Path(tmp) / "cache.sqlite")

            def run(name, lines, plan=plan, server=server, cache=cache):
                before = set(server.batches)
                labeler = AnthropicBatchLabeler(
                    api_key=server.api_key, base_url=server.url, poll_interval_s=0.01
                )
                started = time.perf_counter()
                _, stats = label_source(name, lines, labeler, cache=cache, plan=plan)
                return (*sent(server, before), stats, time.perf_counter() - started)

            for name, (lines, sibling) in sources.items():
                req1, in1, out1, stats1, seconds = run(name, lines)
                growth = [f"{line} [replayed]" for line in lines[: max(1, len(lines) // 10)]]
                req2, in2, out2, _, _ = run(name, lines + growth)
                req3, _, _, _, _ = run(name, lines + growth)
                req4, in4, out4, _, _ = run(f"{name}-sibling", sibling)
                rows.append(
                    {
                        "plan": plan,
                        "source": name,
                        "lines": len(lines),
                        "shapes": stats1.shapes if plan == "distinct" else None,
                        "scratch_requests": req1,
                        "scratch_input_tokens": in1,
                        "scratch_output_tokens": out1,
                        "scratch_usd": dollars(in1, out1),
                        "scratch_seconds": round(seconds, 2),
                        "grown_requests": req2,
                        "grown_input_tokens": in2,
                        "grown_usd": dollars(in2, out2),
                        "unchanged_requests": req3,
                        "new_source_lines": len(sibling),
                        "new_source_requests": req4,
                        "new_source_input_tokens": in4,
                        "new_source_usd": dollars(in4, out4),
                    }
                )
    return rows


def quality(sources, samples: int) -> list[dict]:
    """Labels of a distinct run answered by the recorded labeler, against the recorded ones."""
    paths = sorted((shared_data() / "llm-labels").glob("*.jsonl"))
    recorded = {
        p.stem: [json.loads(x)["label"] for x in p.read_text().splitlines() if x] for p in paths
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = LabelCache(Path(tmp) / "cache.sqlite")
        for name, truth in recorded.items():
            lines = sources[name][0]
            labeler = RecordedLabeler(paths, system=name)
            frame, stats = label_source(
                name, lines, labeler, cache=cache, plan="distinct", shape_samples=samples
            )
            labelled = frame["label"].notna().to_numpy()
            truth_look = (pd.Series(truth) == "LOOK").to_numpy()[labelled].astype(int)
            said_look = (frame["label"] == "LOOK").to_numpy()[labelled].astype(int)
            tp, fp, fn, tn = confusion_counts(truth_look, said_look)
            r = rates(tp, fp, fn, tn, empty=math.nan)
            rows.append(
                {
                    "shape_samples": samples,
                    "source": name,
                    "lines": len(lines),
                    "labelled": int(labelled.sum()),
                    "propagated": stats.propagated_lines,
                    "conflicted_lines": stats.conflicted_lines,
                    "look_precision": r["precision"],
                    "look_recall": r["recall"],
                    "look_f1": r["f1"],
                    "tp": tp,
                    "fp": fp,
                    "fn": fn,
                    "tn": tn,
                }
            )
    return rows


def pooled(rows: list[dict]) -> dict:
    tp, fp, fn, tn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn", "tn"))
    r = rates(tp, fp, fn, tn, empty=math.nan)
    lines = sum(r["lines"] for r in rows)
    return {
        "look_f1": round(r["f1"], 4),
        "look_precision": round(r["precision"], 4),
        "look_recall": round(r["recall"], 4),
        "coverage": round(sum(r["labelled"] for r in rows) / lines, 4),
    }


def main() -> None:
    sources = load_sources()
    cost_rows = costs(sources)
    quality_rows = quality(sources, 1) + quality(sources, 2)
    table = pd.DataFrame(cost_rows)
    recorded = table[table["source"] != "HDFS_20000"]
    totals = recorded.groupby("plan")[
        [
            "scratch_requests",
            "scratch_input_tokens",
            "scratch_usd",
            "grown_requests",
            "unchanged_requests",
            "new_source_requests",
            "new_source_usd",
        ]
    ].sum()
    summary = {
        "recorded_20_sources": totals.round(4).to_dict("index"),
        "distinct_share_of_windows_requests": round(
            totals.loc["distinct", "scratch_requests"] / totals.loc["windows", "scratch_requests"],
            4,
        ),
        "hdfs_20000": table[table["source"] == "HDFS_20000"]
        .set_index("plan")[
            ["scratch_requests", "scratch_usd", "grown_requests", "new_source_requests"]
        ]
        .to_dict("index"),
        "propagated_quality": {
            f"shape_samples={k}": pooled([r for r in quality_rows if r["shape_samples"] == k])
            for k in (1, 2)
        },
    }
    summary["meets_0.97"] = summary["propagated_quality"]["shape_samples=1"]["look_f1"] >= 0.97
    quality_table = pd.DataFrame(quality_rows).drop(columns=["tp", "fp", "fn", "tn"])
    worst = quality_table[quality_table["shape_samples"] == 1].sort_values("look_f1").head(5)
    markdown = (
        "# Labeling plans: requests, tokens, dollars, and the quality of propagated labels\n\n"
        "Requests are measured against a local Message Batches server; tokens are estimates "
        "(input: characters / 3.5 plus prompt overhead; output: 30 per line asked); dollars at "
        "Claude Haiku 4.5 batch prices. `new_source`: another source of the same system "
        "(HDFS: the Loghub 2k sample; the others: digits shifted).\n\n"
        + table.to_markdown(index=False)
        + "\n\n## Totals over the 20 recorded sources\n\n"
        + totals.round(4).to_markdown()
        + f"\n\ndistinct / windows scratch requests: "
        f"{summary['distinct_share_of_windows_requests']}\n\n"
        "## Propagated labels against the recorded ones (recorded labeler answering)\n\n"
        + quality_table.round(4).to_markdown(index=False)
        + "\n\nPooled:\n\n"
        + pd.DataFrame(summary["propagated_quality"]).T.to_markdown()
        + "\n\nLowest LOOK F1 with one answer a shape:\n\n"
        + worst.round(4).to_markdown(index=False)
        + "\n"
    )
    write_results(
        "labeling_requests",
        {"costs": cost_rows, "quality": quality_rows, "summary": summary},
        markdown,
    )


if __name__ == "__main__":
    main()
