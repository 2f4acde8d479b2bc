"""OpenAI-compatible API resources: the session judge and the fine-tuning client.

Each is configured at run time (the UI's launchpad, a job's run config, ``definitions.py``):
where the API is and which environment variable holds its key. The key is read from that
variable when a run uses the resource, never at import time, and never appears in config, in
metadata or in error text (``secrets()`` lists what to scrub).
"""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field


class OpenAIAPIResource(dg.ConfigurableResource):
    """An OpenAI-compatible endpoint and the environment variable holding its key."""

    base_url: str = Field(
        default="",
        description="An OpenAI-compatible endpoint (vLLM, llama.cpp, Ollama, `transformers "
        "serve`: http://host:port/v1); empty: OpenAI.",
    )
    api_key_env: str = Field(
        default="OPENAI_API_KEY",
        description="The environment variable holding the API key (never the key itself).",
    )
    max_retries: int = Field(default=5, description="Retries of a 429 or 5xx reply, with backoff.")

    def api_key(self) -> str:
        """The key, read from the environment when a run asks for it."""
        return os.environ.get(self.api_key_env, "")

    def endpoint(self) -> str | None:
        return self.base_url or None

    def secrets(self) -> list[str]:
        """Values to scrub from any text that leaves the run."""
        key = self.api_key()
        return [key] if key else []


class SessionJudgeResource(OpenAIAPIResource):
    """The chat model that judges sessions (``llm_session_eval``)."""

    base_url: str = Field(
        default="",
        description="An OpenAI-compatible endpoint (http://host:port/v1); empty: "
        "$LOGFIT_LLM_EVAL_URL when set, else OpenAI.",
    )
    model: str = Field(default="gpt-4o-mini", description="The model name the server knows.")
    max_concurrency: int = Field(default=4, description="Sessions asked at once.")
    structured_output: bool = Field(
        default=True, description="Ask for the JSON schema (servers without it: false)."
    )
    max_answer_tokens: int = Field(
        default=0,
        description="The longest answer in tokens (0: the server's default). A served adapter "
        "is judged with its own cap (eval_max_new_tokens) unless this is set.",
    )
    serve: str = Field(
        default="",
        description="A local model to judge with, served for the run by `transformers serve` "
        "on 127.0.0.1 and asked through the same OpenAI-compatible path as a hosted model: "
        "'embedded' (SmolLM2-135M-Instruct), an llm_lora folder (an SFT or GRPO adapter, "
        "merged into its base once, in its merged/), or a model folder. Empty: base_url.",
    )
    serve_device: str = Field(
        default="auto", description="Where the served model runs: cpu, cuda or auto."
    )

    def endpoint(self) -> str | None:
        return self.base_url or os.environ.get("LOGFIT_LLM_EVAL_URL") or None

    def judge(self):
        """A :class:`~logfit_dagster.core.llm_eval.SessionJudge` for one run (close it: a
        served model's server stops with it)."""
        from logfit_dagster.core.llm_eval import SessionJudge

        if self.serve:
            return self._served_judge()
        return SessionJudge(
            api_key=self.api_key(),
            model=self.model,
            base_url=self.endpoint(),
            max_concurrency=self.max_concurrency,
            max_retries=self.max_retries,
            structured_output=self.structured_output,
            max_tokens=self.max_answer_tokens or None,
        )

    def _served_judge(self):
        from logfit_dagster.core.llm_eval import SessionJudge
        from logfit_dagster.core.models.llm_lora import judge_device
        from logfit_dagster.core.models.threads import torch_threads
        from logfit_dagster.core.serving import (
            LocalServer,
            adapter_answer_tokens,
            adapter_logit_bias,
            model_digest,
            servable_folder,
        )

        folder = servable_folder(self.serve)
        bias = adapter_logit_bias(self.serve)
        # the device the in-process judge would use: the same answers either way
        device = judge_device(self.serve_device)
        server = LocalServer(folder, device=device, threads=torch_threads()[0]).__enter__()
        try:
            return SessionJudge(
                api_key="local",  # the local server checks none
                model=str(folder),  # the server answers to the path it was started with
                # answers are cached under the weights and the bias they came from
                name=f"served:{folder.parent.name if folder.name == 'merged' else folder.name}"
                f"@{model_digest(folder)}"
                + "".join(f"+bias{t}:{v:g}" for t, v in sorted(bias.items())),
                base_url=server.base_url,
                max_concurrency=1,  # one model generating: requests queue anyway
                max_retries=self.max_retries,
                structured_output=False,  # transformers serve ignores response_format
                max_tokens=self.max_answer_tokens or adapter_answer_tokens(self.serve),
                # an adapter decides at its dev threshold, served as in process
                logit_bias=bias,
                server=server,
            )
        except BaseException:
            server.close()
            raise


class FineTuningResource(OpenAIAPIResource):
    """The API that runs fine-tuning jobs (``rft_job``)."""

    def client(self):
        """An ``openai.OpenAI`` client (close it); fails clearly without a key."""
        import openai

        key = self.api_key()
        if not key:
            raise dg.Failure(
                description=f"fine-tuning needs an API key in ${self.api_key_env}",
                allow_retries=False,
            )
        return openai.OpenAI(api_key=key, base_url=self.endpoint(), max_retries=self.max_retries)
