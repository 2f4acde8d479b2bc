"""Nested training state (an optimizer's, a scheduler's, random states) saved without pickle.

The tensors go to a safetensors file, the structure around them (dicts, lists, tuples, numbers,
strings) to a JSON file beside it; loading rebuilds the same nesting and runs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from logfit_dagster.core.errors import StateFileError


def save_tensor_tree(tree: Any, stem: Path) -> None:
    """Write ``tree`` as ``stem.safetensors`` (its tensors) and ``stem.json`` (the rest)."""
    import torch
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}

    def encode(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            # a copy of each: safetensors refuses tensors that share storage
            tensors[key] = value.detach().cpu().contiguous().clone()
            return {"tensor": key}
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str | int) or isinstance(key, bool):
                    raise TypeError(f"cannot save a dict key of type {type(key).__name__}")
            return {"dict": [[k, encode(v)] for k, v in value.items()]}
        if isinstance(value, tuple):
            return {"tuple": [encode(v) for v in value]}
        if isinstance(value, list):
            return {"list": [encode(v) for v in value]}
        if value is None or isinstance(value, bool | int | float | str):
            return {"value": value}
        raise TypeError(f"cannot save a value of type {type(value).__name__} without pickle")

    structure = encode(tree)
    stem = Path(stem)
    save_file(tensors, str(stem.with_suffix(".safetensors")))
    stem.with_suffix(".json").write_text(json.dumps(structure), encoding="utf-8")


def load_tensor_tree(stem: Path) -> Any:
    """The tree :func:`save_tensor_tree` wrote at ``stem``.

    Raises:
        StateFileError: naming the file when either part is missing or malformed.
    """
    from safetensors.torch import load_file

    stem = Path(stem)
    structure_path, tensors_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    try:
        structure = json.loads(structure_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise StateFileError(f"{structure_path}: not a saved training state: {exc}") from None
    try:
        tensors = load_file(str(tensors_path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for a bad header
        raise StateFileError(f"{tensors_path}: not a saved training state: {exc}") from None

    def decode(node: Any) -> Any:
        if not isinstance(node, dict) or len(node) != 1:
            raise StateFileError(f"{structure_path}: malformed node {str(node)[:80]!r}")
        ((kind, body),) = node.items()
        if kind == "tensor":
            if body not in tensors:
                raise StateFileError(
                    f"{structure_path}: names tensor {body!r} not in {tensors_path}"
                )
            return tensors[body]
        if kind == "dict" and isinstance(body, list):
            return {k: decode(v) for k, v in body}
        if kind == "tuple" and isinstance(body, list):
            return tuple(decode(v) for v in body)
        if kind == "list" and isinstance(body, list):
            return [decode(v) for v in body]
        if kind == "value" and (body is None or isinstance(body, bool | int | float | str)):
            return body
        raise StateFileError(f"{structure_path}: unknown node kind {kind!r}")

    try:
        return decode(structure)
    except (TypeError, ValueError) as exc:
        raise StateFileError(f"{structure_path}: malformed: {exc}") from None
