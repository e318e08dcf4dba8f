"""Structure rules of issue 28: short functions, and settings followable by plain
assignments (no ``locals()`` / ``setattr`` loops in the configs' builders)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "mbmpo_ray"


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE.parent), node


def test_no_function_is_over_80_lines():
    long = [f"{p}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p, n in _functions() if n.end_lineno - n.lineno + 1 > 80]
    assert not long, long


def test_builders_assign_every_setting_explicitly():
    for path, node in _functions():
        if node.name != "training":
            continue
        names = {n.func.id for n in ast.walk(node)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not names & {"locals", "setattr"}, f"{path}:{node.lineno}"
