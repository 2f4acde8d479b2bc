"""Metrics reports: per source, every session model's test quality against the champion's;
overall, every source and the line classifier's leave-sources-out scores."""

import dagster as dg
import numpy as np
import pandas as pd

from logfit_dagster.assets._common import on_new_data, optional
from logfit_dagster.core.models.base import ModelArtifact
from logfit_dagster.partitions import log_source_partitions
from logfit_dagster.paths import data_dir

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
    ins={"session_champion": optional()},
)
def metrics_report(
    context: dg.AssetExecutionContext,
    session_model: pd.DataFrame,
    session_champion: ModelArtifact | None,
) -> pd.DataFrame:
    """Accuracy, precision, recall, F1 of the anomalous class, confusion matrices and PR curves
    of every session model on the test split, with the session champion (chosen across
    families on dev, before the report is written) beside them."""
    # Imported by the step, like the models' libraries (see assets/models/).
    from logfit_dagster.core import plots
    from logfit_dagster.core.session_champion import read_choice
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
    champion = read_choice(session_champion.folder) if session_champion is not None else None
    if champion is not None:
        m = champion["champion"]
        rows.append(
            {
                "source": source,
                "model": f"champion: {m['family']}:{m['model']}",
                "version": str(
                    session_champion.manifest.extra.get("champion", {}).get("version", "")
                ),
                "sessions": m["test"].get("anomalous", 0) + m["test"].get("normal", 0),
                "threshold": m["threshold"],
                **{k: m["test"].get(k, np.nan) for k in REPORT_COLUMNS[4:] if k != "threshold"},
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
            "champion": (
                f"{champion['champion']['family']}:{champion['champion']['model']}"
                if champion
                else "none"
            ),
        }
    )
    plots.close(pr, cm)
    return report


ALL_SOURCES = dg.AllPartitionMapping()
OVERVIEW_COLUMNS = [
    "unit",
    "source",
    "model",
    "precision",
    "recall",
    "f1",
    "accuracy",
    # of a session model: the share of normal test sessions it flags (what an SRE is paged for)
    "false_positive_rate",
    "sessions",
]


def _false_positive_rate(fp: float, tn: float) -> float:
    """fp / (fp + tn); with no normal session to flag there is no rate (NaN, not 0)."""
    return fp / (fp + tn) if fp + tn else float("nan")


LLM_JUDGES = ("llm_session_eval", "sft_adapter", "grpo_adapter")


@dg.asset(
    group_name="reports",
    code_version="3",
    # the LLM judges run only when asked: the overview does not wait for them
    automation_condition=on_new_data(optional=LLM_JUDGES),
    kinds={"parquet"},
    # Every family's evaluation is an input. The per-source ones come as a dict by source,
    # holding the sources that have one; the line models are None when they were not trained
    # (a registry of one source has no source to hold out): the overview shows the rest.
    ins={
        "metrics_report": dg.AssetIn(partition_mapping=ALL_SOURCES),
        "template_lm": dg.AssetIn(partition_mapping=ALL_SOURCES),
        "llm_session_eval": dg.AssetIn(partition_mapping=ALL_SOURCES),
        "sft_adapter": dg.AssetIn(partition_mapping=ALL_SOURCES),
        "grpo_adapter": dg.AssetIn(partition_mapping=ALL_SOURCES),
        "look_skip_model": optional(),
        "line_transformer_model": optional(),
    },
)
def metrics_overview(
    context: dg.AssetExecutionContext,
    metrics_report: dict[str, pd.DataFrame],
    template_lm: dict[str, pd.DataFrame],
    llm_session_eval: dict[str, pd.DataFrame],
    sft_adapter: dict[str, pd.DataFrame],
    grpo_adapter: dict[str, pd.DataFrame],
    look_skip_model: dict[str, pd.DataFrame] | None,
    line_transformer_model: dict[str, pd.DataFrame] | None,
) -> pd.DataFrame:
    """Every source's session models (count-vector classifiers, the next-template transformer
    per scoring method, LLM judges) and every line family's scores on held-out sources."""
    frames = [f for f in metrics_report.values() if len(f)]
    sessions = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=REPORT_COLUMNS)
    )
    if look_skip_model is not None:
        per_source = look_skip_model["per_source"]
        lines = per_source.assign(model="look_skip_model (held-out family)")
        lines = lines.rename(columns={"lines": "sessions"})
        if "baseline_f1" in per_source:
            # the plain choice, trained and scored in the same folds
            baseline = per_source[["source", "lines"]].assign(
                model="char n-gram baseline (held-out family)",
                **{k: per_source[f"baseline_{k}"] for k in ("precision", "recall", "f1")},
            )
            lines = pd.concat([lines, baseline.rename(columns={"lines": "sessions"})])
    else:
        lines = pd.DataFrame(columns=["source", "model", "precision", "recall", "f1", "sessions"])
    if len(sessions):
        sessions = sessions.assign(
            false_positive_rate=[
                _false_positive_rate(fp, tn)
                for fp, tn in zip(sessions["fp"], sessions["tn"], strict=True)
            ]
        )
    overview = pd.concat(
        [
            sessions.assign(unit="session"),
            template_rows(template_lm),
            judge_rows(llm_session_eval, {"sft": sft_adapter, "grpo": grpo_adapter}),
            lines.assign(unit="line"),
            transformer_rows(line_transformer_model),
        ],
        ignore_index=True,
    )[OVERVIEW_COLUMNS]
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


