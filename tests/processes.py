"""Helpers for tests that start servers and workers: free ports, stopping process groups."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

# the environment's scripts (dagster, logfit), found even where it is not activated
BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen, timeout: float = 30, first: int = signal.SIGTERM) -> None:
    """Stop a process started with ``start_new_session=True`` and all its children: ``first``
    to the group, then SIGKILL after ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, first)
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


# What the UI sends to launch a backfill over assets and partitions.
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
  }
}
"""


class Server:
    """A ``dagster dev`` on 127.0.0.1: its GraphQL API and its instance."""

    def __init__(self, root: Path, port: int, env: dict):
        self.root, self.port, self.env = root, port, env
        self.url = f"http://127.0.0.1:{port}"
        self.home = Path(env["DAGSTER_HOME"])

    def graphql(self, query: str, **variables) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            payload = json.loads(response.read())
        assert "errors" not in payload, payload["errors"]
        return payload["data"]

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    def wait_for_runs(self, backfill_id: str, count: int, timeout: float = 420) -> list:
        deadline = time.monotonic() + timeout
        with self.instance() as instance:
            while time.monotonic() < deadline:
                runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
                if len(runs) == count and all(r.is_finished for r in runs):
                    return runs
                time.sleep(1)
        raise TimeoutError(f"backfill {backfill_id}: {count} finished runs not seen in {timeout}s")


def _wait_until_served(server: Server, proc: subprocess.Popen, log: Path, timeout=120) -> None:
    """Until the webserver answers and the code location has loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dagster dev exited with {proc.returncode}:\n{log.read_text()}")
        try:
            data = server.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { name "
                "locationOrLoadError { __typename } } } } }"
            )
            entries = data["workspaceOrError"]["locationEntries"]
            if entries and entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation":
                return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"dagster dev not serving after {timeout}s:\n{log.read_text()[-3000:]}")


@contextmanager
def dagster_dev(root: Path, env: dict):
    """``dagster dev`` (webserver and daemon) serving logfit's definitions from ``root``, with
    ``env`` (its ``DAGSTER_HOME`` made beforehand); stopped with Ctrl-C's signal on exit."""
    (root / "workspace.yaml").write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: logfit_dagster.definitions\n"
        "      location_name: logfit_dagster\n"
    )
    port = free_port()
    log_path = root / "dagster_dev.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(BIN / "dagster"), "dev", "-w", str(root / "workspace.yaml")]
            + ["-h", "127.0.0.1", "-p", str(port)],
            cwd=root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        served = Server(root, port, env)
        try:
            _wait_until_served(served, proc, log_path)
            yield served
        finally:
            # Ctrl-C's signal; a webserver that still holds a browser's connections open after
            # 5 s is killed (its data is the test's own)
            stop(proc, timeout=5, first=signal.SIGINT)
