"""Tokens per LLM session example in each prompt form, on the default sources.

``logfit materialize --job ingest_job`` on the embedded default registry (in a temporary data
folder), then each source's labelled sessions as ``llm_session_examples`` makes them, in the
``lines`` form (every line as written) and the ``templates`` form (events in order, a run of one
template as one line with xN, rare events marked [rare] and as written): estimated tokens per example (mean,
median, 95th percentile, largest), and how many sessions the 2,000-token budget cut.

    python benchmarks/llm_session_prompts.py -> benchmarks/results/llm_session_prompts.{json,md}
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import ROOT, write_results  # noqa: E402


def main() -> None:
    import numpy as np
    import pandas as pd

    from logfit_dagster.core.llm_sessions import ExampleParams, build_examples

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "LOGFIT_DATA_DIR": str(Path(tmp) / "data")}
        env["LOGFIT_SOURCES"] = str(ROOT / "sources.yaml")
        logfit = str(Path(sys.executable).parent / "logfit")
        subprocess.run(
            [logfit, "materialize", "--job", "ingest_job"], env=env, check=True, cwd=ROOT
        )
        assets = Path(tmp) / "data" / "assets"
        for path in sorted((assets / "sessions").glob("*.parquet")):
            source = path.stem
            sessions = pd.read_parquet(path)
            splits = pd.read_parquet(assets / "dataset_splits" / f"{source}.parquet")
            labels_path = assets / "ground_truth_labels" / source / "sessions.parquet"
            if not labels_path.exists():
                continue
            labels = pd.read_parquet(labels_path)
            for form in ("lines", "templates"):
                examples, stats = build_examples(
                    sessions, labels, splits, ExampleParams(form=form)
                )
                tokens = examples["est_tokens"].to_numpy()
                rows.append(
                    {
                        "source": source,
                        "form": form,
                        "examples": len(examples),
                        "mean tokens": round(float(tokens.mean()), 1),
                        "median": float(np.median(tokens)),
                        "p95": float(np.percentile(tokens, 95)),
                        "largest": int(tokens.max()),
                        "cut to the budget": stats["sessions_cut_to_budget"],
                    }
                )
    table = pd.DataFrame(rows)
    markdown = (
        "# Tokens per LLM session example, by prompt form (default sources)\n\n"
        "Estimated tokens (3 characters a token) of the system prompt and the session, per "
        "labelled session of each source; the budget is 2,000 tokens.\n\n"
        + table.to_markdown(index=False)
        + "\n"
    )
    write_results("llm_session_prompts", {"rows": rows}, markdown)


if __name__ == "__main__":
    main()
