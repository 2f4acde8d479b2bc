"""Jobs over asset selections."""

import dagster as dg

from logfit_dagster.partitions import log_source_partitions

ingest_selection = dg.AssetSelection.groups("ingest", "datasets")

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=ingest_selection,
    partitions_def=log_source_partitions,
    description="Raw logs to train/dev/test splits for one log source.",
)

labels_selection = dg.AssetSelection.assets("llm_labels", "label_quality")

labels_job = dg.define_asset_job(
    "labels_job",
    selection=labels_selection,
    partitions_def=log_source_partitions,
    description="LOOK/SKIP labels of one log source and their agreement with ground truth.",
)
