"""``logfit materialize``: bring the lineage up to date, in the stages the asset graph gives, and
say what ran, what was up to date and what failed."""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from logfit_dagster.cli import ensure_dagster_home
from logfit_dagster.paths import data_dir

#: A source with this much log (about a million lines) runs each step in a process of its own
#: under ``--executor auto``: one process holding every step's libraries (torch, scikit-learn,
#: dagster) beside a big step's data peaked at 1.47 GB at 4M lines, where a process per step
#: stays near 1.05 GB (``benchmarks/lineage_memory.py``).
BIG_SOURCE_BYTES = 128 << 20


def _open_instance(home: Path):
    """Dagster's instance under ``home``, or an error naming its damaged database."""
    import dagster as dg

    from logfit_dagster.core.errors import StateFileError
    from logfit_dagster.core.sqlite_files import damaged_files

    try:
        instance = dg.DagsterInstance.get()
        instance.get_runs(limit=1)
    except Exception as exc:
        if "database" not in str(exc).lower() and not damaged_files(home):
            raise
        damaged = ", ".join(str(p) for p in damaged_files(home)) or f"a database under {home}"
        raise StateFileError(
            f"the Dagster instance at {home} cannot be opened: {damaged} is not a readable "
            f"SQLite database ({type(exc).__name__}); move it aside (its run history is lost; "
            "the outputs under data/assets stay and are rebuilt only where missing) or restore "
            "it from a backup"
        ) from None
    return instance


def cmd_materialize(args: argparse.Namespace) -> int:
    """Bring the lineage up to date for each source and print a per-source summary.

    The selection (every asset but the LLM judges and adapters, or one job's) runs in the
    stages the graph gives (see ``stages.py``): per-source assets once per source, all-source
    assets once. Only what is missing or stale runs: a source whose files and registry entry
    are unchanged and whose assets are fresh is skipped; ``--force`` recomputes everything.
    """
    home = ensure_dagster_home()
    from logfit_dagster.commands.progress import RunProgress
    from logfit_dagster.commands.runner import SelectionRunner
    from logfit_dagster.commands.side_by_side import SourceWorkers
    from logfit_dagster.commands.stages import plan_stages
    from logfit_dagster.definitions import defs
    from logfit_dagster.jobs import ALL_JOBS, JOB_SELECTIONS, MATERIALIZE_SELECTION
    from logfit_dagster.partitions import LOG_SOURCE
    from logfit_dagster.resources.sources import LogSources
    from logfit_dagster.runs import CtrlC, Interrupted, data_folder_lock, fail_orphaned_runs

    instance = _open_instance(home)
    for run_id in fail_orphaned_runs(instance):
        print(f"run {run_id} was left STARTED by a killed command: marked failed", file=sys.stderr)
    sources = LogSources()
    all_sources = sources.all_sources()
    problems = sources.problems()
    # an invalid registry entry fails that source alone: it is named, the others run
    invalid = [n for n in (args.sources or list(problems)) if n in problems]
    for name in invalid:
        print(f"[{name}] FAILED: {problems[name]}", file=sys.stderr)
    names = [n for n in args.sources or list(all_sources) if n not in problems]
    if not names and not invalid:
        print(
            f"logfit: no source to materialize: none in the registry {sources.registry_file()} "
            f"nor as a folder under {sources.incoming_dir()}",
            file=sys.stderr,
        )
        return 2
    unknown = [n for n in names if n not in all_sources]
    if unknown:
        print(
            f"unknown source(s): {', '.join(unknown)}; registered: {', '.join(all_sources)}",
            file=sys.stderr,
        )
        return 2
    if args.job == "list":
        for name, job in ((j.name, j) for j in ALL_JOBS):
            print(f"{name}\t{job.description or ''}")
        return 0
    if args.job is not None and args.job not in JOB_SELECTIONS:
        print(f"unknown job {args.job!r}; jobs: {', '.join(JOB_SELECTIONS)}", file=sys.stderr)
        return 2
    existing = set(instance.get_dynamic_partitions(LOG_SOURCE))
    new = [n for n in names if n not in existing]
    if new:
        instance.add_dynamic_partitions(LOG_SOURCE, new)
    selection = JOB_SELECTIONS[args.job] if args.job else MATERIALIZE_SELECTION
    stages = plan_stages(defs, list(selection.resolve(list(defs.assets))))
    log_config = {"loggers": {"console": {"config": {"log_level": args.log_level}}}}
    big = {
        n
        for n in names
        if n in all_sources and sources.estimated_bytes(all_sources[n]) >= BIG_SOURCE_BYTES
    }
    if big and args.executor == "auto":
        print(
            f"logfit: {', '.join(sorted(big))}: over {BIG_SOURCE_BYTES >> 20} MB of log, so each "
            "step runs in a process of its own (memory per step, not the lineage's sum; "
            "--executor in_process keeps one process)",
            file=sys.stderr,
        )
    workers = _side_by_side(args, names, big)
    driver = _Driver(
        args,
        defs,
        instance,
        sources,
        SelectionRunner(args.executor, defs, instance, log_config, args.job, big),
        SourceWorkers(workers, log_config, args.job) if workers > 1 else None,
    )
    failed = [(n, problems[n]) for n in invalid]
    started = time.perf_counter()
    stopped = None
    with data_folder_lock(data_dir(), wait=args.wait), CtrlC() as ctrl_c:
        driver.ctrl_c = ctrl_c
        try:
            with RunProgress(instance) as progress:
                driver.progress = progress
                driver.run_stages(stages, names)
        except (Interrupted, KeyboardInterrupt) as exc:
            ctrl_c.acknowledge()
            stopped = exc.label if isinstance(exc, Interrupted) else "planning the next run"
        finally:
            if driver.workers is not None:
                driver.workers.close()
        failed += driver.failed
        _print_summary(driver, home, started)
    if stopped is not None:
        print(
            f"logfit: interrupted (Ctrl-C) during {stopped}: what ran was stopped and marked "
            "failed or canceled in the instance; nothing after it was started. What finished "
            "before is kept; the next `logfit materialize` goes on from there.",
            file=sys.stderr,
        )
        # a further Ctrl-C while the interpreter winds down would kill it by the signal (status
        # -2, Python having restored the default handler): the command has stopped already
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return 130
    return 1 if failed else 0


