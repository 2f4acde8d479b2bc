"""The session champion of a source: one model across the session families, chosen on dev.

Its inputs are the session families' test scores with their dev figures (count vectors, the
template model); it takes the chosen model's files from the model registry (the tracker), never
from a family's folder, and is the only writer of ``data/models/session_champion/<source>``
(through the model store), ahead of the report that names it and of ``logfit sessions``, which
scores with it. The rule is in :mod:`logfit_dagster.core.session_champion`.
"""

import tempfile
from pathlib import Path

import dagster as dg
import pandas as pd

from logfit_dagster.assets._common import columns_of, on_new_data, optional
from logfit_dagster.assets.models._shared import family_folder
from logfit_dagster.assets.models.session_counts import session_model_name
from logfit_dagster.core.models.base import ModelArtifact
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.resources.tracking import ExperimentTracker


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="models",
    code_version="2",
    kinds={"mlflow"},
    # chosen across families on dev figures: the count-vector family's gate (which fails, as a
    # warning, on a source too small to train that family) keeps only that family's alias
    automation_condition=on_new_data(),
    io_manager_key="model_store",
    ins={
        # a source without the template model (its job not run, or nothing to train on) is
        # judged among the count-vector models alone
        "template_lm": optional(),
        "log_templates": columns_of("template_id", "template"),
    },
)
def session_champion(
    context: dg.AssetExecutionContext,
    session_model: pd.DataFrame,
    template_lm: pd.DataFrame | None,
    log_templates: pd.DataFrame,
    tracker: ExperimentTracker,
) -> ModelArtifact | None:
    """The source's session model across families, chosen on dev (average precision, then F1,
    then the cheaper family), promoted in the registry and stored for ``logfit sessions``."""
    from logfit_dagster.assets.models.template_lm import template_lm_name
    from logfit_dagster.core.models import session_counts
    from logfit_dagster.core.models import template_lm as template_lm_core
    from logfit_dagster.core.session_champion import candidates_from_frame, choose, write_champion

    source = context.partition_key
    frames = []
    versions = {}
    if len(session_model):
        frames.append(session_counts.candidates(session_model))
        versions["session_counts"] = dict(
            zip(session_model["model"], session_model["version"].astype(str), strict=False)
        )
    if template_lm is not None and len(template_lm):
        # the fine-tuned (or from-scratch) model the source's template_lm asset reports
        frames.append(template_lm_core.candidates(template_lm))
        version = str(template_lm["version"].iloc[0])
        versions["template_lm"] = dict.fromkeys(template_lm_core.METHODS, version)
    candidates = candidates_from_frame(pd.concat(frames, ignore_index=True) if frames else None)
    if not candidates:
        context.add_output_metadata(
            {"promoted": False, "note": "no session model was trained for this source"}
        )
        return None
    choice = choose(candidates)
    chosen = choice.champion
    version = versions.get(chosen.family, {}).get(chosen.model, "")
    name = (
        session_model_name(source)
        if chosen.family == "session_counts"
        else template_lm_name(source)
    )
    supervised = any(c.test.get("anomalous") for c in candidates)
    if version and supervised:
        tracker.promote(name, version)
    templates = dict(
        zip(
            log_templates["template_id"].astype(int),
            log_templates["template"].astype(str),
            strict=False,
        )
    )
    if not version:
        raise dg.Failure(
            f"{source}: the chosen session model {choice.name} has no registered version"
        )
    with tempfile.TemporaryDirectory() as tmp:
        # the chosen model as the registry holds it: never the family's own folder
        folder = write_champion(
            choice,
            templates,
            family_folder("chosen_sessions", f"{source}/{context.run_id}"),
            tracker.model_files(name, version, Path(tmp)),
            version,
        )
    table = choice.table()
    context.add_output_metadata(
        {
            "champion": choice.name,
            "registered_model": name,
            "version": version,
            "promoted": bool(version and supervised),
            "why": choice.why,
            "candidates": dg.MetadataValue.md(table.round(4).to_markdown(index=False)),
            **{
                f"test_{k}": dg.MetadataValue.float(float(v))
                for k, v in chosen.test.items()
                if isinstance(v, int | float) and v == v
            },
        }
    )
    return ModelArtifact.read(folder)
