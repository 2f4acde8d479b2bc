"""Scoring throughput of ``logfit classify``: real files and a 1M-line synthetic source.

Besides each real file: the 16 Loghub 2k samples in one file (``loghub16_mixed.log``), and the
same file with every number replaced by a random one of random length (1 to 11 digits;
``loghub16_unique_heavy.log``), where few lines repeat; both also through a plain scikit-learn
pipeline (word and char TF-IDF on the raw lines, logistic regression) trained on the same
labels, in the same run, as the baseline.

A model is trained on the recorded Claude labels (the asset's default parameters), exported to
JSON, and loaded as ``logfit classify`` loads it. Each file is scored end to end as the command
does (read, shape column-wise, score each distinct shape once, count LOOK), writing LOOK lines to
/dev/null; the best of three runs is reported, with a fresh scorer per run (nothing cached).

    python benchmarks/classify_throughput.py -> benchmarks/results/classify_throughput.{json,md}

Then whole processes, as a user runs them: ``logfit classify FILE --model FOLDER`` (a line_tfidf
folder trained on the same labels, loaded from its Arrow arrays) against a Python process that
loads a fitted scikit-learn pipeline and scores every line of the file, for two pipelines: the
plain one a user would write (``line_protocol.baseline_pipeline``: ``TfidfVectorizer(analyzer=
"char_wb", ngram_range=(3, 5))`` and a balanced logistic regression) and the heavier word + char one above. CPU seconds (user + system
of the child process, best of 3), on the 16 Loghub samples one process each and on the mixed
file; and the seconds from the start of ``logfit classify`` to its first LOOK line on stdout.
The pipelines are stored with joblib in the benchmark's own temporary folder (a comparator made
here, never a file a user hands logfit).

The cascade (TF-IDF, then the fine-tuned all-MiniLM-L6-v2 on the shapes in the TF-IDF band) is
measured once over the real files pooled, as ``scored_lines`` scores every source in one run
with one scorer. Its encoder is fine-tuned briefly (256 rows, one epoch) on this CPU: its speed,
not its quality, is measured here (quality: ``line_transformer_quality.py``).
"""

import math
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import recorded_labels, shared_data, write_results  # noqa: E402
from logfit_dagster.core.classify import classify_file  # noqa: E402
from logfit_dagster.core.line_model import (  # noqa: E402
    LineModelParams,
    LineScorer,
    export_model,
    fit,
    training_rows,
)
from logfit_dagster.core.synthetic import generate  # noqa: E402


def mixed_files(data: Path, folder: Path) -> list[Path]:
    """The 16 Loghub samples in one file, and the same with every number randomised."""
    lines = []
    for path in sorted((data / "loghub-2k").glob("*/*_2k.log")):
        lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    rng = random.Random(0)
    # digit runs, not the 0 of a 0x prefix: ids stay ids, numbers change value and length
    unique = [
        re.sub(r"\d+(?![xX])", lambda m: str(rng.randrange(10 ** rng.randrange(1, 12))), line)
        for line in lines
    ]
    mixed, heavy = folder / "loghub16_mixed.log", folder / "loghub16_unique_heavy.log"
    mixed.write_text("\n".join(lines) + "\n")
    heavy.write_text("\n".join(unique) + "\n")
    return [mixed, heavy]


