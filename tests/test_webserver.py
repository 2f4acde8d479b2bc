"""logfit served by ``dagster dev`` on 127.0.0.1: backfills from the UI's API and the CLI, and
the UI itself in headless Chromium.

One webserver and daemon serve the module, with a temporary DAGSTER_HOME, four sources (three
synthetic and one whose files are missing) and the rule labeler.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from logfit_dagster.definitions import defs
from logfit_dagster.jobs import ingest_selection

from .conftest import PROJECT_ROOT
from .processes import BIN, LAUNCH_BACKFILL, dagster_dev

pytestmark = pytest.mark.slow

GOOD = ["tiny_hdfs", "tiny_bgl", "tiny_hdfs_b"]
# What the UI sends for "Materialize" over the ingest job's assets.
INGEST_ASSETS = sorted(
    k.to_user_string() for k in ingest_selection.resolve(defs.resolve_asset_graph())
)
CHROMIUM = "/usr/bin/chromium"
TERMINAL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    (root / "data").mkdir()
    home = root / "dagster_home"
    home.mkdir()
    # No newsletter dialog: it opens a second after the first page, over whatever is clicked then
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    (root / "sources.yaml").write_text(
        "sources:\n"
        "  - {name: tiny_hdfs, origin: synthetic, kind: hdfs, lines: 1500, seed: 11}\n"
        "  - {name: tiny_bgl, origin: synthetic, kind: bgl, lines: 800, seed: 12}\n"
        "  - {name: tiny_hdfs_b, origin: synthetic, kind: hdfs, lines: 1200, seed: 13}\n"
        f"  - {{name: broken, origin: files, format: generic, path: {root}/missing/*.log}}\n"
    )
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "LOGFIT_DATA_DIR": str(root / "data"),
        "LOGFIT_SOURCES": str(root / "sources.yaml"),
        "LOGFIT_LABELER": "rule",
        # Steps in the run's process keep this test quick on two cores; the run-per-partition
        # behaviour under test does not depend on the executor.
        "LOGFIT_EXECUTOR": "in_process",
        # Nothing but what the tests launch: no automation runs in between.
        "LOGFIT_AUTOMATION": "off",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("log_source", [*GOOD, "broken"])
    with dagster_dev(root, env) as served:
        yield served


BACKFILL_STATUS = """
query($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    ... on PartitionBackfill { status numPartitions }
    ... on PythonError { message }
  }
}
"""


def test_backfill_over_sources_runs_one_run_each_and_a_failure_stops_only_its_source(server):
    """What the UI's "Launch backfill" sends, over three good sources and a broken one."""
    result = server.graphql(
        LAUNCH_BACKFILL,
        params={
            "partitionNames": [*GOOD, "broken"],
            "assetSelection": [{"path": [key]} for key in INGEST_ASSETS],
            "title": "ingest every source",
        },
    )["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    backfill_id = result["backfillId"]

    deadline = time.monotonic() + 420
    status = None
    while time.monotonic() < deadline:
        status = server.graphql(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]
        if status["status"] in TERMINAL:
            break
        time.sleep(2)
    assert status["status"] == "COMPLETED_FAILED", status

    runs = server.wait_for_runs(backfill_id, 4, timeout=60)
    by_source = {r.tags["dagster/partition"]: r for r in runs}
    assert sorted(by_source) == sorted([*GOOD, "broken"])  # one run per source
    assert all(by_source[s].status == dg.DagsterRunStatus.SUCCESS for s in GOOD)
    assert by_source["broken"].status == dg.DagsterRunStatus.FAILURE
    with server.instance() as instance:
        failures = [
            e.dagster_event.step_failure_data.error.message
            for e in instance.all_logs(by_source["broken"].run_id)
            if e.dagster_event and e.dagster_event.is_step_failure
        ]
        assert any("source 'broken': no file matches" in m for m in failures), failures
        splits = instance.get_materialized_partitions(dg.AssetKey("dataset_splits"))
    assert set(GOOD) <= splits and "broken" not in splits
    for source in GOOD:
        assert (server.root / "data" / "assets" / "dataset_splits" / f"{source}.parquet").exists()


def test_backfill_from_the_cli_is_queued_and_run_by_the_daemon(server):
    done = subprocess.run(
        [str(BIN / "dagster"), "job", "backfill", "-w", str(server.root / "workspace.yaml")]
        + ["-j", "ingest_job", "--partitions", ",".join(GOOD), "--noprompt"],
        cwd=server.root,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    backfill_id = done.stdout.split("Launched backfill job `")[1].split("`")[0]
    runs = server.wait_for_runs(backfill_id, len(GOOD))
    assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(GOOD)
    assert all(r.job_name == "ingest_job" for r in runs)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]


def _artifacts_dir() -> Path:
    """``LOGFIT_TEST_ARTIFACTS``, else ``.test-artifacts/`` in the project (git-ignored)."""
    path = Path(os.environ.get("LOGFIT_TEST_ARTIFACTS") or PROJECT_ROOT / ".test-artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.mark.browser
@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not shutil.which("chromium"),
    reason="Debian's chromium is not installed (apt-get install chromium)",
)
def test_materialize_one_source_from_the_asset_graph_in_chromium(server):
    sync_api = pytest.importorskip("playwright.sync_api")
    shots = _artifacts_dir()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(f"{server.url}/locations/logfit_dagster/asset-groups/ingest")

            # The asset graph of the ingest group: select raw_logs and materialize it.
            page.get_by_text("raw_logs", exact=True).first.click()
            page.get_by_role("button", name="Materialize selected…").click()
            dialog_title = page.get_by_text("Launch runs to materialize raw_logs")
            dialog_title.wait_for()
            page.get_by_text("Select a partition or create one").click()
            page.locator(':text-is("tiny_bgl"):visible').first.click()
            dialog_title.click()  # close the partition list
            page.screenshot(path=str(shots / "ui_launch_dialog.png"))
            page.get_by_role("button", name="Launch 1 run").click()

            # The toast links to the run; the run page must reach Success.
            view = page.get_by_role("link", name="View", exact=True).first
            view.wait_for()
            run_path = view.get_attribute("href")
            assert run_path and run_path.startswith("/runs/")
            page.goto(server.url + run_path)
            page.get_by_text("Success", exact=True).first.wait_for(timeout=180_000)
            page.screenshot(path=str(shots / "ui_run_success.png"))

            # The asset page shows the new materialization of that partition and its metadata.
            page.goto(f"{server.url}/assets/raw_logs?partition=tiny_bgl")
            metadata = page.get_by_role("table").filter(has_text="lines_with_replaced_bytes")
            metadata.wait_for()
            row = metadata.get_by_role("row").filter(has=page.get_by_text("lines", exact=True))
            assert "800" in row.inner_text()
            assert "tiny_bgl.parquet" in metadata.inner_text()
            page.get_by_text(
                re.compile(r"^(\d+|a|an|a few) (second|minute)s? ago$")
            ).first.wait_for()
            page.screenshot(path=str(shots / "ui_raw_logs_materialized.png"), full_page=True)
        finally:
            browser.close()

    run_id = run_path.rsplit("/", 1)[-1]
    with server.instance() as instance:
        run = instance.get_run_by_id(run_id)
        assert run.status == dg.DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == "tiny_bgl"
        assert run.asset_selection == {dg.AssetKey("raw_logs")}
    assert (shots / "ui_raw_logs_materialized.png").stat().st_size > 10_000

