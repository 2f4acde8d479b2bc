"""Assets: Dagster wiring only, one module per stage."""

from logfit_dagster.assets import datasets, ingest, labels, llm_sessions, models, reports

#: every asset module: the whole graph (``load_assets_from_modules(ASSET_MODULES)``)
ASSET_MODULES = [ingest, datasets, labels, llm_sessions, models, reports]
