"""Every line of a source scored by the line champion, whichever family it is."""

import time
import warnings

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from logfit_dagster.assets._common import on_new_data, preview, streamed
from logfit_dagster.core.errors import ModelFileError
from logfit_dagster.core.models.base import ModelArtifact
from logfit_dagster.core.tables import StoredTable
from logfit_dagster.partitions import log_source_partitions

# A single-run backfill is what this asset needs; Dagster marks the parameter beta and would
# say so on every load of the definitions, to every user, who can do nothing about it.
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset`")


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="models",
    code_version="2",
    automation_condition=on_new_data(),
    kinds={"parquet"},
    ins={"raw_logs": streamed(dagster_type=dg.Any)},
    # Scoring is cheap and loading the champion is not free: a backfill over every source is
    # one run that loads the model once.
    backfill_policy=dg.BackfillPolicy.single_run(),
)
def scored_lines(context: dg.AssetExecutionContext, raw_logs, line_champion: ModelArtifact):
    """Every line of a source with the line champion's LOOK probability and label.

    One partition gives one frame; a single-run backfill gives ``raw_logs`` and returns a dict
    of frames by source, and the champion is loaded once for all of them. The raw lines are read
    in batches: only the scores and the few top lines' text are held.
    """
    from logfit_dagster.core.models.base import LINE_FAMILIES

    keys = list(context.partition_keys)
    tables = raw_logs if isinstance(raw_logs, dict) else {keys[0]: raw_logs}
    missing = [key for key in keys if key not in tables]
    if missing:
        raise dg.Failure(
            f"scored_lines: raw_logs is not materialized for {', '.join(missing)}; "
            "materialize raw_logs for these sources first"
        )
    path = line_champion.folder
    try:
        scorer = line_champion.scorer(LINE_FAMILIES)
    except ModelFileError as exc:
        raise dg.Failure(f"scored_lines: {exc}") from exc
    started = time.perf_counter()
    tops: dict[str, pd.DataFrame] = {}
    frames = {}
    for key in keys:
        frames[key], tops[key] = _score_lines(scorer, tables[key])
    seconds = time.perf_counter() - started
    lines = sum(len(f) for f in frames.values())
    look = {key: frame["label"] == "LOOK" for key, frame in frames.items()}
    look_lines = sum(int(mask.sum()) for mask in look.values())
    metadata = {
        "lines": lines,
        "look_lines": look_lines,
        "look_rate": dg.MetadataValue.float(round(look_lines / lines, 4) if lines else 0.0),
        "lines_per_second": dg.MetadataValue.float(float(round(lines / max(seconds, 1e-9)))),
        "model": dg.MetadataValue.path(str(path)),
        "model_family": line_champion.family,
        "model_cv_f1": dg.MetadataValue.float(
            float(getattr(scorer, "spec", {}).get("cv", {}).get("f1", float("nan")))
        ),
    }
    if hasattr(scorer, "routed_lines") and scorer.lines_scored:
        metadata["share_of_lines_to_transformer"] = dg.MetadataValue.float(
            round(scorer.routed_lines / scorer.lines_scored, 4)
        )
    if len(keys) == 1:
        key = keys[0]
        metadata["top_look"] = preview(tops[key])
        context.add_output_metadata(metadata)
        return frames[key]
    metadata["sources"] = preview(
        pd.DataFrame(
            {
                "source": keys,
                "lines": [len(frames[k]) for k in keys],
                "look_lines": [int(look[k].sum()) for k in keys],
            }
        ),
        rows=len(keys),
    )
    context.add_output_metadata(metadata)
    return frames


def _score_lines(scorer, raw_logs: StoredTable, top: int = 8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each line's probability and label, batch by batch; and the ``top`` LOOK lines by
    probability with their text."""
    parts, tops = [], []
    for batch in raw_logs.batches(["line_number", "raw"]):
        probability = scorer.score_lines(batch.column("raw"))
        part = pd.DataFrame(
            {
                "line_number": batch.column("line_number").to_numpy(),
                "probability": probability,
                # two values: a categorical, not a Python string per line
                "label": pd.Categorical.from_codes(
                    (probability >= scorer.threshold).astype(np.int8), categories=["SKIP", "LOOK"]
                ),
            }
        )
        parts.append(part)
        best = part[part["label"] == "LOOK"].nlargest(top, "probability")
        text = batch.column("raw").take(pa.array(best.index.to_numpy(), pa.int64()))
        tops.append(best.assign(raw=text.to_pylist()))
    if not parts:
        empty = pd.DataFrame({"line_number": [], "probability": [], "label": []})
        return empty, empty.assign(raw=[])
    best = pd.concat(tops, ignore_index=True).nlargest(top, "probability")
    return pd.concat(parts, ignore_index=True), best.reset_index(drop=True)
