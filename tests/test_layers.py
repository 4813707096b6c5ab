"""The house keeps its layers (README, Layout): no module imports one on a higher layer, the
stand-ins import nothing of the runtime, and the production bridge nothing of the local stack."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# lowest first; a module may import its own layer and those below
LAYERS = {
    "shared.contracts": 0,
    "shared.errors": 0,
    "shared.infra": 1,
    "shared.delivery": 1,
    "shared.clients": 2,
    "shared.llm": 2,
    "shared.idempotency": 2,
    "shared.handoff": 2,
    "shared.blueprints": 3,
    "shared.budget": 3,
    "shared.mock_llm": 3,
    "shared.prompt": 3,
    "shared.summary": 3,
    "shared.tools": 3,
    "shared.streaming": 3,
    "shared.intake": 4,
    "shared.runtime": 4,
    "shared.health": 5,
    "shared.pipeline": 5,
    "handlers": 6,
    "runner": 6,
    "main": 7,
    "localstack": 7,
    "local_runner": 8,
}
SOURCES = ("shared", "handlers", "runner", "localstack", "standins", "main.py", "local_runner.py")


def layer(module: str) -> tuple[str, int] | None:
    found = [(name, n) for name, n in LAYERS.items() if module == name or module.startswith(name + ".")]
    return max(found, key=lambda pair: len(pair[0])) if found else None


def modules() -> dict[str, set[str]]:
    """Every source module and the modules it imports (``from a import b`` counts ``a`` and ``a.b``)."""
    found: dict[str, set[str]] = {}
    for source in SOURCES:
        path = ROOT / source
        for file in [path] if path.is_file() else sorted(path.rglob("*.py")):
            name = ".".join(file.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            imported: set[str] = set()
            for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    imported.add(node.module)
                    imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            found[name] = imported
    return found


def test_no_module_imports_a_higher_layer():
    upward = []
    for name, imported in modules().items():
        mine = layer(name)
        for other in imported:
            theirs = layer(other)
            if mine and theirs and theirs[1] > mine[1]:
                upward.append(f"{name} → {other}")
    assert upward == []


def test_every_runtime_module_has_a_layer():
    unplaced = [n for n in modules() if n != "shared" and not n.startswith("standins") and layer(n) is None]
    assert unplaced == []


def test_the_stand_ins_import_nothing_of_the_runtime():
    ours = ("shared", "handlers", "runner", "localstack", "main", "local_runner")
    leaks = [
        f"{name} → {other}"
        for name, imported in modules().items()
        if name.startswith("standins")
        for other in imported
        if other.split(".")[0] in ours
    ]
    assert leaks == []


def test_the_bridge_imports_nothing_of_the_local_stack():
    leaks = [
        f"{name} → {other}"
        for name, imported in modules().items()
        if name.startswith("runner")
        for other in imported
        if other.split(".")[0] in ("standins", "localstack")
    ]
    assert leaks == []
