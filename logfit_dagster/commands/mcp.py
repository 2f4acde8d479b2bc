"""``logfit mcp``: the lineage over the Model Context Protocol, for coding agents."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from logfit_dagster.paths import data_dir


def cmd_mcp(args: argparse.Namespace) -> int:
    """Serve the lineage's tools over stdio (default) or streamable HTTP on 127.0.0.1."""
    from logfit_dagster.mcp_server import Lineage, build_server

    roots = [Path(r).expanduser().resolve() for r in (args.root or [Path.cwd()])]
    missing = [str(r) for r in roots if not r.is_dir()]
    if missing:
        print(f"logfit: --root {', '.join(missing)}: not a folder", file=sys.stderr)
        return 2
    lineage = Lineage(data_dir(), roots, allow_materialize=args.allow_materialize)
    server = build_server(lineage)
    if args.http:
        print(f"logfit mcp: http://127.0.0.1:{args.http}/mcp", file=sys.stderr, flush=True)
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run("stdio")
    return 0
