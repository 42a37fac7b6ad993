"""The house: every import of ponder's modules (function-level ones too) only looks down, and no
module imports itself in a circle. Read from the source with ast, so nothing is imported to check."""

import ast
import graphlib
from pathlib import Path

import pytest

from tests.conftest import ROOT

# package -> the packages it may import. engine is the ground; strategies stand on it; tasks (formats,
# generators, the eval harness) over strategies; server on top of those; trainers and nas beside it.
# ponder.cli is the roof (it dispatches to every command); ponder.testing starts servers by command line;
# ponder.flags (config dataclass -> command line) is a leaf every command uses.
ALLOWED = {
    "engine": set(),
    "strategies": {"engine"},
    "tasks": {"engine", "strategies", "testing", "models"},
    "server": {"engine", "strategies", "tasks", "models", "flags"},
    "trainers": {"engine", "tasks", "models", "flags"},
    "nas": {"engine", "tasks", "trainers", "models", "flags"},
    "clients": set(),
    "models": set(),
    "testing": {"models"},
    "gguf": set(),
    "flags": set(),
    "cli": {"server", "tasks", "trainers", "nas", "gguf"},
    "__main__": {"cli"},
}
FOLDERS = {"engine", "strategies", "tasks", "server", "trainers", "nas", "clients", "models"}


def module_of(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts[1:] if rel.parts[0] == "ponder" else rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["ponder", *parts])


def imports() -> dict[str, set[str]]:
    """module -> the ponder modules it imports anywhere in its source."""
    files = [p for d in FOLDERS for p in (ROOT / d).rglob("*.py")] + list((ROOT / "ponder").glob("*.py"))
    out: dict[str, set[str]] = {}
    for path in files:
        mod = module_of(path)
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ponder"):
                found |= {f"{node.module}.{a.name}" for a in node.names} | ({node.module} - {"ponder"})
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("ponder")}
        out[mod] = found
    known = set(out)
    # "from ponder.tasks import arith" names a module; "from ponder.tasks import ARITH" a package's attribute
    return {m: {i for i in deps if i in known and i != m} for m, deps in out.items()}


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ponder"


def test_every_import_looks_down():
    wrong = [f"{m} -> {d}" for m, deps in imports().items() for d in deps
             if package(d) != package(m) and package(d) not in ALLOWED.get(package(m), set())]
    assert not wrong, "imports that reach up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_itself_in_a_circle():
    graph = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in imports().items()}  # a package's
    try:  # __init__ imported by its own modules is not a circle
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


def test_the_packages_form_the_layers_in_order():
    graph = {p: deps for p, deps in ALLOWED.items()}
    order = list(graphlib.TopologicalSorter(graph).static_order())
    assert order.index("engine") < order.index("strategies") < order.index("tasks") < order.index("server")
