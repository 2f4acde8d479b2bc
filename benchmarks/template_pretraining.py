"""What pretraining the next-template model gains where it should matter: a target with few
sessions.

Two pairs, each source read, parsed (Drain3) and split by the project's own assets, so that the
template texts the two share are the project's:

- real -> real, the same system: pretrained on the first 20,000 lines of HDFS_v1 (every block
  the target holds removed first), fine-tuned on the 110 blocks sampled across HDFS_v1
  (``hdfs_sampled_blocks``, split 60/20/20);
- synthetic -> real: pretrained on the synthetic HDFS source (the project's default
  pretraining source), fine-tuned on the first 20,000 lines of HDFS_v1 (split 80/10/10).

For each target, fine-tuned and from scratch on 1%, 5%, 20% and 100% of the target's normal
training sessions (a seeded draw, at least one session; three draws below 100%), with the same
defaults, budget and early stopping. Measured on the target's normal test sessions: mean
next-template NLL (lower is better) and top-1 accuracy; and, with how many anomalies they rest
on, F1 and the false-alarm rate of max NLL at the label-free threshold. The gain is fine-tuned
minus scratch.

With ``--seed-templates`` each target's template miner starts from its pretraining source's
state (the registry's ``templates_from``), so that the same messages get the same templates.

    python benchmarks/template_pretraining.py -> benchmarks/results/template_pretraining.{json,md}
    python benchmarks/template_pretraining.py --seed-templates -> .../template_pretraining_seeded.*
"""

import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import shared_data, write_results  # noqa: E402

FRACTIONS = (0.01, 0.05, 0.2, 1.0)
DRAWS = 3  # seeded draws of the target's training sessions below 100%
BLOCK = re.compile(r"blk_-?\d+")
PAIRS = (("hdfs_first_20000_rest", "hdfs_sampled_blocks"), ("synth_hdfs", "hdfs_first_20000"))


SEEDED = "--seed-templates" in sys.argv


def registry(data: Path, tmp: Path) -> str:
    hdfs = data / "hdfs"
    labels = hdfs / "anomalous_block_ids_all.csv"
    sampled = hdfs / "raw" / "HDFS_5k_sampled_blocks.log"
    target_blocks = set(BLOCK.findall(sampled.read_text()))
    rest = tmp / "HDFS_20000_rest.log"
    kept = [
        line
        for line in (hdfs / "raw" / "HDFS_20000.log").read_text().splitlines(keepends=True)
        if not (set(BLOCK.findall(line)) & target_blocks)
    ]
    rest.write_text("".join(kept))
    files = {
        "hdfs_first_20000_rest": rest,
        "hdfs_sampled_blocks": sampled,
        "hdfs_first_20000": hdfs / "raw" / "HDFS_20000.log",
    }
    lines = [
        "sources:",
        "  - {name: synth_hdfs, origin: synthetic, kind: hdfs, lines: 60000, seed: 1}",
    ]
    # with --seed-templates each target starts from its pretraining source's template state
    seeds = dict((target, source) for source, target in PAIRS) if SEEDED else {}
    for name, path in files.items():
        seed = f", templates_from: {seeds[name]}" if name in seeds else ""
        lines.append(
            f"  - {{name: {name}, origin: files, path: '{path}', format: HDFS, "
            f"session: {{by: block_id}}, ground_truth: {{provider: hdfs_blocks, "
            f"path: '{labels}', unlisted: normal}}{seed}}}"
        )
    return "\n".join(lines) + "\n"


def prepare_all() -> dict:
    """Every source through the ingest and dataset assets; each one's template_lm data."""
    import dagster as dg

    from logfit_dagster.core.models.template_lm import prepare_sequences
    from logfit_dagster.jobs import ingest_selection
    from logfit_dagster.partitions import LOG_SOURCE
    from logfit_dagster.resources.sources import LogSources
    from tests.graph import ASSETS, offline_resources

    names = list(LogSources().registered())
    data_dir = Path(os.environ["LOGFIT_DATA_DIR"])
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(LOG_SOURCE, names)
        for name in names:
            fractions = (0.6, 0.2, 0.2) if name == "hdfs_sampled_blocks" else (0.8, 0.1, 0.1)
            split = dict(
                zip(("train_fraction", "dev_fraction", "test_fraction"), fractions, strict=True)
            )
            assert dg.materialize(
                ASSETS,
                selection=ingest_selection,  # raw lines to splits, as ingest_job runs them
                partition_key=name,
                instance=instance,
                resources=offline_resources(),
                run_config={"ops": {"dataset_splits": {"config": split}}},
            ).success, name
        assert dg.materialize(
            ASSETS,
            selection=["template_vocabulary"],
            instance=instance,
            resources=offline_resources(),
        ).success
    vocabulary = pd.read_parquet(data_dir / "assets" / "template_vocabulary" / "all.parquet")
    prepared = {}
    for name in names:
        assets = data_dir / "assets"
        templates = pd.read_parquet(assets / "log_templates" / f"{name}.parquet")
        prepared[name] = prepare_sequences(
            pd.read_parquet(assets / "sessions" / f"{name}.parquet"),
            pd.read_parquet(assets / "dataset_splits" / f"{name}.parquet"),
            dict(zip(templates["template_id"], templates["template"].astype(str), strict=True)),
            vocabulary["template"].tolist(),
        )
    return prepared


