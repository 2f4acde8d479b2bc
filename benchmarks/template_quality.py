"""Grouping accuracy of parsed_logs' templates against Loghub's ground truth, 16 systems.

Grouping accuracy (Zhu et al., ICSE-SEIP'19): the share of lines whose template group holds
exactly the lines of their ground-truth event. Scored against the original Loghub EventIds and,
where present, Loghub-2.0's corrected ones.

    python benchmarks/template_quality.py   ->  benchmarks/results/template_quality.{json,md}
"""

import sys

import pandas as pd
import pyarrow as pa

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from benchmarks._common import shared_data, write_results  # noqa: E402
from logfit_dagster.core.formats import LOGHUB_FORMATS, get_line_format  # noqa: E402
from logfit_dagster.core.parsing import parse_lines  # noqa: E402
from logfit_dagster.core.reading import read_lines  # noqa: E402
from logfit_dagster.core.templates import TemplateMiner, profile_for  # noqa: E402

# Drain's published grouping accuracy on the same 2k samples (Zhu et al. 2019).
PUBLISHED_DRAIN = {
    "HDFS": 0.998,
    "Hadoop": 0.948,
    "Spark": 0.920,
    "Zookeeper": 0.967,
    "BGL": 0.963,
    "HPC": 0.887,
    "Thunderbird": 0.955,
    "Windows": 0.997,
    "Linux": 0.690,
    "Android": 0.911,
    "HealthApp": 0.780,
    "Apache": 1.000,
    "Proxifier": 0.527,
    "OpenSSH": 0.788,
    "OpenStack": 0.733,
    "Mac": 0.787,
}


def grouping_accuracy(predicted, truth) -> float:
    frame = pd.DataFrame({"p": list(predicted), "t": list(truth)})
    truth_sizes = frame.groupby("t").size()
    correct = 0
    for _, group in frame.groupby("p"):
        events = group["t"].unique()
        if len(events) == 1 and truth_sizes[events[0]] == len(group):
            correct += len(group)
    return correct / len(frame)


def main() -> None:
    data = shared_data()
    rows = []
    for system in LOGHUB_FORMATS:
        lines, _ = read_lines(data / "loghub-2k" / system / f"{system}_2k.log")
        parsed = parse_lines(pa.array(lines), get_line_format(system))
        mined = TemplateMiner(profile_for(system)).mine(parsed["content"])
        truth = pd.read_csv(data / "loghub-2k" / system / f"{system}_2k.log_structured.csv")[
            "EventId"
        ]
        corrected_path = (
            data / "loghub2-2k-corrected" / system / f"{system}_2k.log_structured_corrected.csv"
        )
        corrected = (
            grouping_accuracy(mined.template_ids, pd.read_csv(corrected_path)["EventId"])
            if corrected_path.exists()
            else None
        )
        rows.append(
            {
                "system": system,
                "lines": len(lines),
                "templates": len(mined.templates),
                "ga_loghub": round(grouping_accuracy(mined.template_ids, truth), 4),
                "ga_corrected": round(corrected, 4) if corrected is not None else None,
                "published_drain": PUBLISHED_DRAIN[system],
            }
        )
    table = pd.DataFrame(rows)
    mean = {
        "ga_loghub": round(table["ga_loghub"].mean(), 4),
        "ga_corrected": round(table["ga_corrected"].dropna().mean(), 4),
        "published_drain": round(table["published_drain"].mean(), 4),
    }
    markdown = (
        "# Template grouping accuracy (Loghub 2k, 16 systems)\n\n"
        + table.to_markdown(index=False)
        + f"\n\nmean: ours {mean['ga_loghub']} (Loghub ground truth), {mean['ga_corrected']} "
        f"(corrected, 14 systems); published Drain {mean['published_drain']}\n"
    )
    write_results("template_quality", {"rows": rows, "mean": mean}, markdown)


if __name__ == "__main__":
    main()
