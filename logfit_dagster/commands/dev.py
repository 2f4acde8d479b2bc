"""``logfit dev``: the Dagster UI, daemon and code location, stopped together."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from logfit_dagster.cli import ensure_dagster_home


def cmd_dev(args: argparse.Namespace) -> int:
    """Serve the UI, the daemon and the code location with ``dagster dev``, and stop all of
    them on SIGTERM or SIGINT (Ctrl-C), even when started in the background."""
    import signal
    import subprocess

    home = ensure_dagster_home()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    # the interpreter that runs logfit runs dagster too: no dagster needed on PATH (an
    # unactivated .venv/bin/logfit), and the code location is named, not looked up in the
    # working folder's pyproject.toml, so that logfit dev works from any folder
    named = any(
        a in ("-m", "-f", "-w", "--module-name", "--python-file", "--workspace") for a in rest
    )
    location = [] if named else ["-m", "logfit_dagster.definitions"]
    command = [
        sys.executable,
        "-m",
        "dagster",
        "dev",
        "--host",
        args.host,
        "--port",
        str(args.port),
        *location,
        *rest,
    ]
    print(f"DAGSTER_HOME={home}\nthe UI: http://{args.host}:{args.port}", flush=True)

    def default_interrupt() -> None:
        # A shell starts background jobs with SIGINT ignored, and a child inherits that:
        # dagster dev could then not be stopped gracefully. It gets the default back.
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    # dagster dev says on every start that `dg dev` supersedes it; logfit dev is the command
    # here, so that line only confuses
    quiet = "ignore:Function `dev_command` is superseded"
    env = {**os.environ}
    env["PYTHONWARNINGS"] = ",".join(w for w in (env.get("PYTHONWARNINGS"), quiet) if w)
    server = subprocess.Popen(
        command, start_new_session=True, preexec_fn=default_interrupt, env=env
    )
    stopping = []

    def stop(signum, frame) -> None:
        # only noted here: the stop runs in the main loop below (a wait inside a signal
        # handler would wait on the lock of the wait it interrupted, until its timeout)
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            code = server.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if stopping:
                _stop_process_group(server, grace=DEV_SHUTDOWN_GRACE_SECONDS)
                return 0
    return 0 if stopping else code


DEV_SHUTDOWN_GRACE_SECONDS = 20


def _stop_process_group(server, grace: float) -> None:
    """dagster dev's graceful stop (SIGINT), then SIGTERM, then SIGKILL to its whole group:
    the webserver, the daemon and the code servers go with it."""
    import signal

    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig) if sig != signal.SIGINT else server.send_signal(sig)
        except ProcessLookupError:
            pass
        if not _wait_for_group(server, wait):
            continue
        # the leader is gone: make sure nothing of its group is left behind
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return


def _wait_for_group(server, timeout: float) -> bool:
    """Wait for dagster dev to exit; once the webserver, daemon and code servers it started
    are gone for a second, its own exit is not waited for (it can linger for half a minute
    with nothing left to stop). Whether it is done."""
    import subprocess

    deadline = time.monotonic() + timeout
    alone_since = None
    while time.monotonic() < deadline:
        try:
            server.wait(timeout=0.2)
            return True
        except subprocess.TimeoutExpired:
            pass
        if _group_members(server.pid) - {server.pid}:
            alone_since = None
        elif alone_since is None:
            alone_since = time.monotonic()
        elif time.monotonic() - alone_since > 1.0:
            server.kill()
            server.wait()
            return True
    return False


def _group_members(pgid: int) -> set[int]:
    """The processes of a process group (Linux's /proc); just the leader where unreadable."""
    members = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # field 5 of stat: the process group
            members.add(int(entry.name))
    return members or {pgid}
