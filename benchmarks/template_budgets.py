"""The default run's template-model budgets: learning rate, steps and epochs against dev loss,
dev top-1 accuracy, test F1 and training time, on the default sources.

Reads the sessions, splits, templates and template vocabulary that ``logfit materialize`` left
in a data folder (``--data``, default ``data/`` of the project: run the README's first command
first), then for each setting pretrains on ``synth_hdfs`` and fine-tunes that model on every
other default source, as ``template_lm_pretrained`` and ``template_lm`` do, in this process with
one torch thread (the steps of ``logfit materialize`` each have one on 2 cores). The settings
are the default run's budgets before and after they changed, the step cut alone, and the new
rate with the old budgets.

    python benchmarks/template_budgets.py [--data DIR] -> benchmarks/results/template_budgets.{json,md}
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from benchmarks._common import ROOT, write_results  # noqa: E402

PRETRAINING = "synth_hdfs"
TARGETS = ["synth_openstack", "synth_bgl", "synth_javaapp"]
# (name, learning rate, pretraining steps, fine-tuning steps, epochs)
SETTINGS = [
    ("before: 3e-4, 300/240 steps, 20 epochs", 3e-4, 300, 240, 20),
    ("now: 1e-3, 150/120 steps, 10 epochs", 1e-3, 150, 120, 10),
    ("the step cut alone: 3e-4, 150/120, 10 epochs", 3e-4, 150, 120, 10),
    ("the new rate, old budgets: 1e-3, 300/240, 20 epochs", 1e-3, 300, 240, 20),
]


def _data(assets: Path, source: str, vocabulary: list[str]) -> dict:
    from logfit_dagster.core.models.template_lm import prepare_sequences

    templates = pd.read_parquet(assets / "log_templates" / f"{source}.parquet")
    data = prepare_sequences(
        pd.read_parquet(assets / "sessions" / f"{source}.parquet"),
        pd.read_parquet(assets / "dataset_splits" / f"{source}.parquet"),
        {
            int(i): str(t)
            for i, t in zip(templates["template_id"], templates["template"], strict=True)
        },
        vocabulary,
    )
    return {**data, "source": source}


def _row(setting: str, source: str, role: str, result, seconds: float) -> dict:
    metrics = result.manifest.metrics
    return {
        "setting": setting,
        "source": source,
        "model": role,
        "steps": metrics["steps"],
        "epochs": metrics["epochs_run"],
        "stopped": result.manifest.extra["stopped"],
        "dev_loss": round(metrics["dev_loss"], 4),
        "dev_top1": round(metrics["dev_top1"], 4),
        "test_max_nll_f1": metrics.get("test_max_nll_f1"),
        "test_mean_nll_f1": metrics.get("test_mean_nll_f1"),
        "test_topg_misses_f1": metrics.get("test_topg_misses_f1"),
        "test_anomalous": metrics.get("test_anomalous"),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT / "data"), help="a materialized data folder")
    args = parser.parse_args()
    import torch

    from logfit_dagster.core.models.template_lm import train

    torch.set_num_threads(1)
    assets = Path(args.data) / "assets"
    vocabulary = pd.read_parquet(assets / "template_vocabulary" / "all.parquet")["template"]
    vocabulary = vocabulary.tolist()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (name, rate, pre_steps, fine_steps, epochs) in enumerate(SETTINGS):
            params = {"learning_rate": rate, "max_epochs": epochs, "device": "cpu"}
            folder = Path(tmp) / str(i)
            start = time.perf_counter()
            pretrained = train(
                {**_data(assets, PRETRAINING, vocabulary), "init": None},
                {**params, "max_steps": pre_steps},
                folder / PRETRAINING,
            )
            rows.append(
                _row(name, PRETRAINING, "pretrained", pretrained, time.perf_counter() - start)
            )
            for source in TARGETS:
                start = time.perf_counter()
                result = train(
                    {**_data(assets, source, vocabulary), "init": str(folder / PRETRAINING)},
                    {**params, "max_steps": fine_steps},
                    folder / source,
                )
                rows.append(_row(name, source, "fine-tuned", result, time.perf_counter() - start))
            print(name, "done", flush=True)
    table = pd.DataFrame(rows)
    totals = table.groupby("setting", sort=False)["seconds"].sum().rename("training_seconds")
    markdown = (
        "# The default run's template-model budgets\n\n"
        f"Pretrained on `{PRETRAINING}`, fine-tuned on {', '.join(f'`{s}`' for s in TARGETS)}, "
        "from the assets of a materialized default data folder; one process, one torch thread. "
        "Test F1 rests on the anomalous test sessions counted per row (`test_anomalous`); dev "
        "loss is the mean next-template NLL on normal dev windows (lower is better).\n\n"
        + table.to_markdown(index=False)
        + "\n\nTraining time per setting (seconds, the four models):\n\n"
        + totals.to_frame().to_markdown()
        + "\n"
    )
    write_results("template_budgets", {"rows": rows, "settings": SETTINGS}, markdown)
    print(markdown)


if __name__ == "__main__":
    main()
