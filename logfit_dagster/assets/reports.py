"""Metrics reports: per source, every session model's test quality against the champion's;
overall, every source and the line classifier's leave-sources-out scores."""

import dagster as dg
import numpy as np
import pandas as pd

from logfit_dagster.assets._common import on_new_data, optional
from logfit_dagster.assets.models import session_model_name
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.paths import data_dir
from logfit_dagster.resources.tracking import ExperimentTracker

REPORT_COLUMNS = [
    "source",
    "model",
    "version",
    "sessions",
    "anomalous",
    "precision",
    "recall",
    "f1",
    "accuracy",
    "average_precision",
    "threshold",
    "tp",
    "fp",
    "fn",
    "tn",
]


@dg.asset(
    partitions_def=log_source_partitions,
    group_name="reports",
    code_version="1",
    automation_condition=on_new_data(),
    kinds={"parquet", "matplotlib"},
)
def metrics_report(
    context: dg.AssetExecutionContext, session_model: pd.DataFrame, tracker: ExperimentTracker
) -> pd.DataFrame:
    """Accuracy, precision, recall, F1 of the anomalous class, confusion matrices and PR curves
    of every session model on the test split, with the registry's champion beside them."""
    # Imported by the step, like the models' libraries (see assets/models/).
    from logfit_dagster.core import plots
    from logfit_dagster.core.session_model import metrics as session_metrics

    source = context.partition_key
    labelled = (
        session_model[session_model["label"].notna()] if len(session_model) else session_model
    )
    if labelled.empty:
        context.add_output_metadata(
            {"note": "no supervised session model for this source: nothing measured"}
        )
        return pd.DataFrame(columns=REPORT_COLUMNS)
    rows, curves, matrices = [], {}, {}
    for kind, group in labelled.groupby("model", sort=True):
        y = group["label"].astype(int).to_numpy()
        score = group["score"].to_numpy(dtype=float)
        measured = session_metrics(y, score, float(group["threshold"].iloc[0]))
        rows.append(
            {"source": source, "model": kind, "version": str(group["version"].iloc[0]), **measured}
        )
        curves[kind] = (y, score)
        matrices[kind] = {k: measured[k] for k in ("tp", "fp", "fn", "tn")}
    champion = tracker.champion(session_model_name(source))
    if champion is not None:
        version, m = champion
        rows.append(
            {
                "source": source,
                "model": "champion (registry)",
                "version": version,
                **{k: m.get(f"test_{k}", np.nan) for k in REPORT_COLUMNS[3:]},
            }
        )
    report = pd.DataFrame(rows)[REPORT_COLUMNS]
    pr = plots.pr_curves(curves, f"{source}: precision-recall on test")
    cm = plots.confusion(matrices, f"{source}: test confusion")
    folder = data_dir() / "reports" / source
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pr_curve.png").write_bytes(plots.png_bytes(pr))
    (folder / "confusion.png").write_bytes(plots.png_bytes(cm))
    table = report.drop(columns=["source"]).round(4).to_markdown(index=False)
    context.add_output_metadata(
        {
            "report": dg.MetadataValue.md(
                f"## {source}: session models on the test split\n\n{table}\n\n"
                + plots.markdown_image(pr, "precision-recall")
                + "\n\n"
                + plots.markdown_image(cm, "confusion matrices")
            ),
            "best_f1": dg.MetadataValue.float(float(report["f1"].max())),
            "pr_curve": dg.MetadataValue.path(str(folder / "pr_curve.png")),
            "confusion": dg.MetadataValue.path(str(folder / "confusion.png")),
            "champion_version": champion[0] if champion else "none",
        }
    )
    plots.close(pr, cm)
    return report


@dg.asset(
    group_name="reports",
    code_version="2",
    automation_condition=on_new_data(),
    kinds={"parquet"},
    ins={
        "metrics_report": dg.AssetIn(partition_mapping=dg.AllPartitionMapping()),
        # a registry of one source trains no line model: the overview shows the rest
        "look_skip_model": optional(),
    },
    # read from their latest materializations when there are some: a source set too small for
    # held-out evaluation trains no transformer, a source without sessions no template model,
    # and the overview still shows the rest
    deps=[
        "line_transformer_model",
        "template_lm",
        "llm_session_eval",
        "sft_adapter",
        "grpo_adapter",
    ],
)
def metrics_overview(
    context: dg.AssetExecutionContext,
    metrics_report: dict[str, pd.DataFrame],
    look_skip_model: dict[str, pd.DataFrame] | None,
) -> pd.DataFrame:
    """Every source's session models (count-vector classifiers and the next-template
    transformer per scoring method) and every line family's scores on held-out sources."""
    frames = [f for f in metrics_report.values() if len(f)]
    sessions = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=REPORT_COLUMNS)
    )
    if look_skip_model is not None:
        lines = look_skip_model["per_source"].assign(model="look_skip_model (leave-source-out)")
        lines = lines.rename(columns={"lines": "sessions"})
    else:
        lines = pd.DataFrame(columns=["source", "model", "precision", "recall", "f1", "sessions"])
    transformer = _transformer_rows(context)
    templates = _template_rows(context)
    judges = _llm_judge_rows(context)
    overview = pd.concat(
        [
            sessions.assign(unit="session"),
            templates,
            judges,
            lines.assign(unit="line"),
            transformer,
        ],
        ignore_index=True,
    )[["unit", "source", "model", "precision", "recall", "f1", "accuracy", "sessions"]]
    cv_f1 = (
        float(look_skip_model["summary"].iloc[0]["cv_f1"])
        if look_skip_model is not None
        else float("nan")  # not trained: see look_skip_model's materialization
    )
    context.add_output_metadata(
        {
            "sources_with_session_models": int(sessions["source"].nunique()),
            "line_model_cv_f1": dg.MetadataValue.float(cv_f1),
            "line_families": dg.MetadataValue.json(
                sorted(set(overview.loc[overview["unit"] == "line", "model"]))
            ),
            "overview": dg.MetadataValue.md(overview.round(4).to_markdown(index=False)),
        }
    )
    return overview


