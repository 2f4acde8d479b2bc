"""Small HTTP servers on 127.0.0.1 speaking the Anthropic Message Batches and OpenAI chat
completions protocols, with a deterministic "model" and injectable faults.

The model labels a line LOOK when it mentions an error, a failure, an exception or a warning,
else SKIP, so tests know every right answer. ``fault(custom_id_or_key, attempt)`` returns the
fault to inject for a request (None for a good answer): ``expired``, ``errored``, ``malformed``,
``missing_line``, ``absolute_numbers``, ``fenced``, ``flipped`` (every label the wrong
way round), ``429``, ``500``, ``dies`` (the connection drops before an answer); for a session judged
whole (structured output ``session_label``): ``prose`` (the label in a sentence).
"""

from __future__ import annotations

import collections
import itertools
import json
import re
import socket
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOOK_WORDS = re.compile(r"(?i)error|fail|exception|warn")
NUMBERED = re.compile(r"^(\d+): (.*)$", re.MULTILINE)
# A session is judged anomalous when a line says one of these.
SESSION_WORDS = re.compile(r"(?i)exception|error|fail|warn|corrupt|unexpected")


def expected_label(line: str) -> str:
    return "LOOK" if LOOK_WORDS.search(line) else "SKIP"


def answer(user_text: str, fault: str | None) -> tuple[object, int]:
    """The model's labels for a rendered window, and the output tokens they cost."""
    numbered = [(int(n), text) for n, text in NUMBERED.findall(user_text)]
    only = re.search(r"^Label only lines ([\d, ]+),", user_text, re.MULTILINE)
    if only:  # the other lines are context: answer as told
        wanted = {int(n) for n in only.group(1).split(",")}
        numbered = [(n, text) for n, text in numbered if n in wanted]
    start = int(re.search(r"Lines (\d+)-", user_text).group(1))
    entries = [{"line": n, "label": expected_label(text), "reason": "fake"} for n, text in numbered]
    if fault == "flipped":
        entries = [{**e, "label": "SKIP" if e["label"] == "LOOK" else "LOOK"} for e in entries]
    if fault == "missing_line" and entries:
        entries = entries[:-1]
    if fault == "absolute_numbers":
        entries = [{**e, "line": e["line"] + start - 1} for e in entries]
    if fault == "lowercase":
        entries = [{**e, "label": e["label"].lower()} for e in entries]
    return entries, 12 * len(entries) + 5


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class FakeLLMServer:
    """Base: a threaded server; subclasses implement ``handle``."""

    def __init__(self, api_key: str = "test-key-not-secret"):
        self.api_key = api_key
        self.fault = lambda key, attempt: None
        self.lock = threading.RLock()
        self.attempts: collections.Counter = collections.Counter()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                owner.handle(self, "GET", None)

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                if (self.headers.get("content-type") or "").startswith("multipart/form-data"):
                    body = {"_multipart": raw, "_content_type": self.headers["content-type"]}
                else:
                    body = json.loads(raw or b"{}")
                owner.handle(self, "POST", body)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def send_json(handler, status: int, payload, headers: dict | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def next_attempt(self, key: str) -> int:
        with self.lock:
            attempt = self.attempts[key]
            self.attempts[key] += 1
            return attempt


class FakeAnthropic(FakeLLMServer):
    """POST /v1/messages/batches, GET /v1/messages/batches/{id}, GET .../results (JSONL)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.batches: dict[str, dict] = {}
        self.create_statuses: list[int] = []  # statuses to answer the next creates with
        self.polls_before_end = 1
        self.hold = False  # batches stay in progress while set
        self.ids = itertools.count(1)
        self.submitted: collections.Counter = collections.Counter()

    def _batch_json(self, batch_id: str) -> dict:
        batch = self.batches[batch_id]
        now = datetime.now(UTC)
        ended = batch["status"] == "ended"
        counts = collections.Counter(r["result"]["type"] for r in batch["results"]) if ended else {}
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": batch["status"],
            "request_counts": {
                "processing": 0 if ended else len(batch["requests"]),
                "succeeded": counts.get("succeeded", 0),
                "errored": counts.get("errored", 0),
                "canceled": counts.get("canceled", 0),
                "expired": counts.get("expired", 0),
            },
            "created_at": batch["created"].isoformat(),
            "expires_at": (batch["created"] + timedelta(hours=24)).isoformat(),
            "ended_at": now.isoformat() if ended else None,
            "archived_at": None,
            "cancel_initiated_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch_id}/results" if ended else None,
        }

    def _result(self, request: dict) -> dict:
        custom_id = request["custom_id"]
        attempt = self.next_attempt(custom_id)
        fault = self.fault(custom_id, attempt)
        if fault in ("expired", "canceled"):
            return {"custom_id": custom_id, "result": {"type": fault}}
        if fault == "errored":
            return {
                "custom_id": custom_id,
                "result": {
                    "type": "errored",
                    "error": {"type": "error", "error": {"type": "api_error", "message": "boom"}},
                },
            }
        params = request["params"]
        user = params["messages"][0]["content"]
        entries, out_tokens = answer(user, fault)
        if fault == "malformed":
            content = [{"type": "text", "text": '[{"line": 1, "label": "LOOK"'}]
        elif fault == "fenced":
            content = [{"type": "text", "text": "Here:\n```json\n" + json.dumps(entries) + "\n```"}]
        else:
            content = [
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "record_labels",
                    "input": {"labels": entries},
                }
            ]
        in_tokens = (len(params["system"]) + len(user)) // 4
        return {
            "custom_id": custom_id,
            "result": {
                "type": "succeeded",
                "message": {
                    "id": f"msg_{custom_id}",
                    "type": "message",
                    "role": "assistant",
                    "model": params["model"],
                    "content": content,
                    "stop_reason": "tool_use",
                    "stop_sequence": None,
                    "usage": {"input_tokens": in_tokens, "output_tokens": out_tokens},
                },
            },
        }

    def handle(self, handler, method: str, body) -> None:
        sent = handler.headers.get("x-api-key") or handler.headers.get(
            "authorization", ""
        ).removeprefix("Bearer ")
        if sent != self.api_key:
            # real APIs do not echo keys; this one does, to prove that logfit scrubs them
            self.send_json(
                handler,
                401,
                {
                    "type": "error",
                    "error": {
                        "type": "authentication_error",
                        "message": f"invalid x-api-key {sent}",
                    },
                },
            )
            return
        path = handler.path.split("?")[0]
        if method == "POST" and path == "/v1/messages/batches":
            with self.lock:
                status = self.create_statuses.pop(0) if self.create_statuses else 200
            if status != 200:
                self.send_json(
                    handler,
                    status,
                    {
                        "type": "error",
                        "error": {"type": "rate_limit_error", "message": "slow down"},
                    },
                    {"retry-after-ms": "10"},
                )
                return
            batch_id = f"msgbatch_{next(self.ids):04d}"
            with self.lock:
                for request in body["requests"]:
                    self.submitted[request["custom_id"]] += 1
                self.batches[batch_id] = {
                    "requests": body["requests"],
                    "status": "in_progress",
                    "polls": 0,
                    "created": datetime.now(UTC),
                    "results": [],
                }
            self.send_json(handler, 200, self._batch_json(batch_id))
            return
        match = re.fullmatch(r"/v1/messages/batches/([\w-]+)(/results)?", path)
        if method == "GET" and match and match.group(1) in self.batches:
            batch_id = match.group(1)
            batch = self.batches[batch_id]
            if match.group(2):
                lines = [json.dumps(r) for r in batch["results"]]
                data = ("\n".join(lines) + "\n").encode()
                handler.send_response(200)
                handler.send_header("content-type", "application/binary")
                handler.send_header("content-length", str(len(data)))
                handler.end_headers()
                handler.wfile.write(data)
                return
            with self.lock:
                batch["polls"] += 1
                if (
                    batch["status"] != "ended"
                    and not self.hold
                    and batch["polls"] > self.polls_before_end
                ):
                    batch["results"] = [self._result(r) for r in batch["requests"]]
                    batch["status"] = "ended"
            self.send_json(handler, 200, self._batch_json(batch_id))
            return
        self.send_json(
            handler, 404, {"type": "error", "error": {"type": "not_found_error", "message": path}}
        )


class FakeOpenAI(FakeLLMServer):
    """POST /v1/chat/completions answering with json_schema structured output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.bodies: list[dict] = []

    def handle(self, handler, method: str, body) -> None:
        if handler.headers.get("authorization") != f"Bearer {self.api_key}":
            self.send_json(
                handler, 401, {"error": {"message": "bad key", "type": "invalid_request_error"}}
            )
            return
        if method != "POST" or handler.path.split("?")[0] != "/v1/chat/completions":
            self.send_json(handler, 404, {"error": {"message": handler.path}})
            return
        user = body["messages"][-1]["content"]
        key = user.split("\n\n", 1)[0] + "|" + ",".join(n for n, _ in NUMBERED.findall(user))
        attempt = self.next_attempt(key)
        fault = self.fault(key, attempt)
        with self.lock:
            self.calls += 1
            self.bodies.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            threading.Event().wait(0.02)
            if fault == "dies":  # the server goes away mid-request: no answer at all
                handler.close_connection = True
                handler.connection.shutdown(socket.SHUT_RDWR)
                return
            if fault in ("429", "500", "502", "503"):
                self.send_json(
                    handler,
                    int(fault),
                    {"error": {"message": "try later", "type": "server_error"}},
                    {"retry-after-ms": "10"},
                )
                return
            schema = (body.get("response_format") or {}).get("json_schema") or {}
            if schema.get("name") == "session_label":  # a whole session to judge
                word = "anomalous" if SESSION_WORDS.search(user) else "normal"
                text, out_tokens = json.dumps({"label": word, "reason": "fake"}), 9
                if fault == "prose":
                    text = f"I think this session is {word}."
            else:
                entries, out_tokens = answer(user, fault)
                text = json.dumps({"labels": entries})
            if fault == "malformed":
                text = text[: len(text) // 2]
            self.send_json(
                handler,
                200,
                {
                    "id": f"chatcmpl-{self.calls}",
                    "object": "chat.completion",
                    "created": 0,
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": text, "refusal": None},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {
                        "prompt_tokens": len(json.dumps(body["messages"])) // 4,
                        "completion_tokens": out_tokens,
                        "total_tokens": 0,
                    },
                },
            )
        finally:
            with self.lock:
                self.in_flight -= 1


class FakeOpenAIFineTuning(FakeOpenAI):
    """The files and fine-tuning jobs protocol besides chat completions.

    A job moves one state per retrieve: validating_files, queued, then ``running_polls``
    retrieves of running (each logs a metrics event with the reward), then succeeded (or
    ``outcome``: failed, cancelled). ``jobs_created`` counts what was paid for.
    """

    def __init__(self, running_polls: int = 3, outcome: str = "succeeded", **kwargs):
        super().__init__(**kwargs)
        self.running_polls = running_polls
        self.outcome = outcome
        self.files: dict[str, bytes] = {}
        self.jobs: dict[str, dict] = {}
        self.events: dict[str, list[dict]] = {}
        self.retrieves: collections.Counter = collections.Counter()
        self.jobs_created = 0

    def _event(self, job_id: str, message: str, kind: str = "message", data=None) -> None:
        events = self.events.setdefault(job_id, [])
        events.append(
            {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{job_id}-{len(events) + 1}",
                "created_at": len(events) + 1,
                "level": "info",
                "message": message,
                "type": kind,
                "data": data,
            }
        )

    def handle(self, handler, method: str, body) -> None:
        path = handler.path.split("?")[0]
        if not path.startswith(("/v1/files", "/v1/fine_tuning/jobs")):
            super().handle(handler, method, body)
            return
        if handler.headers.get("authorization") != f"Bearer {self.api_key}":
            self.send_json(handler, 401, {"error": {"message": "bad key"}})
            return
        with self.lock:
            if method == "POST" and path == "/v1/files":
                import email.parser

                message = email.parser.BytesParser().parsebytes(
                    b"Content-Type: "
                    + body["_content_type"].encode()
                    + b"\r\n\r\n"
                    + body["_multipart"]
                )
                parts = {
                    p.get_param("name", header="content-disposition"): p
                    for p in message.get_payload()
                }
                content = parts["file"].get_payload(decode=True)
                file_id = f"file-{len(self.files) + 1}"
                self.files[file_id] = content
                self.send_json(
                    handler,
                    200,
                    {
                        "id": file_id,
                        "object": "file",
                        "bytes": len(content),
                        "created_at": 0,
                        "filename": parts["file"].get_filename(),
                        "purpose": "fine-tune",
                        "status": "processed",
                    },
                )
                return
            if method == "POST" and path == "/v1/fine_tuning/jobs":
                missing = [
                    f
                    for f in (body.get("training_file"), body.get("validation_file"))
                    if f not in self.files
                ]
                method_ = body.get("method") or {}
                if (
                    missing
                    or method_.get("type") != "reinforcement"
                    or not method_.get("reinforcement", {}).get("grader")
                ):
                    self.send_json(handler, 400, {"error": {"message": f"bad job: {missing}"}})
                    return
                self.jobs_created += 1
                job_id = f"ftjob-{self.jobs_created}"
                self.jobs[job_id] = {
                    "id": job_id,
                    "object": "fine_tuning.job",
                    "created_at": 0,
                    "model": body["model"],
                    "status": "validating_files",
                    "fine_tuned_model": None,
                    "training_file": body["training_file"],
                    "validation_file": body["validation_file"],
                    "hyperparameters": {},
                    "organization_id": "org-test",
                    "result_files": [],
                    "seed": body.get("seed", 0),
                    "trained_tokens": None,
                    "error": None,
                    "finished_at": None,
                    "method": method_,
                }
                self._event(job_id, "Validating training file")
                self.send_json(handler, 200, self.jobs[job_id])
                return
            parts = path.split("/")  # ['', 'v1', 'fine_tuning', 'jobs', id, ...]
            job = self.jobs.get(parts[4]) if len(parts) > 4 else None
            if job is None:
                self.send_json(handler, 404, {"error": {"message": path}})
                return
            job_id = job["id"]
            if len(parts) == 5 and method == "GET":
                self._advance(job)
                self.send_json(handler, 200, job)
            elif parts[5] == "events":
                after = dict(
                    p.split("=", 1)
                    for p in (handler.path.split("?", 1) + [""])[1].split("&")
                    if "=" in p
                ).get("after")
                events = self.events.get(job_id, [])
                ids = [e["id"] for e in events]
                start = ids.index(after) + 1 if after in ids else 0
                page = list(reversed(events[start:]))  # newest first, as OpenAI lists them
                self.send_json(handler, 200, {"object": "list", "data": page, "has_more": False})
            elif parts[5] == "checkpoints":
                data = (
                    [
                        {
                            "id": f"ftckpt-{job_id}-{step}",
                            "object": "fine_tuning.job.checkpoint",
                            "created_at": step,
                            "fine_tuned_model_checkpoint": f"ft:{job['model']}:logfit:ckpt-step-{step}",
                            "fine_tuning_job_id": job_id,
                            "metrics": {},
                            "step_number": step,
                        }
                        for step in range(1, self.running_polls + 1)
                    ]
                    if job["status"] == "succeeded"
                    else []
                )
                self.send_json(handler, 200, {"object": "list", "data": data, "has_more": False})
            elif parts[5] == "cancel" and method == "POST":
                job["status"] = "cancelled"
                self.send_json(handler, 200, job)
            else:
                self.send_json(handler, 404, {"error": {"message": path}})

    def _advance(self, job: dict) -> None:
        job_id = job["id"]
        self.retrieves[job_id] += 1
        n = self.retrieves[job_id]
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        if n == 1:
            job["status"] = "queued"
        elif n - 1 <= self.running_polls:
            job["status"] = "running"
            step = n - 1
            self._event(
                job_id,
                f"Step {step}/{self.running_polls}",
                "metrics",
                {"step": step, "train_reward_mean": 0.2 * step, "valid_reward_mean": 0.15 * step},
            )
        elif self.outcome == "succeeded":
            job["status"] = "succeeded"
            job["fine_tuned_model"] = f"ft:{job['model']}:logfit::{job_id}"
            job["trained_tokens"] = 12345
            self._event(job_id, "The job has successfully completed")
        else:
            job["status"] = self.outcome
            job["error"] = {"code": "invalid_grader", "message": "grader raised", "param": None}
            self._event(job_id, f"The job {self.outcome}", data=None)
