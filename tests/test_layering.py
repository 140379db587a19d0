"""The package layering of docs/architecture.md holds, counting every import: module level, inside
functions and under ``TYPE_CHECKING``. A package imports only from packages below it; Flower
only in ``federation`` (its dataset library ``flwr_datasets`` also in ``data``)."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "smartfed"

# Bottom to top; a package may import any package listed before it (and itself).
LAYERS = [
    "__init__", "errors", "utils", "telemetry", "models", "data", "pool", "robust", "importance",
    "eeqa", "tuners", "engine", "methods", "assembly", "hf", "evaluation", "federation", "bench",
    "report", "cli", "testing",
]  # fmt: skip
# The one downward exception: `smartfed.load_run` is defined in the bottom package so users can
# write `import smartfed; smartfed.load_run(dir)`, and imports `smartfed.hf` inside the function
# (`import smartfed` stays torch-free). Nothing else in `__init__` may import upwards.
LAZY_FACADE = {("__init__", "hf")}
FLOWER_ALLOWED = {"flwr": {"federation"}, "flwr_datasets": {"data", "federation"}}


def _package(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return parts[0]


def _imported(node: ast.AST, path: Path, root: Path) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolve against this module's package
            parts = list(path.relative_to(root.parent).with_suffix("").parts)
            base = parts[: len(parts) - node.level]
            return [".".join([*base, node.module] if node.module else base)]
        return [node.module or ""]
    return []


def _at_module_level(node: ast.AST, path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(node.lineno == top.lineno for top in tree.body)


def layering_violations(root: Path = SRC) -> list[str]:
    """Every import that breaks the layering, as 'file:line: what'."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    problems = []
    for path in sorted(root.rglob("*.py")):
        package = _package(path, root)
        assert package in rank, f"{path}: package '{package}' has no layer in LAYERS"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for name in _imported(node, path, root):
                top, _, rest = name.partition(".")
                where = f"{path.relative_to(root)}:{node.lineno}"
                if top == "smartfed":
                    target = rest.partition(".")[0] or "__init__"
                    if target not in rank:
                        target = "__init__"  # `from smartfed import __version__`
                    if (package, target) in LAZY_FACADE and not _at_module_level(node, path):
                        continue
                    if target != package and rank[target] > rank[package]:
                        problems.append(f"{where}: {package} imports the higher {target}")
                elif top in FLOWER_ALLOWED and package not in FLOWER_ALLOWED[top]:
                    problems.append(f"{where}: {package} imports {top}")
    return problems


def test_every_import_respects_the_layers():
    assert layering_violations() == []


def test_every_package_has_a_layer():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(LAYERS)


def test_planted_violations_are_caught(tmp_path):
    """A checker that cannot fail proves nothing: plant an engine -> Flower import hidden in a
    function, and a lower -> higher import under TYPE_CHECKING, and see both reported."""
    root = tmp_path / "smartfed"
    shutil.copytree(SRC, root, ignore=shutil.ignore_patterns("__pycache__", "bundled", "modules"))
    (root / "engine" / "planted.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from smartfed.methods.registry import get_method\n"
        "def f():\n"
        "    import flwr\n"
        "    from ..federation import runner\n"
    )
    found = layering_violations(root)
    assert any("planted.py:3: engine imports the higher methods" in p for p in found), found
    assert any("planted.py:5: engine imports flwr" in p for p in found), found
    assert any("planted.py:6: engine imports the higher federation" in p for p in found), found
    assert len(found) == 3
