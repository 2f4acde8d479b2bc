"""The live view of logfit materialize: the steps of the run now executing, as they happen."""

import io
import time

import dagster as dg

from logfit_dagster.commands.progress import RunProgress


@dg.asset
def first(context: dg.AssetExecutionContext) -> int:
    context.log.info("first: step 3/10 (30%) loss 1.2 eta 0m07s")
    time.sleep(1.2)  # long enough for the view to see the step running
    return 1


@dg.asset
def second(first: int) -> int:
    return first + 1


def _run(tty: bool) -> str:
    stream = io.StringIO()
    with dg.instance_for_test() as instance:
        with RunProgress(instance, stream=stream, tty=tty, poll_seconds=0.1) as progress:
            progress.begin("demo", 2)
            assert dg.materialize([first, second], instance=instance).success
    return stream.getvalue()


def test_plain_lines_when_not_a_terminal():
    text = _run(tty=False)
    lines = text.splitlines()
    assert lines[0].endswith("demo: 2 asset(s) to run")
    assert any(line.endswith("demo: first done (1/2)") for line in lines)
    assert any(line.endswith("demo: second done (2/2)") for line in lines)
    assert any("first: step 3/10 (30%) loss 1.2 eta 0m07s" in line for line in lines)
    assert "\r" not in text


def test_one_line_rewritten_in_place_on_a_terminal():
    text = _run(tty=True)
    frames = [f for f in text.split("\r") if f.strip()]
    assert any("demo: 0/2 steps · first · first: step 3/10" in f for f in frames)
    assert "\n" not in text  # nothing scrolls: the line is cleared at the end
    assert text.endswith("\r")


def test_the_live_line_keeps_the_step_and_eta_ahead_of_the_other_figures():
    from logfit_dagster.commands.progress import eta_first

    line = (
        "template_lm: step 239/1520 (16%) epoch 4 loss 0.1234 lr 1.3e-06 rows_per_s 187 eta 25m40s"
    )
    moved = eta_first(line)
    assert moved.startswith("template_lm: step 239/1520 (16%) eta 25m40s ")
    assert sorted(moved.split()) == sorted(line.split())  # nothing lost, only reordered
    assert eta_first("line_transformer: trained in 40 s") == "line_transformer: trained in 40 s"


SIDES = dg.StaticPartitionsDefinition(["left", "right"])


@dg.asset(partitions_def=SIDES)
def side(context: dg.AssetExecutionContext) -> str:
    context.log.info(f"side: step 1/2 (50%) {context.partition_key} eta 0m01s")
    time.sleep(1.2)
    return context.partition_key


def test_runs_side_by_side_each_keep_their_own_lines_and_share_the_live_one():
    for tty in (False, True):
        stream = io.StringIO()
        with dg.instance_for_test() as instance:
            with RunProgress(instance, stream=stream, tty=tty, poll_seconds=0.1) as progress:
                # both begun before either starts, as the side-by-side stage does; the view
                # tells their runs apart by partition (the right one starts first)
                for name in ("left", "right"):
                    progress.begin(f"{name} stage", 1, name, alone=False)
                for name in ("right", "left"):
                    assert dg.materialize([side], instance=instance, partition_key=name).success
                    progress.end(f"{name} stage")
        text = stream.getvalue()
        if not tty:
            lines = text.splitlines()
            assert any(line.endswith("left stage: side done (1/1)") for line in lines)
            assert any(line.endswith("right stage: side done (1/1)") for line in lines)
            assert "left stage: side: step 1/2 (50%) left" in text
            assert "right stage: side: step 1/2 (50%) right" in text
        else:
            frames = [f for f in text.split("\r") if f.strip()]
            assert any(
                "left stage: 0/1 steps | right stage: 0/1 steps · side · side: step 1/2" in f
                for f in frames
            )


@dg.asset
def left_part(context: dg.AssetExecutionContext) -> int:
    context.log.info("left_part: step 1/2 (50%) eta 0m01s")
    time.sleep(1.2)
    return 1


@dg.asset
def right_part(context: dg.AssetExecutionContext) -> int:
    context.log.info("right_part: step 1/2 (50%) eta 0m01s")
    time.sleep(1.2)
    return 2


def test_parts_of_an_all_source_stage_side_by_side_are_told_apart_by_their_assets():
    """Two runs of no partition begun together (the parts of a stage): each keeps its own lines,
    whichever starts first."""
    stream = io.StringIO()
    with dg.instance_for_test() as instance:
        with RunProgress(instance, stream=stream, tty=False, poll_seconds=0.1) as progress:
            for asset in (left_part, right_part):
                progress.begin(f"{asset.key.path[0]} run", 1, None, alone=False, keys=[asset.key])
            # as logfit materialize runs a selection (dg.materialize records none)
            job = dg.Definitions(
                assets=[left_part, right_part]
            ).resolve_implicit_global_asset_job_def()
            for asset in (right_part, left_part):
                result = job.execute_in_process(instance=instance, asset_selection=[asset.key])
                assert result.success
                progress.end(f"{asset.key.path[0]} run")
    lines = stream.getvalue().splitlines()
    assert any(line.endswith("right_part run: right_part done (1/1)") for line in lines)
    assert any(line.endswith("left_part run: left_part done (1/1)") for line in lines)
    assert any(
        line.endswith("right_part run: right_part: step 1/2 (50%) eta 0m01s") for line in lines
    )
    assert not any("left_part run: right_part" in line for line in lines), lines
