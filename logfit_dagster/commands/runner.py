"""How ``logfit materialize`` runs one stage's selection for one source (or for all): in the
command's process, or with the code location's executor out of process; and the jobs those
out-of-process runs rebuild in their step processes."""

from __future__ import annotations

import warnings


def metadata_value(value):
    return getattr(value, "value", value)


class SelectionRunner:
    """Runs a selection of assets for one partition (or none) in this process, or with the
    code location's executor (out of process)."""

    def __init__(
        self,
        kind: str,
        defs,
        instance,
        run_config: dict,
        job: str | None = None,
        big: set[str] | None = None,
    ):
        self.kind, self.defs, self.instance, self.run_config = kind, defs, instance, run_config
        self.job = job  # a job named by --job, else every asset
        # sources too big for one process to hold every step's imports and data: with the
        # ``auto`` kind their runs (and the all-source ones) take a process per step
        self.big = big or set()

    def kind_for(self, partition: str | None) -> str:
        if self.kind != "auto":
            return self.kind
        if partition is None:
            return "multiprocess" if self.big else "in_process"
        return "multiprocess" if partition in self.big else "in_process"

    def run(self, partition: str | None, selection: list):
        import dagster as dg

        from logfit_dagster.runs import process_tags

        if self.kind_for(partition) == "in_process":
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
            dg.build_reconstructable_job("logfit_dagster.commands.runner", "job_of", (self.job,))
            if self.job
            else dg.build_reconstructable_job("logfit_dagster.commands.runner", "asset_job")
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
                k: metadata_value(v) for k, v in mat.metadata.items()
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
