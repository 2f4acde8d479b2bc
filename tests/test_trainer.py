"""The trainer resource: data that cannot train a model is the same TrainingDataError whether
training runs in the step or in a Pipes subprocess, and the subprocess's failure names why."""

import dagster as dg
import pytest

pytest.importorskip("transformers")

from logfit_dagster.core.errors import TrainingDataError  # noqa: E402
from logfit_dagster.resources.trainer import InProcessTrainer, PipesTrainer, Trainer  # noqa: E402

from .tiny_models import tiny_bert  # noqa: E402


@pytest.mark.parametrize(
    "trainer", [InProcessTrainer(), PipesTrainer()], ids=["in_process", "pipes"]
)
def test_one_label_is_refused_with_the_reason_in_either_mode(tmp_path, trainer):
    bert = tiny_bert(tmp_path / "bert")
    rows = [
        {"shape": f"INFO served request {i}", "y": 0, "weight": 1, "source": "a"} for i in range(8)
    ]
    data = {"train": rows, "dev": rows, "test": []}

    @dg.asset
    def probe(context: dg.AssetExecutionContext, trainer: Trainer):
        try:
            trainer.train(
                context, "line_transformer", data, {"base_model": str(bert)}, tmp_path / "model"
            )
        except TrainingDataError as exc:
            return dg.Output(str(exc))
        return dg.Output("trained")

    with dg.instance_for_test() as instance:
        result = dg.materialize([probe], instance=instance, resources={"trainer": trainer})
        assert "one label: nothing to learn" in result.output_for_node("probe")


@pytest.mark.parametrize(
    "trainer",
    [InProcessTrainer(), pytest.param(PipesTrainer(), marks=pytest.mark.slow)],
    ids=["in_process", "pipes"],
)
def test_torch_threads_are_set_in_the_process_that_trains(tmp_path, trainer, monkeypatch):
    """LOGFIT_TORCH_THREADS reaches the training process in either mode (the Pipes subprocess
    inherits it), and the manifest says what the training ran with."""
    from tests.test_template_lm import PARAMS, _data

    monkeypatch.setenv("LOGFIT_TORCH_THREADS", "1")

    @dg.asset
    def probe(context: dg.AssetExecutionContext, trainer: Trainer):
        result = trainer.train(
            context, "template_lm", _data(), {**PARAMS, "max_epochs": 1}, tmp_path / "lm"
        )
        return dg.Output(result.manifest.extra.get("torch_threads"))

    with dg.instance_for_test() as instance:
        result = dg.materialize([probe], instance=instance, resources={"trainer": trainer})
        assert result.output_for_node("probe") == 1


def test_the_thread_rule_shares_the_cpus_and_obeys_an_explicit_choice():
    from logfit_dagster.core.models.threads import available_cpus, torch_threads

    cpus = available_cpus()
    assert torch_threads({"LOGFIT_TORCH_THREADS": "3"}) == (3, "LOGFIT_TORCH_THREADS")
    threads, why = torch_threads({"LOGFIT_STEPS_BESIDE": str(cpus * 4)})
    assert threads == 1 and f"{cpus * 4} step(s) beside" in why
    assert 1 <= torch_threads({})[0] <= cpus
    with pytest.raises(ValueError, match="LOGFIT_TORCH_THREADS='zero'"):
        torch_threads({"LOGFIT_TORCH_THREADS": "zero"})