def word_char_pipeline():
    """The heavier comparator: word (1-3) and char (3-6) TF-IDF, logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    return make_pipeline(
        make_union(
            TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 3), max_features=50_000),
            TfidfVectorizer(
                analyzer="char", ngram_range=(3, 6), sublinear_tf=True, max_features=100_000
            ),
        ),
        LogisticRegression(solver="liblinear"),
    )


def sklearn_baseline(lines: pd.DataFrame, paths: list[Path]) -> list[dict]:
    """Lines/s of a plain scikit-learn pipeline scoring every line (best of 3)."""
    pipeline = word_char_pipeline()
    pipeline.fit(lines["raw"], lines["label"] == "LOOK")
    rows = []
    for path in paths:
        text = path.read_text().splitlines()
        best = math.inf
        for _ in range(3):
            started = time.perf_counter()
            pipeline.predict_proba(text)
            best = min(best, time.perf_counter() - started)
        rows.append(
            {
                "file": path.name,
                "lines": len(text),
                "sklearn_lines_per_second": round(len(text) / best),
            }
        )
    return rows


def real_files(data: Path | None = None) -> list[Path]:
    """The real files scored: the 16 Loghub 2k samples, two HDFS_v1 excerpts and the raw
    files of the recorded label sets."""
    data = data or shared_data()
    files = sorted((data / "loghub-2k").glob("*/*_2k.log"))
    files += [
        data / "hdfs" / "raw" / "HDFS_20000.log",
        data / "hdfs" / "raw" / "HDFS_5k_sampled_blocks.log",
    ]
    return files + sorted((data / "llm-labels").glob("*_2k.log"))


def main() -> None:
    data = shared_data()
    lines = recorded_labels()
    spec = export_model(fit(training_rows(lines), LineModelParams(C=1.0)))
    files = real_files(data)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = Path(tmp) / "synth_hdfs_1m.log"
        log = generate("hdfs", 1_000_000, seed=7)
        synthetic.write_text("\n".join(log.lines) + "\n")
        mixed = mixed_files(data, Path(tmp))
        baseline = sklearn_baseline(lines, mixed)
        for path in [*files, *mixed, synthetic]:
            best = None
            for _ in range(3):
                with open(os.devnull, "w") as sink:
                    stats = classify_file(path, LineScorer(spec), look_out=sink)
                best = stats if best is None or stats.seconds < best.seconds else best
            rows.append(
                {
                    "file": path.name,
                    "lines": best.lines,
                    "distinct_shapes": best.distinct_shapes,
                    "look": best.look,
                    "seconds": round(best.seconds, 4),
                    "lines_per_second": round(best.lines_per_second),
                }
            )
    with tempfile.TemporaryDirectory() as tmp:
        whole = whole_process(lines, data, Path(tmp))
    cascade = _cascade(lines, spec, files)
    table = pd.DataFrame(rows)
    versus = table.merge(pd.DataFrame(baseline), on=["file", "lines"])
    versus["times_sklearn"] = (
        versus["lines_per_second"] / versus["sklearn_lines_per_second"]
    ).round(1)
    real = table[~table["file"].isin(["synth_hdfs_1m.log", *(p.name for p in mixed)])]
    summary = {
        "real_files": len(real),
        "real_lines": int(real["lines"].sum()),
        "real_lines_per_second": round(real["lines"].sum() / real["seconds"].sum()),
        "synthetic_1m_lines_per_second": int(table.iloc[-1]["lines_per_second"]),
        **{
            f"{row['file'].removesuffix('.log')}_times_sklearn": row["times_sklearn"]
            for row in versus.to_dict("records")
        },
        **{f"cascade_{k}": v for k, v in cascade.items()},
    }
    markdown = (
        "# logfit classify throughput (best of 3, one process, this machine)\n\n"
        + table.to_markdown(index=False)
        + "\n\nAgainst a plain scikit-learn pipeline scoring every line (best of 3):\n\n"
        + versus[
            [
                "file",
                "lines",
                "distinct_shapes",
                "lines_per_second",
                "sklearn_lines_per_second",
                "times_sklearn",
            ]
        ].to_markdown(index=False)
        + "\n\n"
        + "\n".join(f"- {k}: {v:,}" for k, v in summary.items())
        + "\n\n## Whole processes: CPU seconds (user + system, best of 3)\n\n"
        + pd.DataFrame(whole["rows"]).to_markdown(index=False)
        + "\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in whole["summary"].items())
        + "\n\nThe cascade's figures are one pass over the real files pooled, with one scorer "
        "(the TF-IDF stage on every shape, the encoder on the band at or above 0.05).\n"
    )
    write_results(
        "classify_throughput",
        {"files": rows, "sklearn_baseline": baseline, "summary": summary, "whole_process": whole},
        markdown,
    )


PLAIN_CHILD = """
import sys, joblib
pipeline = joblib.load(sys.argv[1])
with open(sys.argv[2], encoding="utf-8", errors="replace") as handle:
    lines = handle.read().splitlines()
