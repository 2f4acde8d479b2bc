"""The training process that the ``trainer`` resource launches through Dagster Pipes (as a
subprocess or a Kubernetes pod):

    python -m logfit_dagster.training_process SPEC.json

It trains what the spec says with the core entry point (:func:`core.models.run.run_spec`); its
progress lines go to the step's log and its outcome comes back as a custom message. Data that
cannot train a model ends it with code 3 and ``training_error.json`` in the output folder, which
the trainer turns back into a ``TrainingDataError``. Needs ``dagster-pipes``, not Dagster.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dagster_pipes import open_dagster_pipes

from logfit_dagster.core.errors import LogfitError
from logfit_dagster.core.models.run import run_spec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m logfit_dagster.training_process SPEC.json", file=sys.stderr)
        return 2
    with open_dagster_pipes() as pipes:
        try:
            run_spec(
                Path(argv[0]),
                report=lambda outcome: pipes.report_custom_message(
                    json.loads(json.dumps(outcome, default=float))
                ),
                log=pipes.log.info,
            )
        except LogfitError as exc:
            pipes.log.warning(f"not trained: {exc}")
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
