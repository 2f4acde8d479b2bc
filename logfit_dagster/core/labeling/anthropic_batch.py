"""Claude through the Message Batches API: one request per window, polled until the batch ends."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import anthropic

from logfit_dagster.core.errors import LabelerError
from logfit_dagster.core.labeling.base import BatchLabeler, Reply, Request
from logfit_dagster.core.labeling.prompt import REPLY_SCHEMA, PromptSpec

# Limits of one Message Batch.
MAX_BATCH_REQUESTS = 100_000
MAX_BATCH_BYTES = 256 * 1024 * 1024

TOOL_NAME = "record_labels"
TOOL = {
    "name": TOOL_NAME,
    "description": "Record the LOOK/SKIP label of every numbered log line.",
    "input_schema": REPLY_SCHEMA,
}
# Errors that the same request will meet again: resubmitting them only costs.
FINAL_ERRORS = {
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "not_found_error",
}


class AnthropicBatchLabeler(BatchLabeler):
    """Labels windows with Claude through Message Batches, with tool use for structured output."""

    name = "anthropic_batch"
    paid = True

    def __init__(
        self,
        *,
        api_key: str,
        model: str = "claude-haiku-4-5",
        base_url: str | None = None,
        max_tokens: int = 8192,
        max_resubmits: int = 2,
        poll_interval_s: float = 10.0,
        max_poll_interval_s: float = 300.0,
        max_wait_s: float = 26 * 3600.0,
        max_batch_requests: int = MAX_BATCH_REQUESTS,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_retries: int = 4,
    ):
        if not api_key:
            raise LabelerError(
                "AnthropicBatchLabeler needs an API key: set the ANTHROPIC_API_KEY environment variable"
            )
        self.model = model
        self.max_tokens = max_tokens
        self.max_resubmits = max_resubmits
        self.poll_interval_s = poll_interval_s
        self.max_poll_interval_s = max_poll_interval_s
        self.max_wait_s = max_wait_s
        self.max_batch_requests = min(max_batch_requests, MAX_BATCH_REQUESTS)
        self.max_batch_bytes = min(max_batch_bytes, MAX_BATCH_BYTES)
        self.client = anthropic.Anthropic(
            api_key=api_key, base_url=base_url, max_retries=max_retries
        )

    def close(self) -> None:
        self.client.close()

    def _params(self, request: Request, prompt: PromptSpec) -> dict:
        return {
            "custom_id": request.custom_id,
            "params": {
                "model": self.model,
                "max_tokens": self.max_tokens,
                "system": prompt.system,
                "tools": [TOOL],
                "tool_choice": {"type": "tool", "name": TOOL_NAME},
                "messages": [
                    {
                        "role": "user",
                        "content": request.user_message(),
                    }
                ],
            },
        }

    def chunks(self, requests: list[Request], prompt: PromptSpec) -> Iterable[list[Request]]:
        chunk: list[Request] = []
        size = 0
        for request in requests:
            request_bytes = len(json.dumps(self._params(request, prompt)).encode())
            if chunk and (
                len(chunk) >= self.max_batch_requests or size + request_bytes > self.max_batch_bytes
            ):
                yield chunk
                chunk, size = [], 0
            chunk.append(request)
            size += request_bytes
        if chunk:
            yield chunk

    @contextmanager
    def _refusals_are_final(self):
        """A refused key or model fails the run at once: retrying cannot help."""
        try:
            yield
        except (
            anthropic.AuthenticationError,
            anthropic.PermissionDeniedError,
            anthropic.NotFoundError,
            anthropic.BadRequestError,
        ) as exc:
            raise LabelerError(
                f"{self.name} ({self.model}) was refused: HTTP {exc.status_code}: {exc.message}"
            ) from None

    def submit(self, requests: list[Request], prompt: PromptSpec) -> str:
        with self._refusals_are_final():
            batch = self.client.messages.batches.create(
                requests=[self._params(r, prompt) for r in requests]
            )
        return batch.id

    def collect(self, batch_id: str) -> Iterator[Reply]:
        with self._refusals_are_final():
            yield from self._collect(batch_id)

    def _collect(self, batch_id: str) -> Iterator[Reply]:
        waited = 0.0
        interval = self.poll_interval_s
        while True:
            batch = self.client.messages.batches.retrieve(batch_id)
            if batch.processing_status == "ended":
                break
            if waited >= self.max_wait_s:
                raise LabelerError(
                    f"batch {batch_id} has not ended after {waited:.0f} s; it stays in the "
                    "journal and the next run collects it"
                )
            time.sleep(interval)
            waited += interval
            interval = min(interval * 2, self.max_poll_interval_s)
        for item in self.client.messages.batches.results(batch_id):
            yield _reply(item)


def _reply(item) -> Reply:
    result = item.result
    if result.type == "succeeded":
        message = result.message
        payload = None
        texts = []
        for block in message.content:
            if block.type == "tool_use" and block.name == TOOL_NAME:
                payload = block.input
            elif block.type == "text":
                texts.append(block.text)
        if payload is None:
            payload = "".join(texts)
        return Reply(
            item.custom_id,
            payload,
            input_tokens=message.usage.input_tokens or 0,
            output_tokens=message.usage.output_tokens or 0,
        )
    if result.type == "errored":
        error = getattr(result.error, "error", None)
        kind = getattr(error, "type", "error")
        text = getattr(error, "message", "")
        return Reply(
            item.custom_id, error=f"errored: {kind}: {text}", retryable=kind not in FINAL_ERRORS
        )
    return Reply(item.custom_id, error=result.type, retryable=True)  # canceled, expired
