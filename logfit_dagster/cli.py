"""The ``logfit`` command: materialize the lineage, manage sources, open the UI."""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from logfit_dagster.paths import default_dagster_home


def ensure_dagster_home() -> Path:
    """Use DAGSTER_HOME if set; otherwise keep Dagster's SQLite instance under data/."""
    home = os.environ.get("DAGSTER_HOME")
    if not home:
        home = str(default_dagster_home())
        os.environ["DAGSTER_HOME"] = home
    Path(home).mkdir(parents=True, exist_ok=True)
    config = Path(home) / "dagster.yaml"
    # SQLite storage under this folder (Dagster's default), no telemetry, and run monitoring:
    # under `logfit dev` the daemon fails a run whose worker died. (Runs of `logfit
    # materialize` itself are failed by the next command: see logfit_dagster/runs.py.)
    if not config.exists() or config.read_text() == _OLD_INSTANCE_CONFIG:
        _write_instance_config(Path(home))
    return Path(home)


def _write_instance_config(home: Path) -> None:
    """Write dagster.yaml, a fresh instance's storage made first.

    Dagster makes an instance's SQLite storage when it is first opened, and two processes
    opening a fresh one at once can both stamp its schema (alembic then finds "more than one
    head", and every later open fails). So the storage is made from a staged copy of the
    file before the file appears: whoever finds dagster.yaml (the UI, the MCP server, a
    second command) finds the storage whole. An flock keeps two logfit commands from making
    it at once.
    """
    import fcntl
    import tempfile

    config = home / "dagster.yaml"
    with open(home / ".instance.lock", "a+", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if config.exists() and config.read_text() != _OLD_INSTANCE_CONFIG:
            return  # another command wrote it meanwhile
        with tempfile.TemporaryDirectory(dir=home, prefix=".config-") as staging:
            staged = Path(staging) / "dagster.yaml"
            staged.write_text(INSTANCE_CONFIG)
            if not config.exists():
                import dagster as dg
                from dagster._core.instance.ref import InstanceRef

                ref = InstanceRef.from_dir(str(home), config_dir=staging)
                with dg.DagsterInstance.from_ref(ref):
                    pass
            os.replace(staged, config)


_OLD_INSTANCE_CONFIG = "telemetry:\n  enabled: false\n"
INSTANCE_CONFIG = (
    "telemetry:\n"
    "  enabled: false\n"
    "run_monitoring:\n"
    "  enabled: true\n"
    "  start_timeout_seconds: 180\n"
    "  cancel_timeout_seconds: 180\n"
    "  poll_interval_seconds: 30\n"
)


def _probability(text: str) -> float:
    """A threshold on a probability: a finite number strictly between 0 and 1."""
    import math

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _command(module: str, name: str):
    """A subcommand, imported only when it runs: ``logfit classify`` does not load Dagster."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(f"logfit_dagster.commands.{module}"), name)(args)

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="logfit",
        description="The logfit command: materialize the lineage, manage sources, open the UI.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("materialize", help="run the lineage for every source (or the ones named)")
    m.add_argument("sources", nargs="*", help="source names (default: every registered source)")
    m.add_argument(
        "--job",
        default=None,
        help="run only this job's assets (e.g. ingest_job, line_adaptation_job; `--job list` "
        "lists them); default: the whole lineage but the LLM judges and adapters and the line "
        "adaptation, in the stages the asset graph gives",
    )
    m.add_argument("--log-level", default="WARNING", help="Dagster console log level")
    m.add_argument(
        "--executor",
        choices=["auto", "in_process", "multiprocess"],
        default="auto",
        help="auto (default): in_process, but a source of over 128 MB of log (about a million "
        "lines) runs multiprocess; in_process: every step in this process; multiprocess: each "
        "run out of process with the code location's executor (LOGFIT_EXECUTOR, one process "
        "per step unless set otherwise)",
    )
    m.add_argument(
        "--parallel",
        type=int,
        default=None,
        metavar="N",
        help="run N runs side by side, the ingests included, each in a worker process and "
        "each as soon as what it reads is there (default: one per CPU, at most one per source "
        "and one more, under --executor auto without a big source; 1: one at a time, in this "
        "process)",
    )
    m.add_argument(
        "--force", action="store_true", help="recompute every asset, even the up-to-date ones"
    )
    m.add_argument(
        "--wait",
        action="store_true",
        help="when another logfit materialize holds the data folder, wait for it instead of "
        "refusing",
    )
    m.set_defaults(func=_command("materialize", "cmd_materialize"))
    s = sub.add_parser(
        "sources", help="list sources, enable Loghub systems, or download full Loghub data sets"
    )
    s.add_argument(
        "action",
        nargs="?",
        default="list",
        choices=["list", "enable-loghub", "datasets", "download"],
        help="datasets: the full Loghub data sets and their sizes; download: fetch and unpack "
        "some of them now (with a progress bar) instead of in the first run",
    )
    s.add_argument(
        "systems",
        nargs="*",
        help="Loghub systems for enable-loghub (default: all 16 2k samples), or full data sets "
        "for download and enable-loghub --full",
    )
    s.add_argument(
        "--full", action="store_true", help="enable-loghub: the full data sets, not the samples"
    )
    s.set_defaults(func=_command("sources", "cmd_sources"))
    c = sub.add_parser("classify", help="score a log file LOOK/SKIP with an exported model")
    c.add_argument("file", help="a log file, plain or .gz")
    c.add_argument(
        "--model",
        help="an artifact folder of any line family, or a TF-IDF JSON export (default: the line "
        "champion, data/models/line_champion)",
    )
    c.add_argument("--output", help="write every line scored to a .parquet or .jsonl file")
    c.add_argument("--force", action="store_true", help="replace the --output file when it exists")
    c.add_argument(
        "--max-line-chars",
        type=int,
        default=1_000_000,
        help="characters of one line held in memory (1,000,000); the rest of a longer line is "
        "read through, not kept, and counted in the output's cut_bytes column",
    )
    c.add_argument(
        "--threshold",
        type=_probability,
        default=None,
        help="LOOK threshold, between 0 and 1 (default: the model's)",
    )
    c.set_defaults(func=_command("classify", "cmd_classify"))
    t = sub.add_parser(
        "sessions",
        help="score the sessions of a log or sequence file with a source's session champion",
    )
    t.add_argument(
        "file",
        help="a log file, plain or .gz, in the source's format (a sequence file in its layout "
        "for a sequences source)",
    )
    t.add_argument("--source", required=True, help="the source whose format, sessions and model")
    t.add_argument(
        "--model",
        help="a session champion folder or a template_lm folder (default: the source's session "
        "champion, data/models/session_champion/<source>)",
    )
    t.add_argument(
        "--method",
        choices=["max_nll", "mean_nll", "perplexity", "topg_misses"],
        help="with a template model: which score flags a session (default: the champion's; "
        "topg_misses for a template_lm folder)",
    )
    t.add_argument("--output", help="write every session scored to a .parquet or .jsonl file")
    t.set_defaults(func=_command("sessions", "cmd_sessions"))
    mc = sub.add_parser(
        "mcp",
        help="serve the lineage to coding agents over MCP (stdio; --http PORT on 127.0.0.1)",
    )
    mc.add_argument("--http", type=int, default=0, help="serve streamable HTTP on this port")
    mc.add_argument(
        "--root",
        action="append",
        help="a folder whose log files score_lines may read (repeatable; default: this folder)",
    )
    mc.add_argument(
        "--allow-materialize",
        action="store_true",
        help="let agents materialize a source (off: the server is read-only)",
    )
    mc.set_defaults(func=_command("mcp", "cmd_mcp"))
    d = sub.add_parser(
        "dev",
        help="open the Dagster UI (dagster dev) with the instance under data/",
        add_help=False,  # -h is the host, as in dagster dev
        description="Serve the Dagster UI, the daemon and the code location; SIGTERM or Ctrl-C "
        "stops all of them. Arguments after -- go to dagster dev unchanged.",
    )
    d.add_argument("--help", action="help", help="show this help and exit")
    d.add_argument("-h", "--host", default="127.0.0.1", help="host to serve on (127.0.0.1)")
    d.add_argument("-p", "--port", type=int, default=3000, help="port to serve on (3000)")
    d.add_argument(
        "rest", nargs=argparse.REMAINDER, help="after --: more arguments for dagster dev"
    )
    d.set_defaults(func=_command("dev", "cmd_dev"))
    args = parser.parse_args(argv)
    # Dagster marks data versions and backfill policies as beta; a CLI user cannot act on that.
    warnings.filterwarnings("ignore", message=".*currently in beta")
    try:
        return args.func(args)
    except Exception as exc:  # the CLI prints what is wrong instead of a trace for bad input
        from logfit_dagster.core.errors import LogfitError

        if isinstance(exc, LogfitError):
            print(f"logfit: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
