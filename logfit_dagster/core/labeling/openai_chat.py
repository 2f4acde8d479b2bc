"""OpenAI-compatible chat completions with json_schema structured output, a few at a time.

``base_url`` points the labeler at any server speaking the protocol: OpenAI, vLLM, llama.cpp,
Ollama. 429 and 5xx replies are retried with exponential backoff by the SDK (honouring
``retry-after``).
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import openai

from logfit_dagster.core.errors import LabelerError
from logfit_dagster.core.labeling.base import DirectLabeler, Reply, Request
from logfit_dagster.core.labeling.prompt import REPLY_SCHEMA, PromptSpec

JSON_ONLY = '\n\nReply with a JSON object {"labels": [...]} holding that array, and nothing else.'


@dataclass
class ChatReply:
    """One chat completion's text and tokens, or the error that left it unanswered."""

    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    error: str = ""


def openai_client(
    api_key: str, base_url: str | None, max_retries: int, timeout_s: float, who: str, variable: str
):
    """An ``openai`` client whose SDK retries 429 and 5xx with backoff; no key is an error
    naming ``variable``, where the key belongs."""
    if not api_key:
        raise LabelerError(
            f"{who} needs an API key: set {variable} (any non-empty value for a local server "
            "that checks none)"
        )
    return openai.OpenAI(
        api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_s
    )


def chat(
    client,
    model: str,
    messages: list[dict],
    response_format: dict | None,
    who: str = "",
    max_tokens: int | None = None,
    logit_bias: dict[int, float] | None = None,
) -> ChatReply:
    """One chat completion at temperature 0; ``who`` names the caller in a refusal;
    ``max_tokens`` caps the answer (None: the server's default); ``logit_bias`` is added to
    those tokens' logits (OpenAI's parameter: token id -> bias).

    Raises:
        LabelerError: when the server refuses the key, the permission or the model (a retry
            cannot help); a 429 or 5xx left after the SDK's retries, or a dropped connection,
            is an unanswered reply instead (the next run asks again).
    """
    kwargs: dict = {"response_format": response_format} if response_format else {}
    if max_tokens:
        kwargs["max_tokens"] = max_tokens
    if logit_bias:
        kwargs["logit_bias"] = {str(k): v for k, v in logit_bias.items()}
    try:
        completion = client.chat.completions.create(
            model=model, temperature=0, messages=messages, **kwargs
        )
    except (
        openai.AuthenticationError,
        openai.PermissionDeniedError,
        openai.NotFoundError,
    ) as exc:
        raise LabelerError(f"{who or model} was refused: HTTP {exc.status_code}") from None
    except openai.APIStatusError as exc:
        return ChatReply(error=f"HTTP {exc.status_code} after retries")
    except openai.APIConnectionError as exc:
        return ChatReply(error=f"connection failed: {type(exc).__name__}")
    usage = completion.usage
    choice = completion.choices[0] if completion.choices else None
    return ChatReply(
        text=(choice.message.content if choice and choice.message else None) or "",
        input_tokens=(usage.prompt_tokens if usage else 0) or 0,
        output_tokens=(usage.completion_tokens if usage else 0) or 0,
    )


class ChatModel:
    """A chat model behind an OpenAI-compatible API, asked ``max_concurrency`` at a time.

    ``key_owner`` and ``key_variable`` name who needs the key and where it belongs, in the
    error a missing key raises.
    """

    key_owner = "a chat model"
    key_variable = "the OPENAI_API_KEY environment variable"

    def __init__(
        self,
        *,
        api_key: str,
        model: str,
        base_url: str | None = None,
        max_concurrency: int = 4,
        max_retries: int = 5,
        structured_output: bool = True,
        timeout_s: float = 120.0,
    ):
        self.client = openai_client(
            api_key, base_url, max_retries, timeout_s, self.key_owner, self.key_variable
        )
        self.model = model
        self.max_concurrency = max(1, max_concurrency)
        self.structured_output = structured_output

    def close(self) -> None:
        self.client.close()


class OpenAILabeler(ChatModel, DirectLabeler):
    name = "openai_chat"
    paid = True
    key_owner = "OpenAILabeler"

    def __init__(self, *, model: str = "gpt-4o-mini", **kwargs):
        super().__init__(model=model, **kwargs)

    def _ask(self, request: Request, prompt: PromptSpec) -> Reply:
        user = request.user_message()
        system = prompt.system
        response_format = None
        if self.structured_output:
            response_format = {
                "type": "json_schema",
                "json_schema": {"name": "look_skip_labels", "strict": True, "schema": REPLY_SCHEMA},
            }
        else:
            system += JSON_ONLY
        reply = chat(
            self.client,
            self.model,
            [{"role": "system", "content": system}, {"role": "user", "content": user}],
            response_format,
            who=f"{self.name} ({self.model})",
        )
        if reply.error:
            return Reply(request.custom_id, error=reply.error)
        return Reply(
            request.custom_id,
            reply.text,
            input_tokens=reply.input_tokens,
            output_tokens=reply.output_tokens,
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
