"""Requests and tokens to label the 20 recorded sources from scratch, then after 10% growth.

The real AnthropicBatchLabeler and label cache run against a local server that speaks the
Message Batches protocol (tests/llm_servers.py), so requests, batches and the characters sent
are measured exactly; tokens are the labeler's own estimate (characters / 3.5 plus the prompt),
since Claude's tokenizer is not available offline. Growth appends 10% new lines to every source
(its first lines again, each marked as a replay); the second run must send only the windows
that changed.

    python benchmarks/labeling_requests.py -> benchmarks/results/labeling_requests.{json,md}
"""

import json
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import shared_data, write_results  # noqa: E402
from logfit_dagster.core.labeling.anthropic_batch import AnthropicBatchLabeler  # noqa: E402
from logfit_dagster.core.labeling.base import (  # noqa: E402
    CHARS_PER_TOKEN,
    OUTPUT_TOKENS_PER_LINE,
    PROMPT_OVERHEAD_TOKENS,
    label_source,
)
from logfit_dagster.core.labeling.cache import LabelCache  # noqa: E402
from logfit_dagster.core.labeling.prompt import DEFAULT_SYSTEM_PROMPT  # noqa: E402
from tests.llm_servers import NUMBERED, FakeAnthropic  # noqa: E402


def sent(server: FakeAnthropic, before: set[str]) -> tuple[int, int, int]:
    """Requests, estimated input and output tokens of the batches created after ``before``."""
    requests = chars = lines = 0
    for batch_id, batch in server.batches.items():
        if batch_id in before:
            continue
        for request in batch["requests"]:
            requests += 1
            params = request["params"]
            content = params["messages"][0]["content"]
            chars += len(params["system"]) + len(content)
            lines += len(NUMBERED.findall(content))
    tokens_in = int(chars / CHARS_PER_TOKEN) + requests * (
        PROMPT_OVERHEAD_TOKENS - int(len(DEFAULT_SYSTEM_PROMPT) / CHARS_PER_TOKEN)
    )
    return requests, tokens_in, lines * OUTPUT_TOKENS_PER_LINE


def main() -> None:
    sources = {}
    for path in sorted((shared_data() / "llm-labels").glob("*.jsonl")):
        sources[path.stem] = [json.loads(x)["raw_line"] for x in path.read_text().splitlines() if x]
    rows = []
    with FakeAnthropic() as server, tempfile.TemporaryDirectory() as tmp:
        cache = LabelCache(Path(tmp) / "cache.sqlite")

        def run(name, lines):
            before = set(server.batches)
            labeler = AnthropicBatchLabeler(
                api_key=server.api_key, base_url=server.url, poll_interval_s=0.01
            )
            _, stats = label_source(name, lines, labeler, cache=cache, window_size=50)
            return stats, *sent(server, before)

        for name, lines in sources.items():
            _, req1, tok1, out1 = run(name, lines)
            growth = [f"{line} [replayed]" for line in lines[: max(1, len(lines) // 10)]]
            second, req2, tok2, out2 = run(name, lines + growth)
            _, req3, _, _ = run(name, lines + growth)
            rows.append(
                {
                    "source": name,
                    "lines": len(lines),
                    "scratch_requests": req1,
                    "scratch_input_tokens_est": tok1,
                    "scratch_output_tokens_est": out1,
                    "new_lines": len(growth),
                    "grown_requests": req2,
                    "grown_cache_hits": second.cache_hits,
                    "grown_input_tokens_est": tok2,
                    "grown_output_tokens_est": out2,
                    "unchanged_rerun_requests": req3,
                }
            )
    table = pd.DataFrame(rows)
    total = table.drop(columns=["source"]).sum(numeric_only=True).to_dict()
    summary = {k: int(v) for k, v in total.items()}
    summary["grown_share_of_scratch_requests"] = round(
        summary["grown_requests"] / summary["scratch_requests"], 4
    )
    markdown = (
        "# Requests and tokens: 20 sources from scratch, then after 10% new lines\n\n"
        "Requests are measured; tokens are estimates (input: characters / 3.5 plus prompt "
        "overhead; output: 30 per line asked).\n\n"
        + table.to_markdown(index=False)
        + "\n\n"
        + "\n".join(f"- {k}: {v}" for k, v in summary.items())
        + "\n"
    )
    write_results("labeling_requests", {"per_source": rows, "summary": summary}, markdown)


if __name__ == "__main__":
    main()