def normal_test_figures(folder: Path, test: list[dict]) -> dict:
    """Mean NLL and top-1 accuracy on the normal test sessions; max-NLL F1 and FPR."""
    import json

    from logfit_dagster.core.models.base import load

    scorer = load(folder)
    normal = [t["tokens"] for t in test if t["label"] == 0]
    stats = scorer.token_stats(normal)
    nll, ranks = stats.nll.astype(float), stats.ranks
    evaluation = json.loads((folder / "evaluation.json").read_text())
    m = evaluation["methods"]["max_nll"]
    return {
        "normal_test_mean_nll": float(nll.mean()),
        "normal_test_top1": float((ranks == 0).mean()),
        "max_nll_f1": m["f1"],
        "max_nll_fpr": m["false_positive_rate"],
        "test_anomalous": evaluation["summary"]["anomalous"],
        "test_normal": len(normal),
    }


def main() -> None:
    from logfit_dagster.core.models.base import train

    data = shared_data()
    rows, runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "sources.yaml").write_text(registry(data, tmp))
        os.environ["LOGFIT_DATA_DIR"] = str(tmp / "data")
        os.environ["LOGFIT_SOURCES"] = str(tmp / "sources.yaml")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        prepared = prepare_all()
        for source, target in PAIRS:
            started = time.perf_counter()
            pre = train(
                "template_lm", {**prepared[source], "init": None}, {}, tmp / f"pre_{source}"
            )
            runs.append(
                {
                    "pretraining source": source,
                    "target": target,
                    "pretraining seconds": round(time.perf_counter() - started, 1),
                    "pretraining normal sessions": len(prepared[source]["train"]),
                    "target normal training sessions": len(prepared[target]["train"]),
                    "shared templates": len(
                        {t for s in prepared[source]["train"] for t in s}
                        & {t for s in prepared[target]["train"] for t in s}
                    ),
                    "target templates": len({t for s in prepared[target]["train"] for t in s}),
                }
            )
            full = prepared[target]["train"]
            for fraction in FRACTIONS:
                for draw in range(1 if fraction == 1.0 else DRAWS):
                    rng = np.random.default_rng(draw)
                    k = max(1, round(fraction * len(full)))
                    keep = sorted(rng.choice(len(full), size=k, replace=False))
                    subset = {**prepared[target], "train": [full[i] for i in keep]}
                    row = {"target": target, "fraction": fraction, "draw": draw, "sessions": k}
                    for mode, init in (("scratch", None), ("fine-tuned", str(pre.folder))):
                        folder = tmp / f"{target}_{fraction}_{draw}_{mode}"
                        started = time.perf_counter()
                        result = train("template_lm", {**subset, "init": init}, {}, folder)
                        figures = normal_test_figures(folder, prepared[target]["test"])
                        row.update(
                            {
                                f"{mode} {k}": v
                                for k, v in {
                                    **figures,
                                    "seconds": round(time.perf_counter() - started, 1),
                                    "epochs": result.metrics.get("epochs_run"),
                                }.items()
                            }
                        )
                    rows.append(row)
                    print(row, flush=True)
    table = pd.DataFrame(rows)
    summary = (
        table.groupby(["target", "fraction"])
        .agg(
            sessions=("sessions", "first"),
            draws=("draw", "count"),
            scratch_nll=("scratch normal_test_mean_nll", "mean"),
            tuned_nll=("fine-tuned normal_test_mean_nll", "mean"),
            scratch_top1=("scratch normal_test_top1", "mean"),
            tuned_top1=("fine-tuned normal_test_top1", "mean"),
            scratch_f1=("scratch max_nll_f1", "mean"),
            tuned_f1=("fine-tuned max_nll_f1", "mean"),
            scratch_fpr=("scratch max_nll_fpr", "mean"),
            tuned_fpr=("fine-tuned max_nll_fpr", "mean"),
            test_anomalous=("scratch test_anomalous", "first"),
            test_normal=("scratch test_normal", "first"),
        )
        .reset_index()
    )
    summary["nll_gain"] = summary["scratch_nll"] - summary["tuned_nll"]
    summary["top1_gain"] = summary["tuned_top1"] - summary["scratch_top1"]
    summary["f1_gain"] = summary["tuned_f1"] - summary["scratch_f1"]
    markdown = (
        "# Pretraining the next-template model: the gain on a target with few sessions\n\n"
        "Fine-tuned from a model pretrained on another source against the same model from "
        "scratch, on a share of the target's normal training sessions (mean of 3 seeded draws "
        "below 100%). NLL and top-1 on the target's normal test sessions; F1 and FPR of max NLL "
        "at the label-free threshold rest on `test_anomalous` anomalies. Gains: NLL scratch "
        "minus fine-tuned (positive: pretraining helps), top-1 and F1 fine-tuned minus "
        "scratch.\n\n"
        + pd.DataFrame(runs).to_markdown(index=False)
        + "\n\n"
        + summary.round(4).to_markdown(index=False)
        + "\n"
    )
    if SEEDED:
        markdown = markdown.replace(
            "# Pretraining the next-template model: the gain on a target with few sessions",
            "# Pretraining the next-template model, each target's templates seeded from its "
            "pretraining source (templates_from)",
        )
    name = "template_pretraining_seeded" if SEEDED else "template_pretraining"
    write_results(name, {"rows": rows, "runs": runs, "seeded": SEEDED}, markdown)


if __name__ == "__main__":
    main()
