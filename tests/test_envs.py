"""The conda environments (envs/*.yaml, for `snakemake --sdm conda`) carry exactly the package's
dependencies from pyproject.toml, with the same lower bounds: a dependency added to, raised in or
dropped from one place and not the other fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
ENVS = sorted((REPO / "envs").glob("*.yaml"))
CONDA_NAME = {"torch": "pytorch"}  # PyPI name -> conda-forge name, where they differ
# Conda-only entries, each with its reason: the interpreter, pip for the `-e ../` install, and
# the conda-forge metapackage that picks the CPU or CUDA build of pytorch.
INFRA = {"python", "pip", "pytorch-cpu", "pytorch-gpu"}
SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)\s*(.*)$")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def package_requirements() -> dict[str, SpecifierSet]:
    """conda name -> version specifier of every dependency in pyproject.toml."""
    reqs = {}
    for line in pyproject()["project"]["dependencies"]:
        req = Requirement(line)
        assert not req.extras and req.marker is None, f"{line}: extras/markers have no conda form"
        reqs[CONDA_NAME.get(req.name.lower(), req.name.lower())] = req.specifier
    return reqs


def conda_specs(env: dict) -> tuple[dict[str, str], list]:
    """(conda package -> version spec as written, pip entries) of an environment file."""
    specs, pip = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep.get("pip", [])
            continue
        m = SPEC.match(str(dep).strip())
        assert m, f"unreadable dependency {dep!r}"
        name, version = m.group(1).lower(), m.group(2).replace(" ", "")
        assert name not in specs, f"{name} listed twice"
        specs[name] = version
    return specs, pip


def test_there_are_environments():
    assert {p.name for p in ENVS} == {"cpu.yaml", "gpu.yaml"}


@pytest.mark.parametrize("path", ENVS, ids=lambda p: p.name)
def test_environment_matches_pyproject(path):
    env = yaml.safe_load(path.read_text())
    specs, pip = conda_specs(env)
    wanted = package_requirements()

    missing = sorted(set(wanted) - set(specs))
    extra = sorted(set(specs) - set(wanted) - INFRA)
    assert not missing, f"{path.name}: lacks {missing} (in pyproject.toml dependencies)"
    assert not extra, f"{path.name}: lists {extra}, which pyproject.toml does not depend on"
    differ = {name: (specs[name], str(wanted[name])) for name in wanted
              if SpecifierSet(specs[name]) != wanted[name]}
    assert not differ, f"{path.name}: versions differ (env, pyproject.toml): {differ}"

    # the environment installs this package itself (no other pip packages hiding there)
    assert pip == ["-e ../"], f"{path.name}: pip section should be just `-e ../`, got {pip}"
    assert (path.parent / "..").resolve() == REPO
    # conda-forge only: the `pytorch`/`nvidia` channels stopped publishing at torch 2.5
    assert env["channels"] == ["conda-forge", "nodefaults"], env["channels"]
    # the interpreter satisfies requires-python
    python = SpecifierSet(pyproject()["project"]["requires-python"])
    assert specs["python"].lstrip("=") in python, (specs["python"], str(python))


def test_cpu_and_gpu_environments_pick_their_pytorch_build():
    cpu, _ = conda_specs(yaml.safe_load((REPO / "envs/cpu.yaml").read_text()))
    gpu, _ = conda_specs(yaml.safe_load((REPO / "envs/gpu.yaml").read_text()))
    assert "pytorch-cpu" in cpu and "pytorch-gpu" not in cpu
    assert "pytorch-gpu" in gpu and "pytorch-cpu" not in gpu
    assert {k: v for k, v in cpu.items() if k != "pytorch-cpu"} == \
        {k: v for k, v in gpu.items() if k != "pytorch-gpu"}