look = pipeline.predict_proba(lines)[:, 1] >= 0.5
sys.stdout.write("".join(f"{i + 1}\\t{line}\\n" for i, line in enumerate(lines) if look[i]))
"""


def _cpu(command: list[str]) -> tuple[float, float | None]:
    """CPU seconds (user + system) of a child process, and the seconds to its first stdout line."""
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = process.stdout.readline()
    to_first = time.perf_counter() - started if first else None
    process.stdout.read()
    if process.wait() != 0:
        raise SystemExit(f"{command} failed")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), to_first


def whole_process(lines: pd.DataFrame, data: Path, tmp: Path) -> dict:
    """``logfit classify`` and the two scikit-learn pipelines, each a whole process per file."""
    import joblib

    from logfit_dagster.core.line_protocol import baseline_pipeline
    from logfit_dagster.core.models import base

    base.train("line_tfidf", lines, {"C": [1.0]}, tmp / "model")
    y = lines["label"] == "LOOK"
    # the plain pipeline is the project's own baseline, the one every line model is reported by
    plain = baseline_pipeline().fit(lines["raw"], y)
    heavy = word_char_pipeline().fit(lines["raw"], y)
    joblib.dump(plain, tmp / "plain.joblib")
    joblib.dump(heavy, tmp / "heavy.joblib")
    logfit = str(Path(sys.executable).parent / "logfit")
    commands = {
        "logfit classify": lambda f: [logfit, "classify", str(f), "--model", str(tmp / "model")],
        "plain char n-gram pipeline": lambda f: [
            sys.executable,
            "-c",
            PLAIN_CHILD,
            str(tmp / "plain.joblib"),
            str(f),
        ],
        "word + char pipeline": lambda f: [
            sys.executable,
            "-c",
            PLAIN_CHILD,
            str(tmp / "heavy.joblib"),
            str(f),
        ],
    }
    singles = sorted((data / "loghub-2k").glob("*/*_2k.log"))
    mixed = mixed_files(data, tmp)
    groups = {
        "16 Loghub samples, a process each": singles,
        mixed[0].name: [mixed[0]],
        mixed[1].name: [mixed[1]],
    }
    rows, first_line = [], []
    for group, paths in groups.items():
        row = {"files": group, "lines": sum(len(p.read_text().splitlines()) for p in paths)}
        for name, command in commands.items():
            best = math.inf
            for _ in range(3):
                total = 0.0
                for path in paths:
                    cpu, to_first = _cpu(command(path))
                    total += cpu
                    if name == "logfit classify" and to_first is not None:
                        first_line.append(to_first)
                best = min(best, total)
            row[f"{name} CPU s"] = round(best, 2)
        row["plain / logfit"] = round(
            row["plain char n-gram pipeline CPU s"] / row["logfit classify CPU s"], 1
        )
        row["word+char / logfit"] = round(
            row["word + char pipeline CPU s"] / row["logfit classify CPU s"], 1
        )
        rows.append(row)
    return {
        "rows": rows,
        "summary": {
            "seconds to the first LOOK line, logfit classify (median over every run)": round(
                float(np.median(first_line)), 3
            ),
            "slowest first LOOK line, s": round(float(max(first_line)), 3),
        },
    }


def timed_pass(scorer, files: list[Path]) -> tuple[int, float]:
    """One pass of ``scorer`` over every file, batch by batch: lines scored and seconds."""
    from logfit_dagster.core.reading import iter_line_batches

    count = 0
    started = time.perf_counter()
    for path in files:
        for batch in iter_line_batches(path):
            scorer.score_lines(batch.lines)
            count += len(batch.lines)
    return count, time.perf_counter() - started


def _cascade(lines, spec, files) -> dict:
    """Lines/s of the cascade over every real file, one scorer for all (its cache shared)."""
    from logfit_dagster.core.models import base
    from logfit_dagster.core.models.line_transformer import prepare_data

    data = prepare_data(lines, None)
    data["train"] = data["train"] + data["dev"] + data["test"]
    data["dev"], data["test"] = [], []
    data["tfidf"] = spec
    with tempfile.TemporaryDirectory() as tmp:
        base.train(
            "line_transformer",
            data,
            {"max_rows": 256, "max_epochs": 1, "device": "cpu", "checkpoint_every": 10_000},
            Path(tmp) / "cascade",
        )
        scorer = base.load(Path(tmp) / "cascade")
        count, seconds = timed_pass(scorer, files)
    return {
        "lines": count,
        "seconds": round(seconds, 2),
        "lines_per_second": round(count / seconds),
        "share_of_lines_to_transformer": round(scorer.routed_lines / scorer.lines_scored, 4),
        "shapes_to_transformer": len(scorer._cache),
    }


if __name__ == "__main__":
    main()
