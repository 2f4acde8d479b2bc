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
