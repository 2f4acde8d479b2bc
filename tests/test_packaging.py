"""How the project is declared and tested: every imported package is a dependency, one Dagster
release, and the shared real data required where CI says so."""

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imported_top_level_modules() -> set[str]:
    modules = set()
    for path in (ROOT / "logfit_dagster").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    return modules - set(sys.stdlib_module_names) - {"logfit_dagster"}


def _declared() -> set[str]:
    """The dependencies, and the extras that executors import when chosen (not ``dev``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    requirements = list(project["dependencies"])
    for name, extra in extras.items():
        if name != "dev":
            requirements += extra
    names = set()
    for requirement in requirements:
        names.add(re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def test_every_imported_package_is_a_declared_dependency():
    distributions = packages_distributions()
    declared = _declared()
    # Packages that come with a declared dependency under another distribution name.
    missing = []
    for module in sorted(_imported_top_level_modules()):
        dists = {d.lower().replace("_", "-") for d in distributions.get(module, [module])}
        if not dists & declared:
            missing.append(f"{module} (from {sorted(dists)})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_the_dagster_family_is_one_release_whatever_the_extras():
    """dagster-celery and dagster-k8s pin dagster exactly: every member is pinned to the same
    release, so that installing an extra never moves dagster."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    family = [r for r in requirements if r.startswith("dagster")]
    assert family and all("==" in r for r in family), family
    patches = {r.split("==")[1].split(".")[-1] for r in family}
    assert len(patches) == 1, family


def test_a_test_that_needs_the_shared_data_fails_without_it_where_ci_requires_it(tmp_path):
    import os
    import subprocess

    test = "tests/test_sequences.py::test_the_ait_hadoop_sequences"
    env = {**os.environ, "LOGFIT_SHARED_DATA": str(tmp_path)}
    env.pop("LOGFIT_REQUIRE_SHARED_DATA", None)

    def run(**extra) -> subprocess.CompletedProcess:
        return subprocess.run(
            # one process: the suite's own workers are enough
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "-n",
                "0",
                "-rs",
                test,
            ],
            cwd=ROOT,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
        )

    skipped = run()
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout
    assert f"shared real data not found at {tmp_path}" in skipped.stdout
    required = run(LOGFIT_REQUIRE_SHARED_DATA="1")
    assert (
        required.returncode == 1 and "LOGFIT_REQUIRE_SHARED_DATA=1 requires it" in required.stdout
    )