def _side_by_side(args: argparse.Namespace, names: list[str], big: set[str]) -> int:
    """How many runs go at once, each in a worker process: ``--parallel``, else one per CPU
    where every run is in process, at most one per source and one more (the line models beside
    the template model's pretraining: a worker imports torch and holds a few hundred MB, so no
    more are started than can be busy); 1 (every run in this process, stage after stage) where
    steps take processes of their own (``--executor multiprocess``, a big source) or
    ``--executor in_process``."""
    from logfit_dagster.core.models.threads import available_cpus

    parallel = getattr(args, "parallel", None)
    if parallel is not None:
        if parallel < 1:
            raise SystemExit(f"logfit: --parallel {parallel}: expected 1 or more")
        return parallel
    if args.executor != "auto" or big:
        return 1
    return min(available_cpus(), len(names) + 1)


class _Driver:
    """Runs the stages of a selection, source by source, and keeps what the summary shows."""

    def __init__(self, args, defs, instance, sources, executor, workers=None):
        self.args, self.defs, self.instance = args, defs, instance
        self.sources, self.executor = sources, executor
        # SourceWorkers: the runs side by side
        self.workers = workers
        self.progress = self.ctrl_c = None
        self.order: dict[str, int] = {}  # the sources' order in the summary
        self.rows: list[dict] = []
        self.failed: list[tuple[str, str]] = []
        self.skipped: list[str] = []
        # per source, the metadata of its first stage (the summary row's)
        self.meta: dict[str, dict] = {}
        # (asset name, source or None) whose stage ran or was up to date in this command
        self.settled: set[tuple[str, str | None]] = set()

    def run_stages(self, stages, names: list[str]) -> None:
        """Every stage in the workers, each run as soon as its inputs are ready
        (:meth:`run_units`); without workers (or for a selection of one stage), stage by stage
        in this process."""
        from logfit_dagster.commands.stages import plan_units

        if self.workers is not None and len(stages) > 1:
            self.order = {name: n for n, name in enumerate(names)}
            self.run_units(plan_units(self.defs, stages, names))
            return
        succeeded = list(names)
        for number, stage in enumerate(stages):
            if not stage.partitioned:
                self.run(stage, None, stage.label(None, number == 0))
                continue
            for name in list(succeeded):
                t0 = time.perf_counter()
                ok, meta = self.run(stage, name, stage.label(name, number == 0))
                if number == 0 and not ok:
                    succeeded.remove(name)  # its later stages would read what failed
                    continue
                unchanged = number == 0 and stage.label(name, True) in self.skipped
                self._record(name, meta, time.perf_counter() - t0, number == 0, unchanged)

    def _record(self, name: str, meta: dict, seconds: float, first: bool, unchanged: bool) -> None:
        """What the summary shows of a source's stage that succeeded (or was up to date): its
        row from the first stage, the session champion from a later one."""
        if first:
            self.meta[name] = dict(meta)
            self.rows.append(_summary_row(name, meta, seconds, unchanged))
            # in the order the sources were named, whichever finished first
            self.rows.sort(key=lambda row: self.order.get(row["source"], 0))
        elif "session_champion" in meta and name in self.meta:
            # the champion is chosen in a later stage: the row names it once it is
            row = next(r for r in self.rows if r["source"] == name)
            row["session F1 (test)"] = _session_f1(
                self.meta[name].get("session_model", {}), meta["session_champion"]
            )

    def run_units(self, units) -> None:
        """The units of every stage (``stages.plan_units``), each a run in a worker
        (``side_by_side.py``), ``self.workers.workers`` at a time: a unit starts once the units
        it reads from have finished, so the sources' ingests run side by side, and the line
        models, the template model's pretraining and each source's template model, scoring and
        reports overlap wherever the graph lets them. A source whose first stage failed runs
        nothing more (its later units would read what failed); a unit over every source, or
        one whose input trained nothing, runs on what exists (the run then names what is
        missing)."""
        from concurrent.futures import FIRST_COMPLETED, wait

        from logfit_dagster.runs import Interrupted, fail_orphaned_runs

        waiting, finished = list(range(len(units))), set()
        skipped: dict[tuple[int, str | None], list[str]] = {}
        running: dict = {}
        noted = False  # how the runs go, said once
        # per source, its first stage's parts still to finish, and what they left
        first_parts = defaultdict(int)
        for unit in units:
            if unit.first:
                first_parts[unit.partition] += 1
        first_meta, first_seconds, first_ran = defaultdict(dict), defaultdict(float), set()

        def first_done(unit, ok: bool, meta: dict, seconds: float, ran: bool) -> None:
            name = unit.partition
            if not ok:  # nothing of this source runs after: what its later units read failed
                for number in [n for n in waiting if units[n].partition == name]:
                    waiting.remove(number)
                    finished.add(number)
                first_parts.pop(name, None)
                return
            if name not in first_parts:
                return  # another part of its first stage failed
            first_meta[name].update(meta)
            first_seconds[name] = max(first_seconds[name], seconds)
            if ran:
                first_ran.add(name)
            first_parts[name] -= 1
            if not first_parts[name]:
                unchanged = name not in first_ran
                self._record(name, first_meta[name], first_seconds[name], True, unchanged)

        def unit_done(unit, ok: bool, meta: dict, seconds: float, ran: bool) -> None:
            if unit.first:
                first_done(unit, ok, meta, seconds, ran)
            elif ok and unit.partition is not None:
                self._record(unit.partition, meta, seconds, False, False)

        try:
            with self.ctrl_c.run_active():
                while (waiting or running) and not self.ctrl_c.requested:
                    for number in [n for n in waiting if units[n].after <= finished]:
                        if number not in waiting:
                            continue  # dropped: its source's first stage failed meanwhile
                        waiting.remove(number)
                        unit = units[number]
                        selection = self.plan(unit.stage, unit.partition, unit.keys)
                        if selection == []:
                            skipped.setdefault((id(unit.stage), unit.partition), []).append(
                                unit.label
                            )
                            meta = self._skip(
                                unit.stage, unit.partition, unit.label, unit.keys, record=False
                            )
                            unit_done(unit, True, meta, 0.0, False)
                            finished.add(number)
                            continue
                        self.progress.begin(
                            unit.label, len(selection), unit.partition, alone=False, keys=selection
                        )
                        if not noted:  # so that the lines below read as queued
                            noted = True
                            self.progress.note(
                                f"the runs go {self.workers.workers} at a time to worker "
                                "processes, each as soon as what it reads is there "
                                "(--parallel N sets how many)"
                            )
                        running[self.workers.submit(unit.partition, selection)] = number
                    if not running:
                        continue  # what was skipped may have readied others
                    done, _ = wait(list(running), timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in done:
                        number = running.pop(future)
                        unit = units[number]
                        self.progress.end(unit.label)
                        try:
                            # seconds: the run's own, not its wait for a worker's imports
                            ok, reason, seconds = future.result()
                        except Exception as exc:  # the worker died (killed, out of memory)
                            ok, reason, seconds = False, f"its worker process ended: {exc!r}", 0.0
                        self._finish(unit.stage, unit.partition, unit.label, ok, reason, unit.keys)
                        meta = self.latest(unit.keys, unit.partition) if ok else {}
                        unit_done(unit, ok, meta, seconds, True)
                        finished.add(number)
            if self.ctrl_c.requested:
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.workers.stop(set(running))
            fail_orphaned_runs(self.instance)
            labels = ", ".join(units[n].label for n in running.values())
            raise Interrupted(labels or "planning the next run") from None
        finally:
            self._skipped_units(units, skipped)

    def _skipped_units(self, units, skipped: dict) -> None:
        """The summary's "up to date" list: a stage's label where every part of it was up to
        date for that source, else the parts' labels."""
        for (stage_id, partition), labels in skipped.items():
            parts = [u for u in units if id(u.stage) == stage_id and u.partition == partition]
            if len(labels) == len(parts):
                self.skipped.append(parts[0].stage_label)
            else:
                self.skipped.extend(labels)

    def _fresh(self):
        from logfit_dagster.commands.freshness import Freshness

        return Freshness(self.instance, self.defs)

    def plan(self, stage, partition: str | None, keys=None) -> list:
        """The assets of the stage (or of its ``keys`` alone) to run: [] for nothing."""
        import dagster as dg

        from logfit_dagster.core.errors import LogfitError

        fresh = self._fresh()
        keys = self._runnable(stage, partition, fresh, keys)
        if not keys:
            return []
        if self.args.force:
            return keys
        raw_key = dg.AssetKey("raw_logs")
        if raw_key in keys:
            try:
                spec = self.sources.get(partition)
                current = self.sources.fingerprint(spec, self.sources.files(spec))
            except LogfitError:
                return keys  # run it: the run fails for this source alone, naming what is wrong
            if fresh.recorded_version(raw_key, partition) != current:
                return keys
        stale = fresh.out_of_date(keys, partition)
        labeled_key = dg.AssetKey("labeled_lines")
        if labeled_key in keys and labeled_key not in stale and self._label_sources_moved(fresh):
            stale = fresh.out_of_date(keys, partition, also=[labeled_key])
        for (key, _), why in fresh.damaged.items():
            self.progress.note(f"{key.to_user_string()}: {why}: rebuilt")
        return stale

    def _runnable(self, stage, partition: str | None, fresh, keys=None) -> list:
        """The stage's assets (or ``keys``) whose inputs from earlier stages exist; the others
        are named."""
        keys = stage.keys if keys is None else keys
        blocked = {}
        for key, needs in stage.needs.items():
            if key not in keys:
                continue
            missing = [n for n in needs if not fresh.has_materialization(n, partition)]
            if missing:
                blocked[key] = missing
        keys = [k for k in keys if k not in blocked]
        # what reads a blocked asset in the same stage cannot run either
        keys = [k for k in keys if not fresh.downstream_of(k, set(blocked))]
        for key, missing in blocked.items():
            where = f"[{partition}] " if partition else ""
            self.progress.note(
                f"{where}{key.to_user_string()}: not run: "
                f"{', '.join(m.to_user_string() for m in missing)} has no materialization "
                "(see above why it trained nothing)"
            )
        return keys

    def _label_sources_moved(self, fresh) -> bool:
        """Whether the registry's sources with labels differ from those labeled_lines read."""
        import dagster as dg

        read = fresh.latest_metadata(dg.AssetKey("labeled_lines"), None).get("label_sources")
        labelled = {
            name
            for name in self.sources.all_sources()
            if fresh.latest_metadata(dg.AssetKey("llm_labels"), name)
        }
        return read is not None and set(read) != labelled

    def run(self, stage, partition: str | None, label: str) -> tuple[bool, dict]:
        """The stage for ``partition`` in this process (or with the code location's executor):
        what ``plan`` finds to run."""
        from logfit_dagster.runs import Interrupted

        selection = self.plan(stage, partition)
        if selection == []:
            return True, self._skip(stage, partition, label)
        self.progress.begin(label, len(selection), partition)
        try:
            with self.ctrl_c.run_active():
                ok, meta, reason = self.executor.run(partition, selection)
            if self.ctrl_c.requested:
                raise Interrupted(label)
        except KeyboardInterrupt:
            raise Interrupted(label) from None
        self._finish(stage, partition, label, ok, reason)
        return ok, {**self.latest(stage.keys, partition), **meta}

    def _skip(
        self, stage, partition: str | None, label: str, keys=None, record: bool = True
    ) -> dict:
        """A stage (or its assets ``keys``) with nothing to run for ``partition``: up to date;
        its latest metadata. ``record``: name ``label`` in the summary's "up to date" list."""
        keys = stage.keys if keys is None else keys
        if record:
            self.skipped.append(label)
        self._settle(stage, partition, keys)
        return self.latest(keys, partition)

    def _finish(
        self, stage, partition: str | None, label: str, ok: bool, reason: str, keys=None
    ) -> None:
        """The run of the stage (or of its assets ``keys``) for ``partition`` has ended."""
        if not ok:
            self.failed.append((label, reason))
            self.progress.note(f"[{label}] FAILED: {reason}")
        else:
            self._settle(stage, partition, keys)

    def _settle(self, stage, partition: str | None, keys=None) -> None:
        keys = stage.keys if keys is None else keys
        self.settled.update((k.to_user_string(), partition) for k in keys)

    def latest(self, keys, partition: str | None) -> dict:
        """The latest materialization metadata of each asset, by asset name."""
        fresh = self._fresh()
        out = {}
        for key in keys:
            meta = fresh.latest_metadata(key, partition)
            if meta:
                out[key.to_user_string()] = meta
        return out


def _print_summary(driver: _Driver, home: Path, started: float) -> None:
    import dagster as dg

    from logfit_dagster.assets.models import line_champion_path

    def settled(name: str, partition: str | None = None) -> dict:
        if (name, partition) not in driver.settled:
            return {}
        return driver.latest([dg.AssetKey(name)], partition).get(name, {})

    line_model, transformer = settled("look_skip_model"), settled("line_transformer_model")
    labeled, champion = settled("labeled_lines"), settled("line_champion")
    pretrained = settled("template_lm_pretrained")
    template_models = {
        row["source"]: settled("template_lm", row["source"])
        for row in driver.rows
        if ("template_lm", row["source"]) in driver.settled
    }
    skipped = driver.skipped
    rows = driver.rows
    _print_table(rows)
    for row in rows:
        if row["_note"]:
            print(row["_note"])
    assets_dir = data_dir() / "assets"
    print(
        f"\noutputs: {assets_dir}/<asset>/<source>.parquet (ground_truth_labels: a folder per source)"
    )
    if line_model:
        nan = float("nan")
        print(
            f"look_skip_model: {line_model.get('protocol', 'leave-sources-out')} LOOK F1 "
            f"{line_model.get('cv_f1', nan):.3f} (char n-gram baseline "
            f"{line_model.get('baseline_cv_f1', nan):.3f}, same folds, at 0.5) over "
            f"{line_model.get('sources')} sources; ships LOOK threshold "
            f"{line_model.get('threshold', 0.5):.3f} (best F1 on held-out folds)"
        )
    elif labeled:
        print(
            f"look_skip_model: not trained: labelled lines from {labeled.get('sources')} "
            f"source(s), {labeled.get('look_lines')} LOOK of {labeled.get('lines')}; training "
            "and leave-sources-out scoring need two sources with both LOOK and SKIP lines"
        )
    if transformer.get("skipped"):
        print(f"line_transformer_model: not trained: {transformer['skipped']}")
    elif transformer:
        print(
            f"line_transformer_model: held-out LOOK F1 {transformer.get('test_cascade_f1', float('nan')):.3f} "
            f"(cascade) vs {transformer.get('test_tfidf_f1', float('nan')):.3f} (TF-IDF alone), "
            f"{transformer.get('test_transformer_f1', float('nan')):.3f} (transformer alone) on "
            f"{', '.join(transformer.get('sources', {}).get('test', []))}; "
            f"{transformer.get('train_seconds', float('nan')):.0f} s on {transformer.get('device')}"
        )
    if champion:
        print(
            f"line champion: {champion.get('family')} ({champion.get('why')}); "
            f"{line_champion_path()} (logfit classify FILE)"
        )
    if template_models:
        source = pretrained.get("source", "?")
        print(f"template_lm (pretrained on {source}, fine-tuned on every other source), test F1:")
        for name, meta in template_models.items():
            print(f"  {name}: {_template_summary(meta)}")
    if skipped:
        print(f"up to date, not run: {', '.join(skipped)} (--force recomputes)")
    print(f"dagster instance: {home}   total: {time.perf_counter() - started:.1f}s")
    print("open the UI with: logfit dev")


def _template_summary(meta: dict) -> str:
    if not meta:
        return "not run (no materialization of template_lm for this source)"
    if meta.get("skipped"):
        return f"no model: {meta['skipped']}"
    if "test_anomalous" not in meta or meta.get("test_labelled") == 0:
        return "trained; no labelled test sessions to measure it on"
    nan = float("nan")
    methods = ", ".join(
        f"{m} {meta.get(f'test_{m}_f1', nan):.3f} "
        f"(FPR {meta.get(f'test_{m}_false_positive_rate', nan):.1%})"
        for m in ("max_nll", "mean_nll", "topg_misses")
    )
    dev = meta.get("dev_normal_sessions")
    behind = f" on {dev:.0f} normal dev sessions" if dev is not None else ""
    return (
        f"{methods} (on {meta['test_anomalous']:.0f} anomalous of {meta['test_sessions']:.0f} "
        f"test sessions; thresholds{behind})"
    )


def _summary_row(name: str, meta: dict, seconds: float, unchanged: bool) -> dict:
    truth = meta.get("ground_truth_labels", {})
    session = meta.get("session_model", {})
    return {
        "source": name,
        "lines": meta.get("raw_logs", {}).get("lines", ""),
        "parse failures": meta.get("parsed_logs", {}).get("parse_failures", ""),
        "templates": meta.get("parsed_logs", {}).get("templates", ""),
        "sessions": meta.get("sessions", {}).get("sessions", ""),
        "anomalous sessions": truth.get("anomalous_sessions", "")
        if truth.get("has_ground_truth")
        else "no labels",
        "LOOK lines": meta.get("llm_labels", {}).get("look_lines", "-"),
        "session F1 (test)": _session_f1(session, meta.get("session_champion", {})),
        "seconds": "unchanged" if unchanged else f"{seconds:.1f}",
        # printed under the table, not in it
        "_note": f"no session model for {name}: {session['skipped']}"
        if "skipped" in session
        else "",
    }


def _session_f1(session: dict, champion: dict | None = None) -> str:
    """The session champion's test F1 (else the best count-vector model's), which model it is,
    and the anomalous test sessions it rests on."""
    if champion and "test_f1" in champion and champion.get("test_anomalous"):
        normal = champion.get("test_normal", 0)
        return (
            f"{champion['test_f1']:.3f} {champion.get('champion', '')} "
            f"({champion['test_anomalous']:.0f} of {champion['test_anomalous'] + normal:.0f} "
            "anomalous)"
        )
    if "test_f1" not in session:
        return "no model (below)" if "skipped" in session else "-"
    if "test_anomalous" not in session:
        return f"{session['test_f1']:.3f}"
    return (
        f"{session['test_f1']:.3f} ({session['test_anomalous']} of "
        f"{session['test_sessions']} anomalous)"
    )


def _print_table(rows: list[dict]) -> None:
    if not rows:
        print("no source was materialized")
        return
    headers = [h for h in rows[0] if not h.startswith("_")]
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    print("  ".join(h.ljust(widths[h]) for h in headers))
    print("  ".join("-" * widths[h] for h in headers))
    for row in rows:
        print("  ".join(str(row[h]).ljust(widths[h]) for h in headers))
