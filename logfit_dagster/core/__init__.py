"""The log-anomaly domain: parsing, templates, sessions, labels and splits. Never imports dagster."""