TRANSFORMER_NAMES = {
    "cascade": "cascade: tfidf then transformer (held-out source)",
    "transformer": "line_transformer alone (held-out source)",
    "tfidf": "tfidf, same training sources (held-out source)",
}


def transformer_rows(line_transformer_model: dict[str, pd.DataFrame] | None) -> pd.DataFrame:
    """The transformer's held-out scores: cascade, transformer alone and the TF-IDF stage
    (trained on the same sources), per test source."""
    per_source = line_transformer_model.get("per_source") if line_transformer_model else None
    if per_source is None or per_source.empty:
        return pd.DataFrame(columns=OVERVIEW_COLUMNS)
    rows = []
    for row in per_source.to_dict("records"):
        for key, name in TRANSFORMER_NAMES.items():
            if f"{key}_f1" in row and row[f"{key}_f1"] == row[f"{key}_f1"]:
                rows.append(
                    {
                        "unit": "line",
                        "source": row["source"],
                        "model": name,
                        **{m: row[f"{key}_{m}"] for m in ("precision", "recall", "f1")},
                        "sessions": row["lines"],
                    }
                )
    return pd.DataFrame(rows, columns=OVERVIEW_COLUMNS)


def judge_rows(evals: dict[str, pd.DataFrame], adapters: dict[str, dict]) -> pd.DataFrame:
    """Each source's chat-model verdicts (llm_session_eval) and LoRA adapters (SFT, GRPO), on
    the same test split; unanswered and unparseable answers are counted, never guessed."""
    from logfit_dagster.core.scores import confusion_counts, rates

    rows = []
    for source, frame in sorted(evals.items()):
        if frame.empty:
            continue
        answered = frame[frame["predicted"].notna()]
        tp, fp, fn, tn = confusion_counts(
            answered["label"].astype(int).to_numpy(), answered["predicted"].astype(int).to_numpy()
        )
        model = frame["model"].iloc[0] if "model" in frame else "?"
        rows.append(
            {
                "unit": "session",
                "source": source,
                "model": f"llm judge: {model} ({len(frame) - len(answered)} unanswered)",
                **{
                    k: v
                    for k, v in rates(tp, fp, fn, tn, empty=0.0).items()
                    if k in OVERVIEW_COLUMNS
                },
                "false_positive_rate": _false_positive_rate(fp, tn),
                "sessions": len(frame),
            }
        )
    for stage, by_source in adapters.items():
        for source, frame in sorted(by_source.items()):
            if frame.empty:
                continue
            m = frame.iloc[0]
            rows.append(
                {
                    "unit": "session",
                    "source": source,
                    "model": f"llm_lora {stage} ({m.get('test_unparseable') or 0:.0f} unparseable)",
                    **{k: m.get(f"test_{k}") for k in ("precision", "recall", "f1", "accuracy")},
                    "sessions": m.get("test_sessions"),
                }
            )
    return pd.DataFrame(rows, columns=OVERVIEW_COLUMNS)


def template_rows(template_lm: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Each source's template_lm: test precision, recall and F1 per scoring method, and those
    of the same model trained from scratch where it was trained beside it."""
    from logfit_dagster.core.scores import confusion_counts, rates

    rows = []
    for source, frame in sorted(template_lm.items()):
        if frame.empty:
            continue
        mode = str(frame["mode"].iloc[0]) if "mode" in frame else "fine-tuned"
        twin = "scratch_flagged" in frame and frame["scratch_flagged"].notna().all()
        # a test session without a label is scored (for the champion) but never counted
        labelled = frame[frame["label"].notna()]
        for method, group in labelled.groupby("method", sort=True):
            y = group["label"].astype(int).to_numpy()
            for label, column in ((mode, "flagged"), ("scratch", "scratch_flagged")):
                if column == "scratch_flagged" and not twin:
                    continue
                tp, fp, fn, tn = confusion_counts(y, group[column].astype(int).to_numpy())
                rows.append(
                    {
                        "unit": "session",
                        "source": source,
                        "model": f"template_lm {label}: {method}",
                        **{k: v for k, v in rates(tp, fp, fn, tn).items() if k in OVERVIEW_COLUMNS},
                        "false_positive_rate": _false_positive_rate(fp, tn),
                        "sessions": len(group),
                    }
                )
    return pd.DataFrame(rows, columns=OVERVIEW_COLUMNS)
