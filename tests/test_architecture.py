"""The folders are the layers (docs/architecture.md): imports point down only, and there is no cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ckptctl"
# Lowest first; a module may import its own layer and those before it.
LAYERS = (
    ("errors", "wording"),
    ("formats",),
    ("durable", "locking"),
    ("layouts",),
    ("ops",),
    ("training",),
    ("cli", "__main__"),
)


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "ckptctl" or len(parts) < 2:
        return None
    for rank, names in enumerate(LAYERS):
        if parts[1] in names:
            return rank
    return None


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(module: str, path: Path) -> set[str]:
    """Every ckptctl module ``module`` imports, at the top or inside a function (lazily)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    known = _modules()
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                out.add(candidate if candidate in known else target)
        elif isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
    return {m for m in out if m.startswith("ckptctl.") and m in known}


def test_every_module_belongs_to_a_layer():
    strays = [m for m in _modules() if m != "ckptctl" and _layer(m) is None]
    assert not strays, f"modules outside the layers of docs/architecture.md: {strays}"


def test_imports_point_down_only():
    upward = []
    for module, path in _modules().items():
        own = _layer(module)
        if own is None:
            continue
        for target in _imports(module, path):
            rank = _layer(target)
            if rank is not None and rank > own:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that point up a layer:\n" + "\n".join(sorted(upward))


def test_the_package_has_no_import_cycle():
    graph = {m: _imports(m, p) - {m} for m, p in _modules().items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("package", ["formats", "layouts", "ops"])
def test_the_reading_core_loads_without_the_training_side_or_torch(package):
    modules = [m for m in _modules() if m.startswith(f"ckptctl.{package}")]
    code = ("import importlib, json, sys\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(sys.modules)))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    loaded = set(json.loads(done.stdout))
    assert not {m for m in loaded if m.startswith(("ckptctl.training", "ckptctl.cli"))}
    assert "torch" not in loaded and "numpy" not in loaded


def test_one_temp_suffix_for_every_writer_and_reader():
    """A partial write is ``*.tmp`` everywhere: the writer (durable), the grammar (naming) and the DCP reader."""
    from ckptctl import durable
    from ckptctl.formats import dcp
    from ckptctl.layouts import naming

    assert durable.TMP_SUFFIX == naming.TMP_SUFFIX == dcp.TEMP_SUFFIX == ".tmp"
