"""Which lines the cascade's encoder should read: quality and speed of the routing band.

The cascade (``line_transformer``) scores every shape with its TF-IDF stage and sends the shapes
whose TF-IDF LOOK probability lies in a band to the fine-tuned encoder. A wide band reads most
lines of a new system (96% at the old default, 0.05 and up), which makes scoring slow; a
narrow one reads only what the first stage is unsure of. This measures both sides:

- **Quality**, leave-one-family-out over the 20 recorded Claude label sets (the families of
  ``core/line_protocol.py``): per fold the TF-IDF stage and the encoder are trained on the other
  five families (the encoder on a seeded sample of rows for at most two epochs: a CPU budget,
  the same encoder for every band), and each held-out row gets both stages' probabilities once;
  every band is then scored from those, pooled over held-out lines, at the threshold the model
  ships with (chosen on its dev sources, never on the held-out family). Beside it, in the same
  folds: the TF-IDF stage alone and the plain char n-gram baseline (raw lines, balanced LR).
- **Speed**, on the 24 real files of ``../shared/data`` pooled (unseen logs): a cascade trained
  on all 20 sources scores every file once per band, one scorer per band (each message encoded
  once); lines per second, the share of lines and the messages the encoder read.

The bands are compared on the 20 sources themselves, so the default chosen from this table is
decided on them (say so where it is quoted).

    python benchmarks/cascade_routing.py [--max-rows 1200] [--epochs 2]
        -> benchmarks/results/cascade_routing.{json,md}
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, recorded_labels, shared_data, write_results  # noqa: E402
from benchmarks.classify_throughput import real_files, timed_pass  # noqa: E402

TFIDF_PARAMS = {"C": 1.0, "class_weight": "balanced"}
# (cascade_low, cascade_high): the old default first
BANDS = [
    (0.05, 1.0),
    (0.05, 0.9),
    (0.1, 0.9),
    (0.2, 0.9),
    (0.2, 0.8),
    (0.3, 0.8),
    (0.3, 0.7),
    (0.4, 0.7),
]


def fold_params(args) -> dict:
    """The encoder's training params per fold: the CPU budget of ``--max-rows`` and
    ``--epochs``, every TF-IDF probability routed (the bands are applied afterwards)."""
    return {
        "max_rows": args.max_rows,
        "max_epochs": args.epochs,
        "device": "cpu",
        "checkpoint_every": 100_000,
        "cascade_low": 0.0,
        "seed": 0,
    }


def fold(lines: pd.DataFrame, held_family: str, families: np.ndarray, args, work: Path) -> dict:
    """Both stages' probabilities on the held-out family's rows, trained without it."""
    from logfit_dagster.core.line_protocol import baseline_pipeline
    from logfit_dagster.core.models import base
    from logfit_dagster.core.models.line_transformer import model_text, prepare_data

    held = families == held_family
    test_sources = sorted(lines.loc[held, "source"].unique())
    data = prepare_data(lines, TFIDF_PARAMS, test=test_sources)
    params = fold_params(args)
    started = time.perf_counter()
    result = base.train("line_transformer", data, params, work / held_family)
    seconds = time.perf_counter() - started
    scorer = base.load(work / held_family)
    rows = data["test"]
    shapes = [r["shape"] for r in rows]
    texts = [model_text(s, scorer.text) for s in shapes]
    baseline = baseline_pipeline().fit(
        lines.loc[~held, "raw"].astype(str), (lines.loc[~held, "label"] == "LOOK").astype(int)
    )
    return {
        "family": held_family,
        "sources": test_sources,
        "threshold": float(scorer.threshold),
        "tfidf_threshold": float(scorer.tfidf.threshold),
        "y": [int(r["y"]) for r in rows],
        "weight": [float(r["weight"]) for r in rows],
        "message": texts,
        "tfidf": scorer.tfidf.score_shapes(shapes).tolist(),
        "encoder": scorer.encoder.probabilities(texts, 128).tolist(),
        "score_precision": result.manifest.extra["score_precision"],
        "train_seconds": round(seconds, 1),
        "epochs": result.metrics.get("epochs_run"),
        "baseline_y": (lines.loc[held, "label"] == "LOOK").astype(int).tolist(),
        "baseline_p": baseline.predict_proba(lines.loc[held, "raw"].astype(str))[:, 1].tolist(),
    }


def f1(y, pred, w) -> dict:
    tp = float(w[(pred == 1) & (y == 1)].sum())
    fp = float(w[(pred == 1) & (y == 0)].sum())
    fn = float(w[(pred == 0) & (y == 1)].sum())
    return {
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
    }


def quality(folds: list[dict]) -> list[dict]:
    """Every band's pooled LOOK F1 from the folds' probabilities, and the share of held-out
    lines and of distinct messages its encoder reads; the TF-IDF stage and the baseline."""
    y = np.concatenate([f["y"] for f in folds])
    w = np.concatenate([f["weight"] for f in folds])
    tfidf = np.concatenate([f["tfidf"] for f in folds])
    encoder = np.concatenate([f["encoder"] for f in folds])
    threshold = np.concatenate([[f["threshold"]] * len(f["y"]) for f in folds])
    tfidf_threshold = np.concatenate([[f["tfidf_threshold"]] * len(f["y"]) for f in folds])
    family = np.concatenate([[f["family"]] * len(f["y"]) for f in folds])
    message = np.concatenate([np.asarray(f["message"], dtype=object) for f in folds])
    out = []
    for low, high in BANDS:
        routed = (tfidf >= low) & (tfidf <= np.maximum(high, threshold))
        cascade = np.where(routed, (tfidf + encoder) / 2, tfidf)
        pred = (cascade >= np.maximum(threshold, low)).astype(int)
        macro = np.mean(
            [f1(y[family == g], pred[family == g], w[family == g])["f1"] for g in np.unique(family)]
        )
        out.append(
            {
                "model": f"cascade, band {low}..{high}",
                **f1(y, pred, w),
                "macro_f1_families": float(macro),
                "lines_to_encoder": float(w[routed].sum() / w.sum()),
                "messages_to_encoder": int(len(set(message[routed]))),
            }
        )
    from sklearn.metrics import average_precision_score

    pred = (encoder >= threshold).astype(int)
    out.append(  # whether the encoder learned anything at this budget
        {
            "model": "encoder alone (its threshold)",
            **f1(y, pred, w),
            "macro_f1_families": float(
                np.mean(
                    [
                        f1(y[family == g], pred[family == g], w[family == g])["f1"]
                        for g in np.unique(family)
                    ]
                )
            ),
            "average_precision": float(average_precision_score(y, encoder, sample_weight=w)),
        }
    )
    pred = (tfidf >= tfidf_threshold).astype(int)
    out.append(
        {
            "model": "TF-IDF stage alone (its threshold)",
            "average_precision": float(average_precision_score(y, tfidf, sample_weight=w)),
            **f1(y, pred, w),
            "macro_f1_families": float(
                np.mean(
                    [
                        f1(y[family == g], pred[family == g], w[family == g])["f1"]
                        for g in np.unique(family)
                    ]
                )
            ),
        }
    )
    by = np.concatenate([f["baseline_y"] for f in folds])
    bp = np.concatenate([f["baseline_p"] for f in folds])
    bf = np.concatenate([[f["family"]] * len(f["baseline_y"]) for f in folds])
    ones = np.ones(len(by))
    out.append(
        {
            "model": "char n-gram baseline (raw lines, balanced LR, 0.5)",
            **f1(by, (bp >= 0.5).astype(int), ones),
            "macro_f1_families": float(
                np.mean(
                    [
                        f1(by[bf == g], (bp[bf == g] >= 0.5).astype(int), ones[bf == g])["f1"]
                        for g in np.unique(bf)
                    ]
                )
            ),
        }
    )
    return out


def speed(lines: pd.DataFrame, work: Path) -> list[dict]:
    """Lines per second of a cascade trained on all 20 sources over the 24 real files pooled,
    per band (a fresh scorer each: its message cache starts empty)."""
    from logfit_dagster.core.models import base
    from logfit_dagster.core.models.line_transformer import TransformerLineScorer, prepare_data

    data = prepare_data(lines, TFIDF_PARAMS)
    data["train"] = data["train"] + data["dev"] + data["test"]
    data["dev"], data["test"] = [], []
    base.train(
        "line_transformer",
        data,
        {
            "max_rows": 256,
            "max_epochs": 1,
            "device": "cpu",
            "checkpoint_every": 100_000,
            "score_precision": "int8",
        },
        work / "all",
    )
    manifest = base.read_manifest(work / "all")
    fp32 = replace(manifest, extra={**manifest.extra, "score_precision": "fp32"})
    files = real_files()
    out = []
    for (low, high), precision in itertools.product(BANDS, ("int8", "fp32")):
        scorer = TransformerLineScorer.from_folder(
            work / "all", manifest if precision == "int8" else fp32
        )
        scorer.cascade_low, scorer.cascade_high = low, max(high, scorer.threshold)
        count, seconds = timed_pass(scorer, files)
        out.append(
            {
                "band": f"{low}..{high}",
                "encoder": precision,
                "lines": count,
                "seconds": round(seconds, 2),
                "lines_per_second": round(count / seconds),
                "lines_to_encoder": round(scorer.routed_lines / scorer.lines_scored, 4),
                "messages_encoded": len(scorer._cache),
            }
        )
        print(out[-1], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-rows", type=int, default=1200, help="encoder rows per fold")
    parser.add_argument("--epochs", type=int, default=2, help="encoder epochs per fold")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    from logfit_dagster.core.line_protocol import family_groups

    torch.set_num_threads(args.threads)
    lines = recorded_labels()
    families = np.asarray(family_groups(lines["source"]))
    shared_data()  # fails clearly where the data is missing
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        folds = []
        for family in sorted(set(families)):
            folds.append(fold(lines, family, families, args, work))
            print(family, folds[-1]["train_seconds"], "s", flush=True)
        table = quality(folds)
        fast = speed(lines, work)
    out = {
        "machine": machine(),
        "args": vars(args),
        "quality": table,
        "speed": fast,
        "folds": [
            {
                k: f[k]
                for k in (
                    "family",
                    "sources",
                    "threshold",
                    "train_seconds",
                    "epochs",
                    "score_precision",
                )
            }
            | {"rows": len(f["y"]), "look_lines": float(np.dot(f["y"], f["weight"]))}
            for f in folds
        ],
    }
    markdown = (
        "# The cascade's routing band: quality on families of systems it never saw, speed on "
        "unseen logs\n\n"
        f"{out['machine'].get('cpus', '?')} CPUs, {args.threads} torch threads. Quality: "
        "leave-one-family-out over the 20 recorded label sets, the encoder (all-MiniLM-L6-v2) "
        f"trained per fold on at most {args.max_rows} rows for at most {args.epochs} epochs "
        "(a CPU budget: the same encoder for every band), pooled LOOK F1 over held-out lines "
        "at the threshold each fold's model ships with; `lines_to_encoder`: the share of "
        "held-out lines whose shape the encoder reads. The bands are compared on these 20 "
        "sources, so a default picked here is decided on them.\n\n"
        + pd.DataFrame(table).round(4).to_markdown(index=False)
        + "\n\nFolds:\n\n"
        + pd.DataFrame(out["folds"]).to_markdown(index=False)
        + "\n\nSpeed: a cascade trained on all 20 sources (256 rows, one epoch: speed only) over "
        "the real files pooled, a fresh scorer per band, its encoder in int8 (the CPU default "
        "where the export's check allows it) and in fp32:\n\n"
        + pd.DataFrame(fast).to_markdown(index=False)
        + "\n"
    )
    write_results("cascade_routing", out, markdown)


if __name__ == "__main__":
    main()
