"""Resources: one module per outside system (storage, log sources)."""
