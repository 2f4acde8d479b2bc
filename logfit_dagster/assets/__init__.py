"""Assets: Dagster wiring only, one module per stage."""
