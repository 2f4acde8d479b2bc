"""Jobs over asset selections, for the UI, the schedules and ``logfit materialize --job``.

Partitioned jobs run one log source per run; the line models and the overview read every
source and run unpartitioned. ``logfit materialize`` runs :data:`MATERIALIZE_SELECTION` in the
order the asset graph gives (``stages.py``), not in an order written here.
"""

import dagster as dg

ingest_selection = dg.AssetSelection.groups("ingest", "datasets")
labels_selection = dg.AssetSelection.assets("llm_labels", "label_quality")
source_models_selection = dg.AssetSelection.assets(
    "session_model", "session_champion", "metrics_report"
)
line_model_selection = dg.AssetSelection.assets(
    "labeled_lines",
    "look_skip_model",
    "look_skip_champion",
    "line_transformer_model",
    "line_champion",
    "metrics_overview",
)
scoring_selection = dg.AssetSelection.assets("scored_lines")
template_models_selection = dg.AssetSelection.assets(
    "template_vocabulary", "template_lm_pretrained"
)

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=ingest_selection,
    description="Raw logs to train/dev/test splits for one log source.",
)

labels_job = dg.define_asset_job(
    "labels_job",
    selection=labels_selection,
    description="LOOK/SKIP labels of one log source and their agreement with ground truth.",
)

source_models_job = dg.define_asset_job(
    "source_models_job",
    selection=source_models_selection,
    description="Session classifiers of one source, their champion and the metrics report.",
)

reports_job = dg.define_asset_job(
    "reports_job",
    selection=dg.AssetSelection.assets("metrics_report"),
    description="The metrics report of one source from its stored session models.",
)

llm_examples_selection = dg.AssetSelection.assets("llm_session_examples")

source_lineage_job = dg.define_asset_job(
    "source_lineage_job",
    selection=ingest_selection
    | labels_selection
    | source_models_selection
    | llm_examples_selection,
    description="Everything of one log source: ingest, datasets, labels, session models, "
    "report, and the chat examples of its sessions.",
)

nightly_job = dg.define_asset_job(
    "nightly_job",
    selection=ingest_selection | labels_selection,
    description="Ingest and label one log source (the nightly schedule runs it per source).",
)

line_model_job = dg.define_asset_job(
    "line_model_job",
    selection=line_model_selection,
    description="The LOOK/SKIP classifiers (TF-IDF, and the transformer cascade) trained on every source's labels, gated to champion.",
)

scoring_job = dg.define_asset_job(
    "scoring_job",
    selection=scoring_selection,
    description="One source's lines scored by the champion LOOK/SKIP classifier.",
)

template_models_job = dg.define_asset_job(
    "template_models_job",
    selection=template_models_selection,
    description="The template vocabulary of every source and the pretrained next-template model.",
)

template_lm_job = dg.define_asset_job(
    "template_lm_job",
    selection=dg.AssetSelection.assets("template_lm"),
    description="One source's next-template model, fine-tuned from the pretrained one.",
)

line_adaptation_job = dg.define_asset_job(
    "line_adaptation_job",
    selection=dg.AssetSelection.assets("line_adaptation"),
    description="The line champion adapted to one source with at most max_shapes LLM answers "
    "about the shapes it is least sure of (a new system: logfit classify --model "
    "data/models/line_adaptation/<source>).",
)

overview_job = dg.define_asset_job(
    "overview_job",
    selection=dg.AssetSelection.assets("metrics_overview"),
    description="Every source's session models and every line family side by side.",
)

ALL_JOBS = [
    ingest_job,
    labels_job,
    nightly_job,
    source_models_job,
    reports_job,
    source_lineage_job,
    line_model_job,
    scoring_job,
    template_models_job,
    template_lm_job,
    line_adaptation_job,
    overview_job,
]

# The asset selection of each job, by name (what ``logfit materialize`` checks for staleness).
JOB_SELECTIONS = {job.name: job.selection for job in ALL_JOBS}

# What `logfit materialize` brings up to date: everything but the LLM judges and adapters, which
# call a paid API or train for hours, and the adaptation of the line champion to one new system
# (their jobs and the UI run them when asked).
MATERIALIZE_SELECTION = dg.AssetSelection.all() - dg.AssetSelection.assets(
    "llm_session_eval", "sft_adapter", "grpo_adapter", "rft_job", "line_adaptation"
)
