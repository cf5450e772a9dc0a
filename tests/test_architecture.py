"""The shape of the package, checked: imports point downwards, stages never import each other,
the model-study command stays light, and functions stay small."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "etemseg"

#: layer of each top-level part; a module may import only its own layer or lower ones
LAYERS = {"errors": 0, "config": 3, "io": 1, "layout": 1, "levels": 2, "morphology": 2,
          "plotting": 2, "scales": 2, "synth": 2, "nn": 3, "analysis": 3, "tracking": 3,
          "protocol": 3, "stages": 4, "cli": 5, "__init__": 6}


def part(module: str) -> str:
    """``etemseg.io.store`` -> ``io``; ``etemseg`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def modules():
    for path in sorted(PKG.rglob("*.py")):
        name = ".".join(("etemseg", *path.relative_to(PKG).with_suffix("").parts))
        yield name.removesuffix(".__init__"), ast.parse(path.read_text())


def imports(tree: ast.AST) -> set[str]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("etemseg"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("etemseg"))
    return out


def test_imports_point_downwards_and_stages_are_independent():
    wrong = []
    for name, tree in modules():
        me = part(name)
        for target in imports(tree):
            other = part(target)
            if other == "__init__":       # `from etemseg import __version__`
                continue
            if LAYERS[other] > LAYERS[me]:
                wrong.append(f"{name} imports {target} (a higher layer)")
            if me == "stages" and other == "stages" and target != name:
                wrong.append(f"{name} imports another stage, {target}")
    assert not wrong, "\n".join(wrong)


def test_every_part_has_a_layer():
    assert {part(name) for name, _ in modules()} <= set(LAYERS)


def test_compare_loads_neither_torch_nor_numba():
    code = ("import sys; from etemseg.cli import build_parser; build_parser(only='compare');"
            "import etemseg.analysis.comparison, etemseg.cli as c; c.cmd_compare;"
            "print('torch' in sys.modules, 'numba' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["False", "False"], r.stdout + r.stderr


def _numba(fn: ast.FunctionDef) -> bool:
    return any("jit" in ast.unparse(d) or "vectorize" in ast.unparse(d)
               for d in fn.decorator_list)


@pytest.mark.parametrize("limit", [80])
def test_no_function_over_80_lines_outside_numba_kernels(limit):
    long = [f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
            for name, tree in modules() for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not _numba(node)
            and node.end_lineno - node.lineno + 1 > limit]
    assert not long, "\n".join(long)
