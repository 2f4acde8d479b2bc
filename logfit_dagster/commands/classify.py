"""``logfit classify``: score a log file's lines with the line champion (or a given model)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def cmd_classify(args: argparse.Namespace) -> int:
    """Score a log file with the line champion (or a given model), whichever family it is."""
    from logfit_dagster.core.classify import classify_file
    from logfit_dagster.core.line_scorers import load_line_scorer
    from logfit_dagster.paths import line_champion_path

    model = Path(args.model) if args.model else line_champion_path()
    if not args.model and not model.exists():
        print(
            f"logfit: no champion model at {model}: materialize line_champion (logfit materialize), or pass --model",
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
