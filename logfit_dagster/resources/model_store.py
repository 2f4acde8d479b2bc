"""Where model artifacts live: one folder per model asset (and partition) under data/models.

A model asset returns a :class:`~logfit_dagster.core.models.base.ModelArtifact`; this IO
manager copies its folder into the asset's place, whole or not at all (``publish``), and hands
the stored artifact to the assets that read it. It is the only writer of those folders: two
assets never write one model folder, and nothing downstream opens a model by a path of its own.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from logfit_dagster.core.errors import ModelFileError
from logfit_dagster.core.models.base import ModelArtifact, publish
from logfit_dagster.paths import data_dir


class ModelStore(dg.ConfigurableIOManager):
    """Stores model artifacts as folders: ``<root>/<asset>`` (``<root>/<asset>/<partition>``).

    An output of None stores nothing (the previous model stays); an input marked ``optional``
    is None when no model was stored.
    """

    root_dir: str = Field(
        default="", description="Folder of model artifacts; empty means $LOGFIT_DATA_DIR/models."
    )

    def _root(self) -> Path:
        return Path(self.root_dir).resolve() if self.root_dir else data_dir() / "models"

    def _path(self, context: dg.OutputContext | dg.InputContext) -> Path:
        folder = self._root().joinpath(*context.asset_key.path)
        if context.has_asset_partitions:
            return folder / context.asset_partition_key
        return folder

    def handle_output(self, context: dg.OutputContext, obj: ModelArtifact | None) -> None:
        if obj is None:
            return
        if not isinstance(obj, ModelArtifact):
            raise dg.Failure(
                f"{context.asset_key.to_user_string()}: the model store takes a ModelArtifact, "
                f"got {type(obj).__name__}"
            )
        target = self._path(context)
        if Path(obj.folder).resolve() != target.resolve():
            publish(obj.folder, target)
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.path(str(target)),
                "family": obj.family,
                "trained_in": dg.MetadataValue.path(str(obj.folder)),
            }
        )

    def load_input(self, context: dg.InputContext) -> ModelArtifact | None:
        target = self._path(context)
        optional = (context.definition_metadata or {}).get("optional")
        if not target.exists() and optional:
            return None
        try:
            return ModelArtifact.read(target)
        except ModelFileError as exc:
            raise dg.Failure(
                description=f"input {context.asset_key.to_user_string()}: {exc}; materialize it "
                "again to store a whole model"
            ) from None
