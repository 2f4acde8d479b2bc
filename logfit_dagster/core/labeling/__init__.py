"""LOOK/SKIP line labels from LLMs, recorded labels and rules: windows, prompts, cache, labelers."""
