"""Does a small local LLM judge the same through an OpenAI-compatible server as in process?

After ``benchmarks/llm_judge_curve.py --work DIR``: the base model and the SFT adapter it
trained, each on the same test sessions, judged twice at the threshold that benchmark chose on
dev (as the logit bias on normal's token, ``llm_lora.decision_bias``):

- in process, by greedy generation (``llm_lora.evaluate``: what the curve benchmark reports);
- served by ``transformers serve`` on 127.0.0.1 (``core.serving.LocalServer``; the adapter merged
  into its base, as the ``judge`` resource serves it) and asked through the OpenAI SDK by
  ``llm_session_eval``'s own code (``SessionJudge``, ``evaluate_sessions``): the path a hosted
  model takes.

Reported per model: answers equal word for word, labels equal, unparseable answers each way,
F1 of the served answers, and seconds a session each way.

    python benchmarks/llm_judge_served.py --work DIR [--curve llm_judge_format_gated] [--sessions 30]
        -> benchmarks/results/llm_judge_served.{json,md}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, write_results  # noqa: E402
from benchmarks.llm_judge_curve import rows  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def test_frame(sample: list[dict]) -> pd.DataFrame:
    """The sessions as ``llm_session_eval`` reads them from ``llm_session_examples``."""
    return pd.DataFrame(
        {
            "session_id": [r["session_id"] for r in sample],
            "label": [int(r["label"] == "anomalous") for r in sample],
            "messages": [json.dumps(r["messages"]) for r in sample],
            "prompt_version": "benchmark",
            "est_tokens": 0,
        }
    )


def compare(
    name: str, weights: Path, adapter: Path | None, threshold: float, sample, args, work: Path
) -> dict:
    from peft import PeftModel

    from logfit_dagster.core.llm_eval import AnswerCache, SessionJudge, evaluate_sessions
    from logfit_dagster.core.llm_sessions import parse_answer
    from logfit_dagster.core.models.llm_lora import decision_bias, evaluate, load_base
    from logfit_dagster.core.serving import LocalServer, servable_folder

    model, tokenizer = load_base(str(weights), "cpu")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter / "adapter")
    bias = decision_bias(tokenizer, threshold)
    started = time.perf_counter()
    local = evaluate(model, tokenizer, sample, args.max_tokens, "cpu", bias)
    local_seconds = time.perf_counter() - started
    del model

    folder = servable_folder(str(adapter)) if adapter is not None else weights
    with LocalServer(folder, device="cpu", threads=args.threads) as server:
        judge = SessionJudge(
            api_key="local",
            model=str(folder),
            name=f"served:{name}",
            base_url=server.base_url,
            max_concurrency=1,
            structured_output=False,
            max_tokens=args.max_tokens,
            logit_bias=bias,
        )
        cache = work / "served_answers.sqlite"
        cache.unlink(missing_ok=True)  # every session asked, so that its time is measured
        started = time.perf_counter()
        frame, metrics, stats = evaluate_sessions(test_frame(sample), judge, AnswerCache(cache))
        served_seconds = time.perf_counter() - started
    served = frame.set_index("session_id")["answer"].to_dict()
    in_process = [a["answer"] for a in local["answers"]]
    over_server = [served[r["session_id"]] for r in sample]
    return {
        "model": name,
        "sessions": len(sample),
        "anomalous": sum(r["label"] == "anomalous" for r in sample),
        "threshold": threshold,
        "answers_equal": sum(a == b for a, b in zip(in_process, over_server, strict=True)),
        "labels_equal": sum(
            b is not None and parse_answer(a) == parse_answer(b)
            for a, b in zip(in_process, over_server, strict=True)
        ),
        "unparseable_in_process": local["unparseable"],
        "unparseable_served": sum(b is not None and parse_answer(b) is None for b in over_server),
        "failed_served": stats.failed,
        "f1_in_process": local["f1"],
        "f1_served": metrics.get("f1", float("nan")),
        "asked": stats.asked,
        "seconds_per_session_in_process": round(local_seconds / len(sample), 2),
        "seconds_per_session_served": round(served_seconds / len(sample), 2),
        "example_in_process": in_process[0],
        "example_served": over_server[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", required=True, help="llm_judge_curve.py's --work folder")
    parser.add_argument("--curve", default="llm_judge_format_gated", help="its results' name")
    parser.add_argument(
        "--base-curve",
        default="",
        help="the results that judged the base model, for its threshold (default: --curve; a "
        "run with --no-base has none)",
    )
    parser.add_argument("--sessions", type=int, default=30, help="test sessions (anomalous first)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default="llm_judge_served")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from logfit_dagster.core.models.llm_lora import embedded_base_model

    work = Path(args.work)
    curve = json.loads((RESULTS / f"{args.curve}.json").read_text())
    examples = pd.read_parquet(
        work / "data" / "assets" / "llm_session_examples" / "synth_hdfs.parquet"
    )
    sample = rows(examples, "test")[: args.sessions]
    weights = Path(curve["args"]["base_model"] or embedded_base_model())
    thresholds = {name: entry["threshold"] for name, entry in curve["test"].items()}
    base_curve = json.loads((RESULTS / f"{args.base_curve or args.curve}.json").read_text())
    base_name, base_entry = next(
        (name, entry) for name, entry in base_curve["test"].items() if name.endswith("(base)")
    )
    thresholds[base_name] = base_entry["threshold"]
    out = {"machine": machine(), "args": vars(args), "models": []}
    for name, adapter in ((base_name, None), ("+ sft adapter", work / "sft")):
        result = compare(name, weights, adapter, thresholds[name], sample, args, work)
        print(json.dumps(result), flush=True)
        out["models"].append(result)
    write_results(args.name, out, markdown(out))


def markdown(out: dict) -> str:
    a = out["args"]
    table = pd.DataFrame(out["models"]).drop(columns=["example_in_process", "example_served"])
    lines = [
        "# A local LLM judge in process and through transformers serve",
        "",
        f"The first {a['sessions']} test sessions of synth_hdfs (anomalous first), after "
        f"`{a['curve']}`: each model decides at the threshold that run chose on dev (a logit "
        f"bias on normal's token), greedy, answers of at most {a['max_tokens']} tokens; served "
        "by `transformers serve` on 127.0.0.1 and asked through the OpenAI SDK by "
        f"`llm_session_eval`'s judge ({out['machine'].get('cpus', '?')} CPUs, "
        f"{a['threads']} torch threads).",
        "",
        table.to_markdown(index=False, floatfmt=".3f"),
        "",
        "First answers:",
        "",
    ]
    for m in out["models"]:
        lines.append(f"- {m['model']}: in process `{m['example_in_process']}`")
        lines.append(f"  served `{m['example_served']}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