def _transformer_rows(context: dg.AssetExecutionContext) -> pd.DataFrame:
    """The latest line_transformer_model's held-out scores: cascade, transformer alone and the
    TF-IDF stage (trained on the same sources), per test source."""
    import json
    from pathlib import Path

    event = context.instance.get_latest_materialization_event(dg.AssetKey("line_transformer_model"))
    materialization = event.asset_materialization if event is not None else None
    folder = materialization.metadata.get("model_folder") if materialization else None
    path = Path(folder.value) / "evaluation.json" if folder is not None else None
    if path is None or not path.is_file():
        return pd.DataFrame(columns=["unit", "source", "model"])
    names = {
        "cascade": "cascade: tfidf then transformer (held-out source)",
        "transformer": "line_transformer alone (held-out source)",
        "tfidf": "tfidf, same training sources (held-out source)",
    }
    rows = []
    for source, scores in json.loads(path.read_text())["per_source"].items():
        for key, name in names.items():
            if key in scores:
                m = scores[key]
                rows.append(
                    {
                        "unit": "line",
                        "source": source,
                        "model": name,
                        "precision": m["precision"],
                        "recall": m["recall"],
                        "f1": m["f1"],
                        "sessions": m["lines"],
                    }
                )
    return pd.DataFrame(rows)


def _llm_judge_rows(context: dg.AssetExecutionContext) -> pd.DataFrame:
    """Each source's latest llm_session_eval (a chat model's verdicts) and LoRA adapters (SFT,
    GRPO), on the same test split."""
    from logfit_dagster.partitions import LOG_SOURCE

    rows = []
    for source in context.instance.get_dynamic_partitions(LOG_SOURCE):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("llm_session_eval"), asset_partitions=[source]
            ),
            limit=1,
        ).records
        if records:
            meta = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
            rows.append(
                {
                    "unit": "session",
                    "source": source,
                    "model": f"llm judge: {meta.get('model')} "
                    f"({meta.get('unanswered', 0)} unanswered)",
                    **{k: meta.get(k) for k in ("precision", "recall", "f1", "accuracy")},
                    "sessions": meta.get("test_sessions"),
                }
            )
        for stage in ("sft", "grpo"):  # the LoRA adapters, judged by greedy generation
            found = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=dg.AssetKey(f"{stage}_adapter"), asset_partitions=[source]
                ),
                limit=1,
            ).records
            if not found:
                continue
            m = {k: v.value for k, v in found[0].asset_materialization.metadata.items()}
            rows.append(
                {
                    "unit": "session",
                    "source": source,
                    "model": f"llm_lora {stage} ({m.get('test_unparseable', 0):.0f} unparseable)",
                    **{k: m.get(f"test_{k}") for k in ("precision", "recall", "f1", "accuracy")},
                    "sessions": m.get("test_sessions"),
                }
            )
    return pd.DataFrame(
        rows,
        columns=["unit", "source", "model", "precision", "recall", "f1", "accuracy", "sessions"],
    )


def _template_rows(context: dg.AssetExecutionContext) -> pd.DataFrame:
    """Each source's latest template_lm: test precision, recall and F1 per scoring method, and
    those of the same model trained from scratch where it was trained for comparison."""
    import json
    from pathlib import Path

    from logfit_dagster.core.scores import confusion_counts, rates
    from logfit_dagster.partitions import LOG_SOURCE

    rows = []
    for source in context.instance.get_dynamic_partitions(LOG_SOURCE):
        records = context.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("template_lm"), asset_partitions=[source]),
            limit=1,
        ).records
        if not records:
            continue
        materialization = records[0].asset_materialization
        path = materialization.metadata.get("path")
        if path is None or not Path(path.value).is_file():
            continue
        mode = materialization.metadata.get("mode")
        label = "fine-tuned" if mode is not None and "fine-tuned" in mode.value else "scratch"
        scores = pd.read_parquet(path.value)
        for method, group in scores.groupby("method", sort=True):
            y = group["label"].astype(int).to_numpy()
            pred = group["flagged"].astype(int).to_numpy()
            tp, fp, fn, tn = confusion_counts(y, pred)
            rows.append(
                {
                    "unit": "session",
                    "source": source,
                    "model": f"template_lm {label}: {method}",
                    **rates(tp, fp, fn, tn),
                    "sessions": len(group),
                }
            )
        # the same model from scratch, trained beside the fine-tuned one: the pretraining gain
        scratch = materialization.metadata.get("scratch_model_folder")
        evaluation = Path(scratch.value) / "evaluation.json" if scratch is not None else None
        if evaluation is not None and evaluation.is_file():
            stored = json.loads(evaluation.read_text())
            for method, m in sorted(stored["methods"].items()):
                rows.append(
                    {
                        "unit": "session",
                        "source": source,
                        "model": f"template_lm scratch: {method}",
                        **{k: m[k] for k in ("precision", "recall", "f1", "accuracy") if k in m},
                        "sessions": stored["summary"]["sessions"],
                    }
                )
    return pd.DataFrame(rows)
