"""YAML files a user writes (the registry, a drop folder's source.yaml), read strictly.

``yaml.safe_load`` only (plain data; a tag that would build an object is an error); a key given
twice in one mapping is an error, not a silent last-one-wins (found on the document's node tree,
which constructs nothing); every error names the file, and the line where it has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from logfit_dagster.core.errors import RegistryError


def _duplicate_key(node) -> yaml.MarkedYAMLError | None:
    """The first mapping key given twice in a composed node tree, as a marked error."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in current.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in seen:
                        return yaml.MarkedYAMLError(
                            problem=f"key {key.value!r} appears twice (first on line "
                            f"{seen[key.value]})",
                            problem_mark=key.start_mark,
                        )
                    seen[key.value] = key.start_mark.line + 1
                stack.extend((key, value))
        elif isinstance(current, yaml.SequenceNode):
            stack.extend(current.value)
    return None


def load_yaml(path: Path) -> Any:
    """The document of a YAML file.

    Raises:
        RegistryError: naming the file (and the line) when it cannot be read, is not UTF-8, is
            not valid YAML or repeats a key.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise RegistryError(f"{path}: is a folder, not a YAML file") from None
    except OSError as exc:
        raise RegistryError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RegistryError(
            f"{path}: line {line}: not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    try:
        duplicate = _duplicate_key(yaml.compose(text, Loader=yaml.SafeLoader))
        if duplicate is not None:
            raise duplicate
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise RegistryError(f"{path}: {at}not valid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path}: not valid YAML: {exc}") from None
