"""How far the offline RuleLabeler stands from Claude: agreement with the recorded Claude labels.

For each of the 20 sources in ../shared/data/llm-labels, the rule labels of the same raw lines
are compared with Claude's (claude-haiku-4-5, 50-line windows): precision, recall and F1 of
LOOK taking Claude as the reference, Cohen's kappa, and the LOOK rates of both.

    python benchmarks/rule_labeler_agreement.py -> benchmarks/results/rule_labeler_agreement.{json,md}
"""

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import shared_data, write_results  # noqa: E402
from logfit_dagster.core.labeling.offline import rule_label  # noqa: E402
from logfit_dagster.core.labeling.quality import agreement  # noqa: E402


def main() -> None:
    rows = []
    all_pred, all_ref = [], []
    for path in sorted((shared_data() / "llm-labels").glob("*.jsonl")):
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        pred = pd.Series([1 if rule_label(r["raw_line"])[0] == "LOOK" else 0 for r in records])
        ref = pd.Series([1 if r["label"] == "LOOK" else 0 for r in records])
        all_pred.append(pred)
        all_ref.append(ref)
        stats = agreement(pred, ref)
        rows.append(
            {
                "source": path.stem,
                "lines": len(records),
                "claude_look_rate": round(float(ref.mean()), 3),
                "rule_look_rate": round(float(pred.mean()), 3),
                **{k: round(float(stats[k]), 3) for k in ("precision", "recall", "f1", "kappa")},
            }
        )
    table = pd.DataFrame(rows)
    pooled = agreement(
        pd.concat(all_pred, ignore_index=True), pd.concat(all_ref, ignore_index=True)
    )
    summary = {
        "sources": len(table),
        "lines": int(table["lines"].sum()),
        "macro_f1": round(float(table["f1"].mean()), 3),
        "macro_kappa": round(float(table["kappa"].mean()), 3),
        "pooled_precision": round(pooled["precision"], 3),
        "pooled_recall": round(pooled["recall"], 3),
        "pooled_f1": round(pooled["f1"], 3),
        "pooled_kappa": round(pooled["kappa"], 3),
    }
    markdown = (
        "# RuleLabeler vs recorded Claude labels (LOOK F1, Claude as reference)\n\n"
        + table.astype(object).fillna("n/a").to_markdown(index=False)
        + "\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in summary.items())
        + "\n"
    )
    write_results("rule_labeler_agreement", {"per_source": rows, "summary": summary}, markdown)


if __name__ == "__main__":
    main()
