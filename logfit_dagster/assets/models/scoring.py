"""Every line of a source scored by the line champion, whichever family it is."""

import time
import warnings
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pandas as pd
import pyarrow as pa

from logfit_dagster.assets._common import on_new_data, preview, streamed
from logfit_dagster.core.errors import ModelFileError
from logfit_dagster.core.models.base import ModelArtifact
from logfit_dagster.core.tables import StoredTable, TableStream
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

    One partition gives one table; a single-run backfill gives ``raw_logs`` and returns a dict
    of tables by source, and the champion is loaded once for all of them. Lines are read, scored
    and written batch by batch: memory stays flat in the source's length; only the counts and
    the few top lines' text are held, and become the metadata once every line is written.
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
    try:
        scorer = line_champion.scorer(LINE_FAMILIES)
    except ModelFileError as exc:
        raise dg.Failure(f"scored_lines: {exc}") from exc
    tally = _Tally(keys, scorer, line_champion)
    streams = {
        key: TableStream(
            _scored_batches(scorer, tables[key], key, tally), SCORED_SCHEMA, tally.metadata
        )
        for key in keys
    }
    return streams[keys[0]] if len(keys) == 1 else streams


SCORED_SCHEMA = pa.schema(
    [
        ("line_number", pa.int64()),
        ("probability", pa.float64()),
        # two values: a dictionary, not a string per line
        ("label", pa.dictionary(pa.int8(), pa.string())),
    ]
)
_LABELS = pa.array(["SKIP", "LOOK"])


class _Tally:
    """What the metadata says, counted as each source's lines are scored: the storage asks for
    it after each source's table is written, and the last answer covers every source."""

    def __init__(self, keys: list[str], scorer, champion: ModelArtifact, top: int = 8):
        self.keys, self.scorer, self.champion, self.top = keys, scorer, champion, top
        self.lines = dict.fromkeys(keys, 0)
        self.look = dict.fromkeys(keys, 0)
        self.tops = {key: _no_top() for key in keys}
        self.seconds = 0.0

    def add(self, key: str, line_numbers: np.ndarray, probability: np.ndarray, raw) -> None:
        look = probability >= self.scorer.threshold
        self.lines[key] += len(probability)
        self.look[key] += int(look.sum())
        if look.any():
            best = np.flatnonzero(look)[np.argsort(-probability[look], kind="stable")[: self.top]]
            found = pd.DataFrame(
                {
                    "line_number": line_numbers[best],
                    "probability": probability[best],
                    "label": "LOOK",
                    "raw": raw.take(pa.array(best, pa.int64())).to_pylist(),
                }
            )
            both = pd.concat([self.tops[key], found], ignore_index=True)
            self.tops[key] = both.nlargest(self.top, "probability").reset_index(drop=True)

    def metadata(self) -> dict:
        lines, look_lines = sum(self.lines.values()), sum(self.look.values())
        scorer = self.scorer
        metadata = {
            "lines": lines,
            "look_lines": look_lines,
            "look_rate": dg.MetadataValue.float(round(look_lines / lines, 4) if lines else 0.0),
            "lines_per_second": dg.MetadataValue.float(
                float(round(lines / max(self.seconds, 1e-9)))
            ),
            "model": dg.MetadataValue.path(str(self.champion.folder)),
            "model_family": self.champion.family,
            "model_cv_f1": dg.MetadataValue.float(
                float(getattr(scorer, "spec", {}).get("cv", {}).get("f1", float("nan")))
            ),
        }
        if hasattr(scorer, "routed_lines") and scorer.lines_scored:
            metadata["share_of_lines_to_transformer"] = dg.MetadataValue.float(
                round(scorer.routed_lines / scorer.lines_scored, 4)
            )
        if len(self.keys) == 1:
            metadata["top_look"] = preview(self.tops[self.keys[0]])
        else:
            metadata["sources"] = preview(
                pd.DataFrame(
                    {
                        "source": self.keys,
                        "lines": [self.lines[k] for k in self.keys],
                        "look_lines": [self.look[k] for k in self.keys],
                    }
                ),
                rows=len(self.keys),
            )
        return metadata


def _no_top() -> pd.DataFrame:
    return pd.DataFrame({"line_number": [], "probability": [], "label": [], "raw": []})


def _scored_batches(scorer, raw_logs: StoredTable, key: str, tally: _Tally) -> Iterator[pa.Table]:
    """Each batch of lines with its probabilities and labels, counted in ``tally``; the seconds
    are reading and scoring, not writing."""
    batches = iter(raw_logs.batches(["line_number", "raw"]))
    while True:
        started = time.perf_counter()
        batch = next(batches, None)
        if batch is None:
            return
        raw = batch.column("raw")
        probability = np.asarray(scorer.score_lines(raw), dtype=np.float64)
        tally.seconds += time.perf_counter() - started
        line_numbers = batch.column("line_number").to_numpy()
        tally.add(key, line_numbers, probability, raw)
        codes = pa.array((probability >= scorer.threshold).astype(np.int8))
        yield pa.table(
            {
                "line_number": pa.array(line_numbers, pa.int64()),
                "probability": pa.array(probability, pa.float64()),
                "label": pa.DictionaryArray.from_arrays(codes, _LABELS),
            },
            schema=SCORED_SCHEMA,
        )
