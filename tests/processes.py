"""Helpers for tests that start servers and workers: free ports, stopping process groups."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Terminate a process started with ``start_new_session=True`` and all its children."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def as_unprivileged_user(function, *args):
    """``function(*args)`` in a forked child running as ``nobody`` when this process is root
    (root reads any file, so a permission test would prove nothing), else in this process.

    The child shares the parent's loaded modules (nothing is imported after the switch) and
    sends back the pickled result, or the exception it raised.
    """
    import pickle
    import pwd

    if os.geteuid() != 0:
        return function(*args)
    nobody = pwd.getpwnam("nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            outcome = ("ok", function(*args))
        except BaseException as exc:  # sent to the parent, raised there
            outcome = ("error", exc)
        with os.fdopen(write_end, "wb") as out:
            pickle.dump(outcome, out)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as source:
        data = source.read()
    os.waitpid(pid, 0)
    kind, value = pickle.loads(data)
    if kind == "error":
        raise value
    return value


def run_logfit(workdir, *argv: str, env: dict | None = None, timeout: float = 300):
    """``logfit ARGV`` in a fresh process in ``workdir``, its Dagster instance under the data
    folder (``DAGSTER_HOME`` unset); the completed process, whatever its status."""
    import sys

    environment = {**os.environ, **(env or {})}
    environment.pop("DAGSTER_HOME", None)
    return subprocess.run(
        [sys.executable, "-m", "logfit_dagster.cli", *argv],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
