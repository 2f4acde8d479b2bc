"""OpenAI-compatible chat completions with json_schema structured output, a few at a time.

``base_url`` points the labeler at any server speaking the protocol: OpenAI, vLLM, llama.cpp,
Ollama. 429 and 5xx replies are retried with exponential backoff by the SDK (honouring
``retry-after``).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed

import openai

from logfit_dagster.core.errors import LabelerError
from logfit_dagster.core.labeling.base import DirectLabeler, Reply, Request
from logfit_dagster.core.labeling.prompt import REPLY_SCHEMA, PromptSpec, render_window

JSON_ONLY = '\n\nReply with a JSON object {"labels": [...]} holding that array, and nothing else.'


class OpenAILabeler(DirectLabeler):
    name = "openai_chat"
    paid = True

    def __init__(
        self,
        *,
        api_key: str,
        model: str = "gpt-4o-mini",
        base_url: str | None = None,
        max_concurrency: int = 4,
        max_retries: int = 5,
        structured_output: bool = True,
        timeout_s: float = 120.0,
    ):
        if not api_key:
            raise LabelerError(
                "OpenAILabeler needs an API key: set the OPENAI_API_KEY environment variable "
                "(any non-empty value for a local server that checks none)"
            )
        self.model = model
        self.max_concurrency = max(1, max_concurrency)
        self.structured_output = structured_output
        self.client = openai.OpenAI(
            api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s
        )

    def close(self) -> None:
        self.client.close()

    def _ask(self, request: Request, prompt: PromptSpec) -> Reply:
        user = render_window(request.window, request.asked if request.followup else None)
        kwargs: dict = {}
        system = prompt.system
        if self.structured_output:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "look_skip_labels", "strict": True, "schema": REPLY_SCHEMA},
            }
        else:
            system += JSON_ONLY
        try:
            completion = self.client.chat.completions.create(
                model=self.model,
                temperature=0,
                messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                **kwargs,
            )
        except (
            openai.AuthenticationError,
            openai.PermissionDeniedError,
            openai.NotFoundError,
        ) as exc:
            raise LabelerError(
                f"{self.name} ({self.model}) was refused: HTTP {exc.status_code}"
            ) from None
        except openai.APIStatusError as exc:
            return Reply(request.custom_id, error=f"HTTP {exc.status_code} after retries")
        except openai.APIConnectionError as exc:
            return Reply(request.custom_id, error=f"connection failed: {type(exc).__name__}")
        usage = completion.usage
        choice = completion.choices[0] if completion.choices else None
        content = choice.message.content if choice and choice.message else None
        return Reply(
            request.custom_id,
            content or "",
            input_tokens=(usage.prompt_tokens if usage else 0) or 0,
            output_tokens=(usage.completion_tokens if usage else 0) or 0,
        )

    def label(self, requests: list[Request], prompt: PromptSpec) -> Iterator[Reply]:
        with ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="openai-labeler") as pool:
            futures = [pool.submit(self._ask, r, prompt) for r in requests]
            try:
                for future in as_completed(futures):
                    yield future.result()
            finally:
                for future in futures:
                    future.cancel()
