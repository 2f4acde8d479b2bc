"""The line champion: the one model that ``scored_lines`` and ``logfit classify`` score with.

Its inputs are the line families' summaries; it takes the chosen model from the registry (the
tracker), never from a family's folder, and is the only writer of the champion's folder (through
the model store), so whatever runs the graph (the UI's "Materialize all", a schedule, ``logfit
materialize``) scores with the champion chosen in the same graph.
"""

import shutil

import dagster as dg
import pandas as pd

from logfit_dagster.assets._common import optional, promoted_on_new_data
from logfit_dagster.assets.models._shared import family_folder
from logfit_dagster.assets.models.line_tfidf import LINE_MODEL_NAME
from logfit_dagster.assets.models.line_transformer import TRANSFORMER_MODEL_NAME
from logfit_dagster.core.models.base import ModelArtifact
from logfit_dagster.resources.tracking import ExperimentTracker


@dg.asset(
    group_name="models",
    code_version="1",
    kinds={"mlflow"},
    automation_condition=promoted_on_new_data(),
    io_manager_key="model_store",
    # a source set too small for held-out sources trains no transformer: the TF-IDF model is
    # then the champion
    ins={"line_transformer_model": optional()},
)
def line_champion(
    context: dg.AssetExecutionContext,
    look_skip_champion: pd.DataFrame,
    line_transformer_model: dict[str, pd.DataFrame] | None,
    tracker: ExperimentTracker,
) -> ModelArtifact:
    """The line model every source is scored with: the transformer cascade where it passed its
    gate against the TF-IDF model on held-out sources, else the TF-IDF model."""
    transformer = line_transformer_model["summary"] if line_transformer_model else None
    use_cascade = (
        transformer is not None
        and not transformer.empty
        and bool(transformer.iloc[0].get("gate_passed", False))
    )
    if use_cascade:
        row = transformer.iloc[0]
        tracker.promote(TRANSFORMER_MODEL_NAME, str(row["version"]))
        why = _gate_why(row)
        name = TRANSFORMER_MODEL_NAME
    else:
        row = look_skip_champion.iloc[0]
        name = LINE_MODEL_NAME
        if transformer is None or transformer.empty:
            why = "no transformer was trained (see line_transformer_model): the TF-IDF model"
        else:
            why = f"the TF-IDF model, as {_gate_why(transformer.iloc[0])}"
    # the chosen model as the registry holds it (never a family's own folder), in a place of
    # its own until the model store publishes it as the champion
    chosen = family_folder("chosen_lines", "latest")
    shutil.rmtree(chosen, ignore_errors=True)
    artifact = ModelArtifact.read(tracker.model_files(name, str(row["version"]), chosen))
    context.add_output_metadata(
        {
            "registered_model": name,
            "version": str(row["version"]),
            "why": why,
            **{
                k: dg.MetadataValue.float(float(v))
                for k, v in artifact.metrics.items()
                if isinstance(v, int | float) and not isinstance(v, bool) and v == v
            },
        }
    )
    return artifact


def _gate_why(row: pd.Series) -> str:
    """The cascade gate's reason, as line_transformer_model wrote it (older summaries lack it)."""
    why = row.get("gate_why")
    if isinstance(why, str) and why:
        return why
    verdict = "passed" if bool(row.get("gate_passed", False)) else "did not pass"
    return (
        f"the cascade's held-out LOOK F1 {float(row['test_cascade_f1']):.3f} {verdict} its gate "
        f"against the TF-IDF model's {float(row['test_tfidf_f1']):.3f} on the same sources"
    )
