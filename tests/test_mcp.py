"""``logfit mcp`` through the SDK's own client: a real server process over stdio and over
streamable HTTP, on a small materialized lineage; refusals as MCP errors; bounded replies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from logfit_dagster.mcp_server import MAX_REPLY_BYTES, Lineage, bounded
from tests.processes import free_port, run_logfit, stop

TOOLS = {
    "list_sources",
    "top_look_lines",
    "anomalous_sessions",
    "search_templates",
    "explain_line",
    "score_lines",
    "materialize",
}


def test_a_reply_is_cut_to_its_bound_and_says_so():
    payload = {"source": "x", "items": [{"raw": "y" * 500, "n": i} for i in range(200)]}
    cut = bounded(payload)
    assert len(json.dumps(cut).encode()) <= MAX_REPLY_BYTES
    assert 0 < len(cut["items"]) < 200 and "of 200 shown" in cut["truncated"]
    assert bounded({"items": [1, 2]}) == {"items": [1, 2]}


def test_only_paths_under_the_allowed_roots_are_read(tmp_path):
    inside = tmp_path / "logs" / "app.log"
    inside.parent.mkdir()
    inside.write_text("INFO ok\n")
    (tmp_path / "logs" / "escape.log").symlink_to("/etc/hostname")
    lineage = Lineage(tmp_path / "data", [inside.parent.resolve()])
    assert lineage.allowed(str(inside)) == inside.resolve()
    for outside in (
        "/etc/passwd",
        str(tmp_path / "logs" / ".." / "x.log"),
        str(tmp_path / "logs" / "escape.log"),
    ):
        with pytest.raises(PermissionError, match="outside the allowed roots"):
            lineage.allowed(outside)


def _call(session, name: str, arguments: dict):
    import anyio  # noqa: F401 (the client's event loop)

    return session.call_tool(name, arguments)


async def _exchange(session, data: Path, log: Path) -> dict:
    """Every tool once, and the resource; what each returned."""
    await session.initialize()
    listed = await session.list_tools()
    out = {"tools": {t.name for t in listed.tools}}
    for name, arguments in [
        ("list_sources", {}),
        ("top_look_lines", {"source": "tiny_hdfs", "limit": 5}),
        ("anomalous_sessions", {"source": "tiny_hdfs", "limit": 3}),
        ("search_templates", {"source": "tiny_hdfs", "query": "block", "limit": 5}),
        (
            "explain_line",
            {"line": "081109 204655 556 WARN dfs.DataNode: java.io.IOException: Connection reset"},
        ),
        ("score_lines", {"path": str(log)}),
        ("score_lines", {"path": "/etc/passwd"}),
        ("materialize", {"source": "tiny_hdfs"}),
        ("top_look_lines", {"source": "no_such_source"}),
    ]:
        result = await session.call_tool(name, arguments)
        text = result.content[0].text if result.content else ""
        out.setdefault(name, []).append((result.is_error, text))
    resource = await session.read_resource("logfit://metrics_overview")
    out["overview"] = resource.contents[0].text
    return out


def _check(out: dict, data: Path, log: Path) -> None:
    assert out["tools"] == TOOLS
    for name, replies in out.items():
        if name not in TOOLS:
            continue
        for _, text in replies:
            assert len(text.encode()) <= MAX_REPLY_BYTES + 1000, name
            assert "sk-" not in text and "api_key" not in text.lower()
    sources = json.loads(out["list_sources"][0][1])
    assert {s["source"] for s in sources["sources"]} == {"tiny_hdfs", "tiny_bgl"}
    hdfs = next(s for s in sources["sources"] if s["source"] == "tiny_hdfs")
    assert hdfs["lines"] == 12000 and sources["line_champion"]["family"] == "line_tfidf"

    error, text = out["top_look_lines"][0]
    top = json.loads(text)
    scored = pd.read_parquet(data / "assets" / "scored_lines" / "tiny_hdfs.parquet")
    assert not error and top["look_lines"] == int((scored["label"] == "LOOK").sum())
    best = scored[scored["label"] == "LOOK"]["probability"].max()
    assert top["items"][0]["probability"] == pytest.approx(best, abs=1e-4)

    error, text = out["anomalous_sessions"][0]
    assert not error, text
    anomalous = json.loads(text)
    # scored by the source's session champion (chosen across families on dev)
    family, kind = anomalous["model"].split(":")
    assert family in ("session_counts", "template_lm")
    if family == "session_counts":
        model = pd.read_parquet(data / "assets" / "session_model" / "tiny_hdfs.parquet")
        chosen = model[model["model"] == kind]
    else:
        model = pd.read_parquet(data / "assets" / "template_lm" / "tiny_hdfs.parquet")
        chosen = model[model["method"] == kind]
    assert anomalous["items"][0]["score"] == pytest.approx(chosen["score"].max(), abs=1e-4)
    assert anomalous["items"][0]["text"], "the session's lines are shown"

    templates = json.loads(out["search_templates"][0][1])
    assert all("block" in t["template"].lower() for t in templates["items"])
    explained = json.loads(out["explain_line"][0][1])
    assert 0 <= explained["probability"] <= 1 and explained["nearest"][0]["reason"]

    scored_file, refused, materialize, unknown = (
        out["score_lines"][0],
        out["score_lines"][1],
        out["materialize"][0],
        out["top_look_lines"][1],
    )
    assert not scored_file[0] and json.loads(scored_file[1])["lines"] == 3
    assert refused[0] and "outside the allowed roots" in refused[1]
    assert materialize[0] and "--allow-materialize" in materialize[1]
    assert unknown[0] and "not materialized" in unknown[1]
    assert "| unit" in out["overview"] and "tiny_hdfs" in out["overview"]


@pytest.fixture(scope="module")
def lineage(tmp_path_factory):
    """A small materialized lineage, made once for the module."""
    workdir = tmp_path_factory.mktemp("mcp")
    (workdir / "data").mkdir()
    (workdir / "sources.yaml").write_text(
        "sources:\n"
        # enough blocks for anomalous test sessions: a session model is trained
        "  - {name: tiny_hdfs, origin: synthetic, kind: hdfs, lines: 12000, seed: 5}\n"
        "  - {name: tiny_bgl, origin: synthetic, kind: bgl, lines: 800, seed: 12}\n"
    )
    env = {
        "LOGFIT_DATA_DIR": str(workdir / "data"),
        "LOGFIT_SOURCES": str(workdir / "sources.yaml"),
    }
    result = run_logfit(workdir, "materialize", "--job", "source_lineage_job", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_logfit(workdir, "materialize", "--job", "line_model_job", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_logfit(
        workdir, "materialize", "tiny_hdfs", "tiny_bgl", "--job", "scoring_job", env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logs = workdir / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("INFO started\nERROR disk 3 failed: timeout\nINFO done\n")
    return workdir, env


@pytest.mark.slow
def test_every_tool_over_stdio_answers_from_the_assets(lineage):
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.stdio import StdioServerParameters, stdio_client

    workdir, env = lineage
    log = workdir / "logs" / "app.log"
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "logfit_dagster.cli", "mcp", "--root", str(log.parent)],
        env={**os.environ, **env},
        cwd=str(workdir),
    )

    async def main():
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            return await _exchange(session, workdir / "data", log)

    _check(anyio.run(main), workdir / "data", log)


@pytest.mark.slow
def test_the_http_transport_on_loopback(lineage):
    import anyio
    from mcp.client.session import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    workdir, env = lineage
    log = workdir / "logs" / "app.log"
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "logfit_dagster.cli",
            "mcp",
            "--http",
            str(port),
            "--root",
            str(log.parent),
        ],
        cwd=workdir,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        import socket

        while True:
            assert proc.poll() is None, "the server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the server never listened"
                time.sleep(0.3)

        async def main():
            async with (
                streamable_http_client(f"http://127.0.0.1:{port}/mcp") as (
                    read,
                    write,
                    *_,
                ),
                ClientSession(read, write) as session,
            ):
                return await _exchange(session, workdir / "data", log)

        _check(anyio.run(main), workdir / "data", log)
    finally:
        stop(proc)


@pytest.mark.slow
def test_since_keeps_what_arrived_after_a_time(lineage):
    """A source that grew: ``since`` a time between the two materializations keeps the new
    lines only (run last: it grows the module's lineage)."""
    import datetime as dt

    workdir, env = lineage
    between = dt.datetime.now(dt.UTC).isoformat()
    time.sleep(1.5)
    registry = workdir / "sources.yaml"
    registry.write_text(registry.read_text().replace("lines: 800", "lines: 900"))
    for job in ("ingest_job", "scoring_job"):
        result = run_logfit(workdir, "materialize", "tiny_bgl", "--job", job, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    lineage_view = Lineage(workdir / "data", [workdir])
    assert lineage_view.lines_before("tiny_bgl", between) == 800
    assert lineage_view.lines_before("tiny_bgl", "2000-01-01") == 0
    assert lineage_view.lines_before("tiny_bgl", "0m") == 900  # a span back from now
    with pytest.raises(ValueError, match="give an ISO time"):
        lineage_view.lines_before("tiny_bgl", "soon")
