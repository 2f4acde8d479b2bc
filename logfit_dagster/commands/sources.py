"""``logfit sources``: list sources, enable Loghub systems, download full data sets."""

from __future__ import annotations

import argparse
import sys


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
