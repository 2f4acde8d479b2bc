"""Nothing in a user's data folder runs code: no loader that can build arbitrary objects is
reachable from the package."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "logfit_dagster"
# modules whose load builds whatever objects the file names
UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "jsonpickle",
    "dill",
    "cloudpickle",
    "shelve",
    "marshal",
}
# (module alias, function) calls that load pickles, always
UNSAFE_CALLS = {
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("joblib", "load"),
    ("yaml", "unsafe_load"),
    ("yaml", "full_load"),
    ("yaml", "load_all"),
    ("yaml", "unsafe_load_all"),
    ("torch", "load"),  # allowed only with weights_only=True, checked below
    ("yaml", "load"),  # allowed only with a SafeLoader subclass, checked below
    ("np", "load"),  # allowed unless allow_pickle=True
    ("numpy", "load"),
}


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if isinstance(node.func.value, ast.Name):
                yield node, node.func.value.id, node.func.attr


def _keyword(node: ast.Call, name: str):
    return next((k.value for k in node.keywords if k.arg == name), None)


def _problems(path: Path, module: str | None = None) -> list[str]:
    """What in one file can load a file into arbitrary objects (``module``: its import name,
    to resolve a YAML loader class)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module.split(".")[0]]
        found += [f"{path}:{node.lineno}: imports {n}" for n in names if n in UNSAFE_MODULES]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("eval", "exec"):
                found.append(f"{path}:{node.lineno}: calls {node.func.id}")
    for node, owner, attr in _calls(tree):
        if (owner, attr) not in UNSAFE_CALLS:
            continue
        where = f"{path}:{node.lineno}: {owner}.{attr}"
        if attr == "load" and owner == "torch":
            flag = _keyword(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append(where + " without weights_only=True")
        elif attr == "load" and owner == "yaml":
            loader = _keyword(node, "Loader")
            safe = False
            if isinstance(loader, ast.Name) and module:
                import yaml

                cls = getattr(importlib.import_module(module), loader.id, None)
                safe = isinstance(cls, type) and issubclass(cls, yaml.SafeLoader)
            if not safe:
                found.append(where + " without a SafeLoader")
        elif attr == "load" and owner in ("np", "numpy"):
            flag = _keyword(node, "allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append(where + " with allow_pickle")
        else:
            found.append(where)
    return found


def test_no_loader_that_runs_code_is_reachable_from_the_package():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    problems = [
        p
        for f in files
        for p in _problems(f, ".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts))
    ]
    assert problems == []


@pytest.mark.parametrize(
    "source",
    [
        "import pickle\n",
        "from jsonpickle import loads\n",
        "import torch\ntorch.load('x', weights_only=False)\n",
        "import torch\ntorch.load('x')\n",
        "import yaml\nyaml.load('x', Loader=yaml.Loader)\n",
        "import pandas as pd\npd.read_pickle('x')\n",
        "import numpy as np\nnp.load('x', allow_pickle=True)\n",
    ],
)
def test_the_check_sees_each_unsafe_loader(tmp_path, source):
    target = tmp_path / "probe.py"
    target.write_text(source)
    assert _problems(target)


def test_training_state_round_trips_without_pickle_and_a_tampered_one_is_named(tmp_path):
    import torch

    from logfit_dagster.core.errors import StateFileError
    from logfit_dagster.core.models.tensor_tree import load_tensor_tree, save_tensor_tree

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    model(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    tree = {
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": [],
        "note": (1, 2.5, None, "x"),
    }
    stem = tmp_path / "optimizer"
    save_tensor_tree(tree, stem)
    loaded = load_tensor_tree(stem)
    assert torch.equal(loaded["torch_rng"], tree["torch_rng"])
    assert loaded["note"] == (1, 2.5, None, "x") and loaded["cuda_rng"] == []
    fresh = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters(), lr=0.5)
    fresh.load_state_dict(loaded["optimizer"])
    assert fresh.param_groups[0]["lr"] == 0.01
    state = next(iter(fresh.state.values()))
    assert torch.equal(state["exp_avg"], next(iter(optimizer.state.values()))["exp_avg"])

    stem.with_suffix(".json").write_text('{"object": "os.system"}')
    with pytest.raises(StateFileError, match=r"optimizer\.json: unknown node kind 'object'"):
        load_tensor_tree(stem)
    stem.with_suffix(".safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(StateFileError, match=r"optimizer\.safetensors: not a saved training state"):
        load_tensor_tree(stem)
