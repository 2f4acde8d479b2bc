"""The ``logfit`` command: materialize the lineage, manage sources, open the UI."""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

from logfit_dagster.paths import data_dir, default_dagster_home


def _ensure_dagster_home() -> Path:
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
        config.write_text(INSTANCE_CONFIG)
    return Path(home)


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


def _metadata_value(value):
    return getattr(value, "value", value)


def cmd_materialize(args: argparse.Namespace) -> int:
    """Bring the lineage up to date for each source and print a per-source summary.

    The selection (every asset but the LLM judges and adapters, or one job's) runs in the
    stages the graph gives (see ``stages.py``): per-source assets once per source, all-source
    assets once. Only what is missing or stale runs: a source whose files and registry entry
    are unchanged and whose assets are fresh is skipped; ``--force`` recomputes everything.
    """
    home = _ensure_dagster_home()
    from logfit_dagster.definitions import defs
    from logfit_dagster.jobs import JOB_SELECTIONS, MATERIALIZE_SELECTION
    from logfit_dagster.partitions import LOG_SOURCE
    from logfit_dagster.progress import RunProgress
    from logfit_dagster.resources.sources import LogSources
    from logfit_dagster.runs import CtrlC, Interrupted, data_folder_lock, fail_orphaned_runs
    from logfit_dagster.stages import plan_stages

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
    driver = _Driver(
        args,
        defs,
        instance,
        sources,
        _Executor(args.executor, defs, instance, log_config, args.job),
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
        failed += driver.failed
        _print_summary(driver, home, started)
    if stopped is not None:
        print(
            f"logfit: interrupted (Ctrl-C) during {stopped}: its run was stopped and marked "
            "failed or canceled in the instance; nothing after it was started. What finished "
            "before is kept; the next `logfit materialize` goes on from there.",
            file=sys.stderr,
        )
        return 130
    return 1 if failed else 0


class _Driver:
    """Runs the stages of a selection, source by source, and keeps what the summary shows."""

    def __init__(self, args, defs, instance, sources, executor):
        self.args, self.defs, self.instance = args, defs, instance
        self.sources, self.executor = sources, executor
        self.progress = self.ctrl_c = None
        self.rows: list[dict] = []
        self.failed: list[tuple[str, str]] = []
        self.skipped: list[str] = []
        # (asset name, source or None) whose stage ran or was up to date in this command
        self.settled: set[tuple[str, str | None]] = set()

    def run_stages(self, stages, names: list[str]) -> None:
        succeeded = list(names)
        for number, stage in enumerate(stages):
            if not stage.partitioned:
                self.run(stage, None, stage.label(None, number == 0))
                continue
            for name in list(succeeded):
                t0 = time.perf_counter()
                ok, meta = self.run(stage, name, stage.label(name, number == 0))
                if number == 0:
                    if not ok:
                        succeeded.remove(name)  # its later stages would read what failed
                        continue
                    label = stage.label(name, True)
                    self.rows.append(
                        _summary_row(name, meta, time.perf_counter() - t0, label in self.skipped)
                    )

    def _fresh(self):
        from logfit_dagster.freshness import Freshness

        return Freshness(self.instance, self.defs)

    def plan(self, stage, partition: str | None) -> list | None:
        """The assets of the stage to run: None for all, [] for nothing."""
        import dagster as dg

        from logfit_dagster.core.errors import LogfitError

        keys = self._runnable(stage, partition)
        if not keys:
            return []
        if self.args.force:
            return keys
        fresh = self._fresh()
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

    def _runnable(self, stage, partition: str | None) -> list:
        """The stage's assets whose inputs from earlier stages exist; the others are named."""
        fresh = self._fresh()
        blocked = {}
        for key, needs in stage.needs.items():
            missing = [n for n in needs if not fresh.has_materialization(n, partition)]
            if missing:
                blocked[key] = missing
        keys = [k for k in stage.keys if k not in blocked]
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
        from logfit_dagster.runs import Interrupted

        selection = self.plan(stage, partition)
        if selection == []:
            self.skipped.append(label)
            self._settle(stage, partition)
            return True, self.latest(stage.keys, partition)
        self.progress.begin(label, len(selection))
        try:
            with self.ctrl_c.run_active():
                ok, meta, reason = self.executor.run(partition, selection)
            if self.ctrl_c.requested:
                raise Interrupted(label)
        except KeyboardInterrupt:
            raise Interrupted(label) from None
        if not ok:
            self.failed.append((label, reason))
            self.progress.note(f"[{label}] FAILED: {reason}")
        else:
            self._settle(stage, partition)
        return ok, {**self.latest(stage.keys, partition), **meta}

    def _settle(self, stage, partition: str | None) -> None:
        self.settled.update((k.to_user_string(), partition) for k in stage.keys)

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
        print(
            f"look_skip_model: leave-sources-out LOOK F1 {line_model.get('cv_f1', float('nan')):.3f} "
            f"over {line_model.get('sources')} sources"
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
            f"(cascade) vs {transformer.get('test_tfidf_f1', float('nan')):.3f} (TF-IDF alone) on "
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
        print(f"template_lm (pretrained on {source}, fine-tuned per source), test F1:")
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
    if "test_anomalous" not in meta:
        return "trained; no labelled test sessions to score"
    methods = ", ".join(
        f"{m} {meta.get(f'test_{m}_f1', float('nan')):.3f}"
        for m in ("max_nll", "mean_nll", "topg_misses")
    )
    return (
        f"{methods} (on {meta['test_anomalous']:.0f} anomalous of {meta['test_sessions']:.0f} "
        f"test sessions; thresholds from normal dev sessions)"
    )


class _Executor:
    """Runs a selection of assets for one partition (or none) in this process, or with the
    code location's executor (out of process)."""

    def __init__(self, kind: str, defs, instance, run_config: dict, job: str | None = None):
        self.kind, self.defs, self.instance, self.run_config = kind, defs, instance, run_config
        self.job = job  # a job named by --job, else every asset

    def run(self, partition: str | None, selection: list):
        import dagster as dg

        from logfit_dagster.runs import process_tags

        if self.kind == "in_process":
            job = (
                self.defs.resolve_job_def(self.job)
                if self.job
                else self.defs.resolve_implicit_global_asset_job_def()
            )
            result = job.execute_in_process(
                partition_key=partition,
                instance=self.instance,
                raise_on_error=False,
                run_config=self.run_config,
                asset_selection=selection,
                tags=process_tags(),  # a later command fails it if this process is killed
            )
            return self._outcome(result)
        job = (
            dg.build_reconstructable_job("logfit_dagster.cli", "job_of", (self.job,))
            if self.job
            else dg.build_reconstructable_job("logfit_dagster.cli", "asset_job")
        )
        tags = {"dagster/partition": partition} if partition else None
        with dg.execute_job(
            job,
            instance=self.instance,
            run_config=self.run_config,
            tags=tags,
            asset_selection=selection,
        ) as result:
            return self._outcome(result)

    @staticmethod
    def _outcome(result) -> tuple[bool, dict, str]:
        """Success, each asset's metadata, and the first failure's words."""
        meta = {}
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            meta[mat.asset_key.to_user_string()] = {
                k: _metadata_value(v) for k, v in mat.metadata.items()
            }
        reason = ""
        if not result.success:
            failures = [e.step_failure_data for e in result.all_events if e.is_step_failure]
            # a dg.Failure's own words (what is wrong, naming the file), else the error's
            described = failures[0].user_failure_data if failures else None
            reason = (
                described.description
                if described is not None and described.description
                else failures[0].error.message.strip()
                if failures
                else "run failed"
            )
        return result.success, meta, reason


def job_of(job_name: str):
    """A job of the definitions, as a process of the multiprocess executor rebuilds it."""
    from logfit_dagster.definitions import defs

    return defs.resolve_job_def(job_name)


def asset_job():
    """Every asset as one job (a run takes a selection of it), as the processes of the
    multiprocess executor rebuild it. (Dagster's own asset job has a reserved name that a
    rebuilt repository refuses.)"""
    import dagster as dg

    from logfit_dagster.definitions import defs

    with warnings.catch_warnings():
        # scored_lines' single-run backfill policy beside the others': a CLI run takes one
        # partition, so which policy the job keeps does not matter here
        warnings.filterwarnings("ignore", message=".*varying BackfillPolicies")
        job = dg.define_asset_job("logfit_materialize", selection=dg.AssetSelection.all())
        return job.resolve(asset_graph=defs.resolve_asset_graph())


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
        "session F1 (test)": _session_f1(session),
        "seconds": "unchanged" if unchanged else f"{seconds:.1f}",
        # printed under the table, not in it
        "_note": f"no session model for {name}: {session['skipped']}"
        if "skipped" in session
        else "",
    }


def _session_f1(session: dict) -> str:
    """The best session model's test F1 and the anomalous test sessions it rests on."""
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


def cmd_sources(args: argparse.Namespace) -> int:
    from logfit_dagster.core.registry import add_loghub_entries
    from logfit_dagster.resources.sources import LogSources

    registry = LogSources()
    if args.action == "enable-loghub":
        from logfit_dagster.core.loghub import LOGHUB_SYSTEMS

        if args.full and not args.systems:
            print(
                "name the full data sets to enable (they are large: see `logfit sources datasets`)",
                file=sys.stderr,
            )
            return 2
        systems = args.systems or list(LOGHUB_SYSTEMS)
        added = add_loghub_entries(registry.registry_file(), systems, full=args.full)
        print(
            f"added to {registry.registry_file()}: {', '.join(added) or 'nothing (already there)'}"
        )
        return 0
    if args.action == "datasets":
        from logfit_dagster.core.loghub import LOGHUB_DATASETS

        for name, dataset in sorted(LOGHUB_DATASETS.items()):
            print(f"{name:12} {dataset.archive:20} {dataset.lines:>12,} lines  {dataset.raw_size}")
        return 0
    if args.action == "download":
        return _download_datasets(registry, args.systems)
    for name, spec in registry.all_sources().items():
        where = {
            "synthetic": f"{spec.kind} x{spec.lines} seed {spec.seed}",
            "loghub": spec.system,
        }.get(spec.origin, spec.path)
        print(
            f"{name:24} {spec.origin:9} {spec.format:12} session={spec.session.by:12} "
            f"ground_truth={spec.ground_truth.provider:10} {where}"
        )
    return 0


def _download_datasets(registry, names: list[str]) -> int:
    """Download and unpack full Loghub data sets with a progress bar; one failure never stops
    the others."""
    from tqdm import tqdm

    from logfit_dagster.core.errors import LogfitError
    from logfit_dagster.core.registry import SourceSpec

    if not names:
        print(
            "name the full data sets to download (see `logfit sources datasets`)", file=sys.stderr
        )
        return 2
    failed = 0
    for name in names:
        bars: dict[str, tqdm] = {}

        def progress(stage, done, total, bars=bars, name=name):
            bar = bars.get(stage)
            if bar is None:
                bar = bars[stage] = tqdm(
                    total=total, unit="B", unit_scale=True, desc=f"{name} {stage}", leave=True
                )
            bar.update(done - bar.n)

        try:
            spec = SourceSpec(name=name, origin="loghub", system=name, release="full")
            folder = registry.loghub_dataset(spec, progress)
        except LogfitError as exc:
            failed += 1
            print(f"{name}: {exc}", file=sys.stderr)
            continue
        finally:
            for bar in bars.values():
                bar.close()
        print(f"{name}: {folder}")
    return 1 if failed else 0


def cmd_classify(args: argparse.Namespace) -> int:
    """Score a log file with the line champion (or a given model), whichever family it is."""
    from logfit_dagster.assets.models import line_champion_path
    from logfit_dagster.core.classify import classify_file
    from logfit_dagster.core.models.base import load_line_scorer

    model = Path(args.model) if args.model else line_champion_path()
    if not args.model and not model.exists():
        print(
            f"logfit: no champion model at {model}: materialize look_skip_champion, or pass --model",
            file=sys.stderr,
        )
        return 2
    source = Path(args.file)
    if args.file == "-" or (source.exists() and not source.is_file()):
        print(
            f"logfit: {args.file} is not a regular file: classify reads a file (plain or .gz) "
            "twice, once to find its distinct shapes; write the stream to a file first",
            file=sys.stderr,
        )
        return 2
    output = _output_target(args.output, args.force) if args.output else None
    if isinstance(output, int):
        return output
    scorer = load_line_scorer(model)
    print(f"logfit: scoring with {model}", file=sys.stderr)
    with _terminate_cleanly(), _ReadProgress(source) as progress:
        stats = classify_file(
            source,
            scorer,
            output,
            threshold=args.threshold,
            max_line_chars=args.max_line_chars,
            progress=progress,
        )
    print(
        f"{stats.lines} lines, {stats.look} LOOK ({stats.look / max(stats.lines, 1):.1%}), "
        f"{stats.distinct_shapes} distinct shapes scored, {stats.seconds:.2f} s, "
        f"{stats.lines_per_second:,.0f} lines/s" + (f" -> {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    if stats.cut_lines:
        print(
            f"{stats.cut_lines} line(s) longer than {args.max_line_chars:,} characters (the first "
            f"is line {stats.first_cut_line}): {stats.cut_bytes:,} byte(s) past that were read "
            "through, not kept; the output's cut_bytes column says how many per line "
            "(--max-line-chars raises the cap)",
            file=sys.stderr,
        )
    if stats.replaced_bytes:
        print(
            f"{stats.replaced_bytes:,} byte(s) that are not UTF-8 were replaced by U+FFFD",
            file=sys.stderr,
        )
    if stats.long_lines:
        print(
            f"{stats.long_lines} line(s) longer than {stats.max_chars:,} characters: scored on "
            "their first characters (the model's cut), written whole",
            file=sys.stderr,
        )
    return 0


def latest_template_model(source: str) -> Path | None:
    """The newest finished template model of a source (fine-tuned or from scratch)."""
    from logfit_dagster.assets.models._shared import family_folder

    root = family_folder("template_lm", source)
    manifests = sorted(root.glob("*/*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return manifests[-1].parent if manifests else None


def cmd_sessions(args: argparse.Namespace) -> int:
    """Score the sessions of a log file with a source's template model."""
    from logfit_dagster.core.models.base import load
    from logfit_dagster.core.session_scoring import score_file_sessions
    from logfit_dagster.resources.sources import LogSources

    sources = LogSources()
    spec = sources.get(args.source)
    model = Path(args.model) if args.model else latest_template_model(spec.name)
    if model is None:
        print(
            f"logfit: no template model of {spec.name} under {data_dir() / 'models'}: "
            f"materialize template_lm for {spec.name}, or pass --model",
            file=sys.stderr,
        )
        return 2
    scorer = load(model, families=("template_lm",))
    started = time.perf_counter()
    frame = score_file_sessions(
        Path(args.file),
        spec.format,
        spec.multiline,
        spec.session,
        sources.miner_state_path(spec.name),
        scorer,
    )
    flagged = frame[frame[f"{args.method}_flagged"]]
    if args.output:
        from logfit_dagster.core.reading import atomic_path

        output = Path(args.output)
        with atomic_path(output) as tmp:
            if output.suffix == ".jsonl":
                frame.to_json(tmp, orient="records", lines=True)
            else:
                frame.to_parquet(tmp)
    else:
        for row in flagged.itertuples():
            print(
                f"{row.session_id}\tlines {row.first_line}-{row.last_line}\t"
                f"{args.method} {getattr(row, args.method):.4g}\tunseen {row.unseen_rate:.0%}"
            )
    print(
        f"{len(frame)} sessions, {len(flagged)} flagged by {args.method} (threshold "
        f"{scorer.thresholds[args.method]:.4g} from normal dev sessions), model {model}, "
        f"{time.perf_counter() - started:.2f} s" + (f" -> {args.output}" if args.output else ""),
        file=sys.stderr,
    )
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    """Serve the UI, the daemon and the code location with ``dagster dev``, and stop all of
    them on SIGTERM or SIGINT (Ctrl-C), even when started in the background."""
    import shutil
    import signal
    import subprocess

    home = _ensure_dagster_home()
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


def _output_target(name: str, force: bool) -> Path | int:
    """Where ``--output`` writes: a symlink's target (the link stays), refusing a folder, and
    an existing file unless ``force``; an exit status when refused."""
    output = Path(name)
    if output.suffix not in (".parquet", ".jsonl"):
        print(f"logfit: output {output}: use a .parquet or .jsonl file name", file=sys.stderr)
        return 2
    if output.is_symlink():
        output = Path(os.path.realpath(output))
    if output.is_dir():
        print(f"logfit: --output {name} is a folder: name a file in it", file=sys.stderr)
        return 2
    if output.exists() and not force:
        print(
            f"logfit: --output {name} exists: pass --force to replace it (it is replaced whole, "
            "keeping its mode, only once every line is scored)",
            file=sys.stderr,
        )
        return 2
    if not output.parent.is_dir():
        print(f"logfit: --output {name}: folder {output.parent} does not exist", file=sys.stderr)
        return 2
    return output


class _terminate_cleanly:
    """SIGTERM ends the command as Ctrl-C does, through ``finally`` blocks: a temporary output
    is removed, nothing half-written stays."""

    def __enter__(self):
        import signal

        def stop(signum, frame):
            raise SystemExit(128 + signum)

        self._previous = signal.signal(signal.SIGTERM, stop)
        return self

    def __exit__(self, *exc):
        import signal

        signal.signal(signal.SIGTERM, self._previous)


class _ReadProgress:
    """A long read's progress on stderr: on a terminal one line rewritten in place, otherwise
    a line every 30 s; nothing for a read under 5 s."""

    def __init__(self, path: Path, stream=None):
        self.path, self.stream = path, stream or sys.stderr
        self.tty = self.stream.isatty()
        self.started = self.last = time.monotonic()
        self.shown = False

    def __enter__(self):
        return self

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.started < 5 or now - self.last < (1 if self.tty else 30):
            return
        self.last = now
        share = f"{done / total:.0%} of " if total else ""
        line = f"reading {self.path}: {share}{total / 2**20:,.0f} MB on disk, {now - self.started:.0f} s"
        self.stream.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        self.stream.flush()
        self.shown = True

    def __exit__(self, *exc):
        if self.shown and self.tty:
            self.stream.write("\n")


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="logfit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("materialize", help="run the lineage for every source (or the ones named)")
    m.add_argument("sources", nargs="*", help="source names (default: every registered source)")
    m.add_argument(
        "--job",
        default=None,
        help="run only this job's assets (e.g. ingest_job); default: the whole lineage but the "
        "LLM judges and adapters, in the stages the asset graph gives",
    )
    m.add_argument("--log-level", default="WARNING", help="Dagster console log level")
    m.add_argument(
        "--executor",
        choices=["in_process", "multiprocess"],
        default="in_process",
        help="in_process (default): every step in this process; multiprocess: each run out of "
        "process with the code location's executor (LOGFIT_EXECUTOR, one process per step "
        "unless set otherwise)",
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
    m.set_defaults(func=cmd_materialize)
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
    s.set_defaults(func=cmd_sources)
    c = sub.add_parser("classify", help="score a log file LOOK/SKIP with an exported model")
    c.add_argument("file", help="a log file, plain or .gz")
    c.add_argument("--model", help="model JSON (default: data/models/look_skip_champion.json)")
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
    c.set_defaults(func=cmd_classify)
    t = sub.add_parser(
        "sessions", help="score the sessions of a log file with a source's template model"
    )
    t.add_argument("file", help="a log file, plain or .gz, in the source's format")
    t.add_argument("--source", required=True, help="the source whose format, sessions and model")
    t.add_argument("--model", help="a template_lm folder (default: the source's newest)")
    t.add_argument(
        "--method",
        default="topg_misses",
        choices=["max_nll", "mean_nll", "perplexity", "topg_misses"],
        help="which score flags a session (each has its threshold from normal dev sessions)",
    )
    t.add_argument("--output", help="write every session scored to a .parquet or .jsonl file")
    t.set_defaults(func=cmd_sessions)
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
    d.set_defaults(func=cmd_dev)
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
