"""Does int8 scoring change the cascade's held-out decisions? Leave-one-family-out folds as in
``cascade_routing.py`` (the encoder trained on at most 1,500 rows for at most 3 epochs), each
fold's held-out rows scored with the encoder in fp32 and in int8 (dynamic quantization, what
``score_precision: int8`` ships on a CPU); beside them, the export's own check (what
``score_precision: auto`` decided).

    python benchmarks/int8_scoring.py [FAMILY ...] -> benchmarks/results/int8_scoring.{json,md}
"""

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import machine, recorded_labels, write_results  # noqa: E402
from benchmarks.cascade_routing import TFIDF_PARAMS, f1, fold_params  # noqa: E402

BANDS = ((0.05, 1.0), (0.1, 0.9))


def fold(lines: pd.DataFrame, families: np.ndarray, family: str, args) -> dict:
    from logfit_dagster.core.models import base
    from logfit_dagster.core.models.line_transformer import (
        TransformerLineScorer,
        model_text,
        prepare_data,
    )

    held = families == family
    data = prepare_data(lines, TFIDF_PARAMS, test=sorted(lines.loc[held, "source"].unique()))
    params = fold_params(args)
    rows = data["test"]
    y = np.array([r["y"] for r in rows])
    w = np.array([float(r["weight"]) for r in rows])
    shapes = [r["shape"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        base.train("line_transformer", data, params, Path(tmp) / "m")
        manifest = base.read_manifest(Path(tmp) / "m")
        out = {
            "family": family,
            "train_seconds": round(time.perf_counter() - started),
            "auto_chose": manifest.extra["score_precision"],
            "check_max_abs_diff": manifest.extra.get("int8_max_abs_diff"),
            "check_flips": manifest.extra.get("int8_threshold_flips"),
            "check_rows": manifest.extra.get("int8_checked_rows"),
        }
        encoded = {}
        for precision in ("fp32", "int8"):
            extra = {**manifest.extra, "score_precision": precision}
            scorer = TransformerLineScorer.from_folder(
                Path(tmp) / "m", replace(manifest, extra=extra)
            )
            texts = [model_text(s, scorer.text) for s in shapes]
            encoded[precision] = scorer.encoder.probabilities(texts, 128)
            tfidf = scorer.tfidf.score_shapes(shapes)
            for low, high in BANDS:
                routed = (tfidf >= low) & (tfidf <= max(high, scorer.threshold))
                cascade = np.where(routed, (tfidf + encoded[precision]) / 2, tfidf)
                pred = (cascade >= scorer.threshold).astype(int)
                out[f"{precision} cascade {low}..{high}"] = f1(y, pred, w)["f1"]
            pred = (encoded[precision] >= scorer.threshold).astype(int)
            out[f"{precision} encoder alone"] = f1(y, pred, w)["f1"]
        out["held_out_max_abs_diff"] = float(np.abs(encoded["int8"] - encoded["fp32"]).max())
        out["held_out_rows_flipped"] = int(
            ((encoded["int8"] >= 0.5) != (encoded["fp32"] >= 0.5)).sum()
        )
        out["held_out_rows"] = len(rows)
    return out


def main() -> None:
    import torch

    from logfit_dagster.core.line_protocol import family_groups

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("families", nargs="*", default=["hpc_kernel", "servers_apps"])
    parser.add_argument("--max-rows", type=int, default=1500)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lines = recorded_labels()
    families = np.asarray(family_groups(lines["source"]))
    table = []
    for family in args.families:
        table.append(fold(lines, families, family, args))
        print(table[-1], flush=True)
    markdown = (
        "# int8 against fp32 scoring of the cascade's encoder, leave-one-family-out\n\n"
        f"{machine().get('cpus', '?')} CPUs; the encoder (all-MiniLM-L6-v2) trained per fold on "
        f"at most {args.max_rows} rows for at most {args.epochs} epochs. LOOK F1 pooled over "
        "the held-out family's rows weighted by their lines, at the threshold the model ships "
        "with; `check_*`: the export's check on training rows (`auto` keeps int8 only with no "
        "flip and no probability moved more than 0.02); `held_out_*`: the same comparison on "
        "the held-out rows.\n\n" + pd.DataFrame(table).set_index("family").T.to_markdown() + "\n"
    )
    write_results("int8_scoring", {"args": vars(args), "folds": table}, markdown)


if __name__ == "__main__":
    main()
