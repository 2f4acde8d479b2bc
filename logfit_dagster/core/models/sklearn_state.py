"""Fitted scikit-learn estimators saved as JSON and arrays, and loaded without pickle.

Only the classes :func:`_classes` lists are written or read: the session-count models' pipelines. An
estimator's state (its ``__getstate__``, what pickle would take) is written as JSON, every numpy
array of it into one ``.npz`` file beside it (read with ``allow_pickle=False``), a fitted tree's
node arrays among them. Loading builds each object from its listed class and hands it its state
through the class's own ``__setstate__``: no other class is ever constructed, no code is read.

A value of a type this module does not know fails the save, naming where it sits in the
estimator: nothing is written that could not be read back.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from logfit_dagster.core.errors import ModelFileError

FORMAT = "logfit-sklearn-state-1"


@functools.cache
def _classes() -> dict[str, type]:
    """What may be saved and loaded, by class name (imported on first use)."""
    from sklearn.ensemble import IsolationForest
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.tree import DecisionTreeClassifier, ExtraTreeRegressor

    return {
        cls.__name__: cls
        for cls in (
            Pipeline,
            CountVectorizer,
            TfidfTransformer,
            LogisticRegression,
            DecisionTreeClassifier,
            IsolationForest,
            # the trees an IsolationForest is made of
            ExtraTreeRegressor,
        )
    }


def save(estimator, path: Path) -> list[Path]:
    """Write ``estimator`` as ``path`` (``.json``) and its arrays beside it (``.npz``).

    Returns:
        The two files written.

    Raises:
        TypeError: a value this format does not hold, named by its place in the estimator.
    """
    path = Path(path)
    arrays: dict[str, np.ndarray] = {}
    document = {"format": FORMAT, "estimator": _encode(estimator, arrays, "estimator")}
    arrays_path = path.with_suffix(".npz")
    with arrays_path.open("wb") as out:
        np.savez(out, **arrays)
    path.write_text(json.dumps(document))
    return [path, arrays_path]


def load(path: Path):
    """The estimator saved at ``path`` by :func:`save`.

    Raises:
        ModelFileError: a file that is missing, unreadable, of another format, or that names a
            class outside the list.
    """
    path = Path(path)
    arrays_path = path.with_suffix(".npz")
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable model file ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not a {FORMAT} file")
    try:
        with np.load(arrays_path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
    except FileNotFoundError:
        raise ModelFileError(f"{arrays_path}: missing") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{arrays_path}: not a readable array file ({exc})") from None
    try:
        return _decode(document["estimator"], arrays)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: damaged ({type(exc).__name__}: {exc})") from None


def _encode(value, arrays: dict, where: str):
    from sklearn.tree._tree import Tree

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return {"$scalar": [value.dtype.str, value.item()]}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"{where}: an array of Python objects ({value.dtype})")
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"$array": key}
    if isinstance(value, list):
        return [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"{where}: a dict with keys that are not strings")
        return {"$dict": {k: _encode(v, arrays, f"{where}.{k}") for k, v in value.items()}}
    if isinstance(value, type) and issubclass(value, np.generic):
        return {"$dtype": np.dtype(value).str}
    if isinstance(value, Tree):
        _, args, state = value.__reduce__()
        return {"$tree": _encode([args, state], arrays, f"{where}.tree")}
    name = type(value).__name__
    if _classes().get(name) is type(value):
        return {"$estimator": name, "state": _encode(value.__getstate__(), arrays, where)}
    raise TypeError(f"{where}: a {type(value).__module__}.{name}, which this format does not hold")


def _decode(value, arrays: dict):
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    (tag,) = [k for k in value if k.startswith("$")] or [None]
    if tag == "$scalar":
        dtype, item = value["$scalar"]
        return np.dtype(dtype).type(item)
    if tag == "$array":
        return arrays[value["$array"]]
    if tag == "$tuple":
        return tuple(_decode(v, arrays) for v in value["$tuple"])
    if tag == "$dict":
        return {k: _decode(v, arrays) for k, v in value["$dict"].items()}
    if tag == "$dtype":
        return np.dtype(value["$dtype"]).type
    if tag == "$tree":
        from sklearn.tree._tree import Tree

        args, state = _decode(value["$tree"], arrays)
        tree = Tree(*args)
        tree.__setstate__(state)
        return tree
    if tag == "$estimator":
        cls = _classes().get(value["$estimator"])
        if cls is None:
            raise ModelFileError(f"a {value['$estimator']!r}, which logfit does not load")
        estimator = cls.__new__(cls)
        estimator.__setstate__(_decode(value["state"], arrays))
        return estimator
    raise ValueError(f"unknown entry {sorted(value)}")
