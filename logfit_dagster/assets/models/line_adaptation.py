"""The line champion adapted to one system with a few LLM answers (the ``uncertain`` plan).

Per source: the champion scores every line shape; the ``max_shapes`` shapes it is least sure
of, weighted by their lines, are asked of the labeler (each once, among its real neighbours;
shapes the label cache already answered, for any source, are not asked again); the answers
adapt a copy of the champion for that system (see :mod:`logfit_dagster.core.line_adaptation`).
The champion itself is never changed; ``logfit classify --model
data/models/line_adaptation/<source>`` scores with the adapted copy.

It reads the champion, and the champion is trained on every source's labels: so it is its own
asset, after the champion, not a plan of ``llm_labels`` (which the champion depends on).
"""

import dagster as dg
import pyarrow as pa
from pydantic import Field

from logfit_dagster.assets.labels import LLM_API_POOL, AskConfig
from logfit_dagster.assets.models._shared import family_folder
from logfit_dagster.core.errors import LogfitError
from logfit_dagster.core.models.base import ModelArtifact
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.resources.labelers import LabelerResource, scrub


class AdaptationConfig(AskConfig):
    """How many shapes to ask, how they are asked, and what a run may spend."""

    max_shapes: int = Field(
        default=50,
        description="At most this many line shapes are asked (those the champion is least sure "
        "of, weighted by their lines).",
    )
    max_cost_usd: float = Field(
        default=1.0, description="Largest estimated cost of one run; above it nothing is sent."
    )
    adapt_threshold: bool = Field(
        default=False,
        description="Also choose the source's threshold on the answered shapes. Off by default: "
        "on leave-one-family-out it cost pooled F1 (0.927 against 0.932 at 50 shapes, 0.886 "
        "against 0.901 at 10; benchmarks/line_active_adaptation.py).",
    )


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="models",
    code_version="1",
    kinds={"parquet"},
    io_manager_key="model_store",
    pool=LLM_API_POOL,
)
def line_adaptation(
    context: dg.AssetExecutionContext,
    config: AdaptationConfig,
    raw_logs: pa.Table,
    line_champion: ModelArtifact,
    labeler: LabelerResource,
) -> ModelArtifact:
    """The line champion adapted to this source with at most ``max_shapes`` LLM answers: the
    answered shapes take their answer (and, with ``adapt_threshold``, the threshold is chosen
    on them)."""
    from logfit_dagster.core.labeling.base import label_source
    from logfit_dagster.core.labeling.distinct import digest
    from logfit_dagster.core.line_adaptation import (
        adapt_threshold,
        ask_order,
        shape_table,
        write_adaptation,
    )
    from logfit_dagster.core.line_scorers import load_line_scorer

    source = context.partition_key
    lines = raw_logs.column("raw").to_pylist()
    champion = load_line_scorer(line_champion.folder)
    table, shape_index = shape_table(lines, champion.score_lines(lines), champion.max_chars)
    ranked = ask_order(table, champion.threshold)
    wanted = ranked.head(max(0, config.max_shapes))
    secrets = labeler.secrets()
    try:
        frame, stats = label_source(
            source,
            lines,
            labeler.build(config.model),
            cache=labeler.cache(),
            plan="distinct",
            log=context.log,
            shapes={digest(s) for s in wanted["shape"]},
            **config.ask_options(),
        )
    except LogfitError as exc:
        raise dg.Failure(description=scrub(str(exc), secrets), allow_retries=False) from None
    # each wanted shape's answer: the one its lines were given (direct or propagated; a shape
    # answered two ways stays unanswered, never guessed)
    text = dict(zip(table["shape_index"], table["shape"], strict=True))
    frame["shape"] = [text[i] for i in shape_index.tolist()]
    answered = (
        frame[frame["label"].notna() & frame["shape"].isin(set(wanted["shape"]))]
        .groupby("shape", sort=False)
        .agg(label=("label", "first"), reason=("reason", "first"))
    )
    asked = wanted.merge(answered, left_on="shape", right_index=True, how="inner")
    known = dict(zip(asked["shape_index"], (asked["label"] == "LOOK").astype(int), strict=True))
    threshold = (
        adapt_threshold(table, known, champion.threshold)
        if config.adapt_threshold
        else float(champion.threshold)
    )
    folder = write_adaptation(
        line_champion.folder,
        family_folder("line_adaptation_runs", f"{source}/{context.run_id}"),
        source,
        asked,
        threshold,
        float(champion.threshold),
        config.max_shapes,
    )
    covered = int(asked["lines"].sum())
    context.add_output_metadata(
        {
            "shapes": len(table),
            "asked_shapes": len(wanted),
            "answered_shapes": len(asked),
            "lines_covered_by_answers": covered,
            "share_of_lines_answered": dg.MetadataValue.float(
                round(covered / max(len(lines), 1), 4)
            ),
            "requests": stats.requests,
            "cache_hits": stats.cache_hits,
            "estimated_cost_usd": dg.MetadataValue.float(round(stats.estimated_cost_usd, 6)),
            "shipped_threshold": dg.MetadataValue.float(float(champion.threshold)),
            "threshold": dg.MetadataValue.float(float(threshold)),
            "champion_family": line_champion.family,
            "answers": dg.MetadataValue.md(
                asked[["shape", "lines", "probability", "label"]]
                .head(20)
                .round(4)
                .to_markdown(index=False)
            ),
        }
    )
    return ModelArtifact.read(folder)
