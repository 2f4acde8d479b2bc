"""``logfit dev``: the Dagster UI, daemon and code location, stopped together."""

from __future__ import annotations

import argparse
import os

from logfit_dagster.cli import ensure_dagster_home


def cmd_dev(args: argparse.Namespace) -> int:
    """Serve the UI, the daemon and the code location with ``dagster dev``, and stop all of
    them on SIGTERM or SIGINT (Ctrl-C), even when started in the background."""
    import shutil
    import signal
    import subprocess

    home = ensure_dagster_home()
    rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    command = [
        shutil.which("dagster") or "dagster",
        "dev",
        "--host",
        args.host,
        "--port",
        str(args.port),
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
        stopping.append(signum)
        if len(stopping) == 1:
            _stop_process_group(server, grace=DEV_SHUTDOWN_GRACE_SECONDS)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = server.wait()
    if not stopping:
        return code
    return 0


DEV_SHUTDOWN_GRACE_SECONDS = 20


def _stop_process_group(server, grace: float) -> None:
    """dagster dev's graceful stop (SIGINT), then SIGTERM, then SIGKILL to its whole group:
    the webserver, the daemon and the code servers go with it."""
    import signal
    import subprocess

    for sig, wait in ((signal.SIGINT, grace), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(server.pid, sig) if sig != signal.SIGINT else server.send_signal(sig)
        except ProcessLookupError:
            pass
        try:
            server.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone: make sure nothing of its group is left behind
        try:
            os.killpg(server.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return
