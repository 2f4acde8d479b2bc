"""Labeler resources: one configurable resource per way of labeling lines LOOK or SKIP.

Each resource builds its core labeler (``logfit_dagster.core.labeling``) when a run uses it.
API keys come from the environment through ``dg.EnvVar``; a key never appears in config shown
in the UI, in metadata or in error text.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from logfit_dagster.core.errors import LabelerError
from logfit_dagster.core.labeling.base import Labeler
from logfit_dagster.core.labeling.cache import LabelCache
from logfit_dagster.core.labeling.offline import RecordedLabeler, RuleLabeler
from logfit_dagster.paths import data_dir


class LabelerResource(dg.ConfigurableResource):
    """A way of labeling lines; ``build`` makes the labeler for one run."""

    cache_path: str = Field(
        default="", description="SQLite label cache; empty means data/labels/label_cache.sqlite."
    )

    def build(self, model: str = "") -> Labeler:
        raise NotImplementedError

    def cache(self) -> LabelCache:
        path = (
            Path(self.cache_path)
            if self.cache_path
            else data_dir() / "labels" / "label_cache.sqlite"
        )
        return LabelCache(path)

    def secrets(self) -> list[str]:
        """Values to scrub from any text that leaves the run."""
        return []


class RuleLabelerResource(LabelerResource):
    """Severity words, negative keywords and stack traces: the offline default, no key needed."""

    def build(self, model: str = "") -> Labeler:
        return RuleLabeler()


class RecordedLabelerResource(LabelerResource):
    """Labels recorded earlier as JSONL, matched by line content."""

    paths: list[str] = Field(
        default_factory=list,
        description="Recorded JSONL files or globs; empty means $LOGFIT_RECORDED_LABELS.",
    )
    system: str = Field(
        default="", description="The recorded system to match; empty means the source's name."
    )

    def build(self, model: str = "") -> Labeler:
        patterns = self.paths or [
            p for p in os.environ.get("LOGFIT_RECORDED_LABELS", "").split(os.pathsep) if p
        ]
        if not patterns:
            raise LabelerError(
                "RecordedLabeler needs recorded label files: set paths in its config or the "
                "LOGFIT_RECORDED_LABELS environment variable"
            )
        files = [Path(f) for pattern in patterns for f in sorted(glob.glob(pattern))]
        if not files:
            raise LabelerError(f"RecordedLabeler: no file matches {patterns}")
        return RecordedLabeler(files, system=self.system or None)


class AnthropicLabelerResource(LabelerResource):
    """Claude through the Message Batches API (half price, results within 24 hours)."""

    api_key: str | None = Field(
        default=None, description="Set it with dg.EnvVar('ANTHROPIC_API_KEY'), never inline."
    )
    model: str = Field(default="claude-haiku-4-5", description="The Claude model.")
    base_url: str | None = Field(default=None, description="API base URL (a proxy or gateway).")
    max_tokens: int = Field(default=8192, description="Output tokens allowed per window.")
    max_resubmits: int = Field(
        default=2, description="Times a request that errored or expired is submitted again."
    )
    poll_interval_s: float = Field(default=10.0, description="First wait between polls.")
    max_poll_interval_s: float = Field(default=300.0, description="Longest wait between polls.")
    max_batch_requests: int = Field(
        default=100_000, description="Requests per batch (the API allows 100,000)."
    )

    def secrets(self) -> list[str]:
        return [self.api_key] if self.api_key else []

    def build(self, model: str = "") -> Labeler:
        # The SDKs are imported by the step that labels: every step process of a multiprocess
        # run imports the code location, and the SDKs alone take over a second to import.
        from logfit_dagster.core.labeling.anthropic_batch import AnthropicBatchLabeler

        return AnthropicBatchLabeler(
            api_key=self.api_key or "",
            model=model or self.model,
            base_url=self.base_url,
            max_tokens=self.max_tokens,
            max_resubmits=self.max_resubmits,
            poll_interval_s=self.poll_interval_s,
            max_poll_interval_s=self.max_poll_interval_s,
            max_batch_requests=self.max_batch_requests,
        )


class OpenAILabelerResource(LabelerResource):
    """OpenAI or any OpenAI-compatible server (vLLM, llama.cpp, Ollama) through chat completions."""

    api_key: str | None = Field(
        default=None, description="Set it with dg.EnvVar('OPENAI_API_KEY'), never inline."
    )
    model: str = Field(default="gpt-4o-mini", description="The model name the server knows.")
    base_url: str | None = Field(
        default=None, description="e.g. http://127.0.0.1:8000/v1 for a local vLLM server."
    )
    max_concurrency: int = Field(default=4, description="Requests in flight at once.")
    max_retries: int = Field(default=5, description="Retries on 429 and 5xx, with backoff.")
    structured_output: bool = Field(
        default=True, description="Ask for json_schema output; off for servers without it."
    )

    def secrets(self) -> list[str]:
        return [self.api_key] if self.api_key else []

    def build(self, model: str = "") -> Labeler:
        from logfit_dagster.core.labeling.openai_chat import OpenAILabeler  # see above

        return OpenAILabeler(
            api_key=self.api_key or "",
            model=model or self.model,
            base_url=self.base_url,
            max_concurrency=self.max_concurrency,
            max_retries=self.max_retries,
            structured_output=self.structured_output,
        )


LABELER_KINDS = ("rule", "recorded", "anthropic", "openai")


class ChosenLabelerResource(LabelerResource):
    """The labeler of the definitions: chosen when a run starts, not when the code loads.

    ``kind`` (config: the launchpad, a job's run config) wins; else ``$LOGFIT_LABELER``; else
    Claude where ``$ANTHROPIC_API_KEY`` is set; else the rules. An API key is read from its
    variable when the run builds the labeler, never at import, and never shown as config.
    """

    kind: str = Field(
        default="",
        description="rule, recorded, anthropic or openai; empty: $LOGFIT_LABELER when the run "
        "starts, else anthropic where $ANTHROPIC_API_KEY is set, else rule.",
    )
    model: str = Field(
        default="",
        description="An API labeler's model; empty: its default ($LOGFIT_OPENAI_MODEL for openai).",
    )
    base_url: str = Field(
        default="",
        description="An API labeler's endpoint; empty: its default ($OPENAI_BASE_URL for openai).",
    )
    recorded_paths: list[str] = Field(
        default_factory=list,
        description="recorded: JSONL files or globs; empty: $LOGFIT_RECORDED_LABELS.",
    )

    def chosen(self, environ: dict[str, str] | None = None) -> LabelerResource:
        """The labeler resource this run uses, from the config and the environment now."""
        env = os.environ if environ is None else environ
        kind = (self.kind or env.get("LOGFIT_LABELER", "")).strip().lower()
        if not kind:
            kind = "anthropic" if env.get("ANTHROPIC_API_KEY") else "rule"
        common: dict = {"cache_path": self.cache_path}
        if kind == "rule":
            return RuleLabelerResource(**common)
        if kind == "recorded":
            return RecordedLabelerResource(**common, paths=self.recorded_paths)
        if kind == "anthropic":
            if self.model:
                common["model"] = self.model
            return AnthropicLabelerResource(
                **common,
                api_key=env.get("ANTHROPIC_API_KEY") or None,
                base_url=self.base_url or None,
            )
        if kind == "openai":
            model = self.model or env.get("LOGFIT_OPENAI_MODEL")
            if model:
                common["model"] = model
            return OpenAILabelerResource(
                **common,
                api_key=env.get("OPENAI_API_KEY") or None,
                base_url=self.base_url or env.get("OPENAI_BASE_URL") or None,
            )
        where = "the labeler's kind" if self.kind else "LOGFIT_LABELER"
        raise LabelerError(
            f"{where} is {kind!r}: expected {', '.join(LABELER_KINDS[:-1])} or {LABELER_KINDS[-1]}"
        )

    def build(self, model: str = "") -> Labeler:
        return self.chosen().build(model)

    def secrets(self) -> list[str]:
        return self.chosen().secrets()


def default_labeler(environ: dict[str, str] | None = None) -> LabelerResource:
    """The labeler resource an environment chooses (see :class:`ChosenLabelerResource`)."""
    return ChosenLabelerResource().chosen(environ)


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
