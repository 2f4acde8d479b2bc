"""The line_transformer and the cascade on held-out sources of the 20 recorded Claude label sets.

Leave-one-source-out: for each source, the encoder is fine-tuned on the other sources but two
(the dev sources, taken by a hash of their names, which stop training and pick the threshold)
and scored once on the held-out source. The TF-IDF stage of the cascade is the TF-IDF model's
own leave-one-source-out probability (asset defaults), so neither stage has seen the source it
is scored on, and no threshold is chosen with the held-out source's labels.

Three steps, so that the training can run on a GPU machine that has torch and transformers but
not the rest of logfit's dependencies:

    python benchmarks/line_transformer_quality.py prepare           # CPU: rows, TF-IDF LOSO
    python benchmarks/line_transformer_quality.py train [--device cuda] [--out F] [--variant V]
    python benchmarks/line_transformer_quality.py report [F ...]    # -> results/line_transformer_quality.*

The folds measured on a GPU are kept in ``results/line_transformer_folds/`` (each held-out row's
probability), so ``report`` reproduces the tables from them:

    python benchmarks/line_transformer_quality.py report benchmarks/results/line_transformer_folds/*.jsonl
    python benchmarks/line_transformer_quality.py speed             # CPU: train and score rates

``prepare`` writes ``.bench/line_rows.json``; ``train`` needs that file and a base model
(``--base-model``, default: the packaged all-MiniLM-L6-v2), and appends each fold's scores to its
output as it goes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from logfit_dagster.core.models.encoder import Encoder  # noqa: E402
from logfit_dagster.core.models.line_transformer import (  # noqa: E402
    message_of,
    model_text,
    train,
)
from logfit_dagster.core.scores import weighted_f1  # noqa: E402

BENCH = ROOT / ".bench"
ROWS = BENCH / "line_rows.json"
CASCADE_LOW = 0.05
#: the asset's defaults, and the variants compared
VARIANTS = {
    "message-128": {"max_length": 128, "text": "message"},
    "whole-line-128": {"max_length": 128, "text": "line"},
    "message-64": {"max_length": 64, "text": "message"},
}


def prepare() -> None:
    from benchmarks._common import recorded_labels
    from logfit_dagster.core.line_model import LineModelParams, select_model, training_rows

    lines = recorded_labels()
    rows = training_rows(lines)
    started = time.perf_counter()
    selection = select_model(rows, [LineModelParams(C=1.0, class_weight="balanced")], 20)
    BENCH.mkdir(exist_ok=True)
    ROWS.write_text(
        json.dumps(
            {
                "tfidf_seconds": round(time.perf_counter() - started, 1),
                "rows": [
                    {"source": s, "shape": sh, "y": int(y), "weight": int(w), "tfidf": float(p)}
                    for s, sh, y, w, p in zip(
                        rows["source"],
                        rows["shape"],
                        rows["y"],
                        rows["weight"],
                        selection.out_of_fold,
                        strict=True,
                    )
                ],
            }
        )
    )
    print(f"{len(rows)} rows of {rows['source'].nunique()} sources -> {ROWS}")


def _dev_sources(sources: list[str], held_out: str, count: int = 2) -> list[str]:
    rest = [s for s in sources if s != held_out]
    return sorted(rest, key=lambda s: hashlib.sha1(f"{held_out}/{s}".encode()).hexdigest())[:count]


def train_folds(args) -> None:
    rows = json.loads(ROWS.read_text())["rows"]
    variant = VARIANTS[args.variant]
    sources = sorted({r["source"] for r in rows})
    out = Path(args.out)
    done = {}
    if out.exists():
        done = {f["held_out"]: f for f in map(json.loads, out.read_text().splitlines())}
    params = {
        "base_model": args.base_model,
        "max_length": variant["max_length"],
        "text": variant["text"],
        "max_epochs": args.max_epochs,
        "patience": args.patience,
        "batch_size": 32,
        "checkpoint_every": 100_000,
        "device": args.device,
        "cascade_low": 0.0,
        "seed": 0,
        "threshold_from_dev": args.threshold_from_dev,
    }
    shard, shards = (int(x) for x in args.shard.split("/"))
    for held_out in sources[: args.folds or None][shard::shards]:
        if held_out in done:
            continue
        dev = _dev_sources(sources, held_out)
        part = {
            "train": [r for r in rows if r["source"] not in dev and r["source"] != held_out],
            "dev": [r for r in rows if r["source"] in dev],
        }
        folder = BENCH / "folds" / args.variant / held_out
        started = time.perf_counter()
        result = train(part, params, folder)
        seconds = time.perf_counter() - started
        test = [r for r in rows if r["source"] == held_out]
        encoder = Encoder.from_folder(
            folder / "model",
            args.device,
            variant["max_length"],
            tokenizer_path=folder / "tokenizer",
        )
        texts = [model_text(r["shape"], variant["text"]) for r in test]
        t0 = time.perf_counter()
        proba = encoder.probabilities(texts, 256)
        score_seconds = time.perf_counter() - t0
        shutil.rmtree(folder, ignore_errors=True)  # 90 MB a fold; the scores are kept
        record = {
            "held_out": held_out,
            "dev": dev,
            "variant": args.variant + ("-dev-threshold" if args.threshold_from_dev else ""),
            "threshold": result.manifest.extra["threshold"],
            "dev_f1": result.metrics["dev_f1"],
            "epochs": result.metrics["epochs_run"],
            "best_epoch": result.metrics["best_epoch"],
            "train_rows": len(part["train"]),
            "train_seconds": round(seconds, 2),
            "score_rows_per_s": round(len(texts) / max(score_seconds, 1e-9), 1),
            "device": result.manifest.extra["device"],
            "precision": result.manifest.extra["precision"],
            "proba": [round(float(p), 6) for p in proba],
        }
        with out.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(
            f"{args.variant} {held_out}: dev F1 {record['dev_f1']:.3f}, {record['epochs']} epochs, "
            f"{seconds:.1f} s",
            flush=True,
        )


def report(paths: list[str]) -> None:
    from benchmarks._common import write_results

    data = json.loads(ROWS.read_text())
    rows = data["rows"]
    by_source: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_source.setdefault(r["source"], []).append(i)
    y = np.array([r["y"] for r in rows])
    w = np.array([r["weight"] for r in rows], dtype=float)
    tfidf = np.array([r["tfidf"] for r in rows])
    results, per_source, runs = {}, {}, {}
    results["tfidf (asset defaults)"] = _scores(y, tfidf >= 0.5, w, by_source, per_source, "tfidf")
    for path in paths:
        folds = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
        if not folds:
            continue
        variant = folds[0]["variant"]
        covered = [f["held_out"] for f in folds]
        idx = np.concatenate([by_source[s] for s in covered])
        transformer = np.full(len(rows), np.nan)
        threshold = np.full(len(rows), np.nan)
        for f in folds:
            transformer[by_source[f["held_out"]]] = f["proba"]
            threshold[by_source[f["held_out"]]] = f["threshold"]
        routed = tfidf >= CASCADE_LOW
        # the scorer's rule (cascade_blend "mean"): in the band, the mean of both stages
        cascade = np.where(routed, (tfidf + transformer) / 2, tfidf) >= threshold
        alone = routed & (transformer >= threshold)  # cascade_blend "transformer"
        sub = {s: by_source[s] for s in covered}
        results[f"transformer {variant}"] = _scores(
            y[idx],
            (transformer >= threshold)[idx],
            w[idx],
            _reindex(sub, idx),
            per_source,
            f"transformer {variant}",
        )
        results[f"cascade {variant}"] = _scores(
            y[idx], cascade[idx], w[idx], _reindex(sub, idx), per_source, f"cascade {variant}"
        )
        results[f"cascade {variant}, transformer alone in the band"] = _scores(
            y[idx], alone[idx], w[idx], _reindex(sub, idx), {}, "x"
        )
        results[f"cascade {variant}"]["routed_share"] = round(
            float(w[idx][routed[idx]].sum() / w[idx].sum()), 4
        )
        if len(covered) < len(by_source):
            results[f"tfidf on the same {len(covered)} sources"] = _scores(
                y[idx], (tfidf >= 0.5)[idx], w[idx], _reindex(sub, idx), {}, "x"
            )
        runs[variant] = {
            "folds": len(folds),
            "device": folds[0]["device"],
            "precision": folds[0]["precision"],
            "train_seconds_total": round(sum(f["train_seconds"] for f in folds), 1),
            "train_rows_per_fold": int(np.mean([f["train_rows"] for f in folds])),
            "epochs_mean": round(float(np.mean([f["epochs"] for f in folds])), 2),
            "score_rows_per_s_median": float(np.median([f["score_rows_per_s"] for f in folds])),
        }
    table = _table(per_source)
    worst = {
        name: sorted(((s, m) for s, m in per.items()), key=lambda x: x[1])[:4]
        for name, per in per_source.items()
    }
    markdown = (
        "# LOOK/SKIP on held-out sources: TF-IDF, the fine-tuned transformer, the cascade\n\n"
        f"{len(rows)} distinct (source, shape, label) rows of {len(by_source)} sources, "
        "leave-one-source-out; F1 of LOOK, pooled over held-out lines (each row weighted by "
        "its lines). Thresholds: the TF-IDF model's 0.5; the transformer's 0.5 (class-balanced "
        "training), or in the `-dev-threshold` variants the one with the best F1 on the fold's "
        f"two dev sources; cascade band: TF-IDF probability >= {CASCADE_LOW}, where the cascade's "
        "probability is the mean of both stages' (the default) or the transformer's alone. "
        "Folds trained on "
        "the GPU machine of `line_transformer_folds/gpu_machine.txt`.\n\n"
        + _frame(results)
        + "\n\nTraining runs:\n\n"
        + _frame(runs)
        + "\n\nPer held-out source, LOOK F1:\n\n"
        + table
        + "\n\nWorst sources: "
        + "; ".join(f"{n}: " + ", ".join(f"{s} {m:.2f}" for s, m in v) for n, v in worst.items())
        + "\n"
    )
    write_results(
        "line_transformer_quality",
        {"results": results, "runs": runs, "per_source": per_source},
        markdown,
    )


def _reindex(sub: dict[str, list[int]], idx: np.ndarray) -> dict[str, list[int]]:
    position = {int(j): k for k, j in enumerate(idx)}
    return {s: [position[i] for i in v] for s, v in sub.items()}


def _scores(y, pred, w, by_source, per_source, name) -> dict:
    pooled = weighted_f1(y, pred.astype(float), w, 0.5)
    per = {
        s: weighted_f1(y[i], pred[i].astype(float), w[i], 0.5)["f1"] for s, i in by_source.items()
    }
    if name != "x":
        per_source[name] = {s: round(v, 4) for s, v in per.items()}
    return {
        "f1": round(pooled["f1"], 4),
        "precision": round(pooled["precision"], 4),
        "recall": round(pooled["recall"], 4),
        "macro_f1_over_sources": round(float(np.mean(list(per.values()))), 4),
        "sources_below_0.5": sum(v < 0.5 for v in per.values()),
    }


def _frame(results: dict) -> str:
    import pandas as pd

    return pd.DataFrame(results).T.rename_axis("model").reset_index().to_markdown(index=False)


def _table(per_source: dict) -> str:
    import pandas as pd

    return pd.DataFrame(per_source).rename_axis("source").reset_index().to_markdown(index=False)


def speed(args) -> None:
    """Training rows/s and scoring rows/s of the base model on this machine's CPU."""
    rows = json.loads(ROWS.read_text())["rows"]
    rng = np.random.default_rng(0)
    sample = [rows[i] for i in rng.permutation(len(rows))[: args.rows]]
    half = len(sample) // 2
    params = {
        "base_model": args.base_model,
        "max_epochs": 1,
        "batch_size": 32,
        "device": args.device,
        "checkpoint_every": 100_000,
    }
    folder = BENCH / "speed"
    shutil.rmtree(folder, ignore_errors=True)
    rates = []
    started = time.perf_counter()
    result = train(
        {"train": sample[:half], "dev": sample[half:]},
        params,
        folder,
        lambda step, total, **m: rates.append(m["rows_per_s"]) if "rows_per_s" in m else None,
    )
    seconds = time.perf_counter() - started
    encoder = Encoder.from_folder(folder / "model", args.device, 128, folder / "tokenizer")
    encoder.precision = "auto"
    texts = [message_of(r["shape"]) for r in rows[: args.rows * 2]]
    t0 = time.perf_counter()
    encoder.probabilities(texts, 128)
    score = time.perf_counter() - t0
    measured = {
        "device": result.manifest.extra["device"],
        "threads": os.cpu_count(),
        "train_rows": half,
        "train_seconds_one_epoch_with_export": round(seconds, 1),
        "train_rows_per_s_in_the_loop": round(rates[-1], 1),
        "score_rows_per_s": round(len(texts) / score, 1),
    }
    print(json.dumps(measured))
    if args.device == "cpu":
        from benchmarks._common import write_results

        write_results(
            "line_transformer_speed_cpu",
            measured,
            "# all-MiniLM-L6-v2 fine-tuning and scoring speed on this machine's CPU\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in measured.items())
            + "\n",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("prepare")
    t = sub.add_parser("train")
    t.add_argument("--variant", default="message-128", choices=sorted(VARIANTS))
    t.add_argument("--device", default="auto")
    t.add_argument("--base-model", default="")
    t.add_argument("--out", default=str(BENCH / "folds.jsonl"))
    t.add_argument("--folds", type=int, default=0, help="only the first N held-out sources")
    t.add_argument("--shard", default="0/1", help="i/n: every n-th held-out source from i")
    t.add_argument("--threshold-from-dev", action="store_true")
    t.add_argument("--max-epochs", type=int, default=10)
    t.add_argument("--patience", type=int, default=3)
    r = sub.add_parser("report")
    r.add_argument("paths", nargs="*", default=[str(BENCH / "folds.jsonl")])
    s = sub.add_parser("speed")
    s.add_argument("--device", default="cpu")
    s.add_argument("--base-model", default="")
    s.add_argument("--rows", type=int, default=128)
    args = parser.parse_args()
    if args.step == "prepare":
        prepare()
    elif args.step == "train":
        train_folds(args)
    elif args.step == "report":
        report(args.paths)
    else:
        speed(args)


if __name__ == "__main__":
    main()
