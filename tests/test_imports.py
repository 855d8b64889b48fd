"""The import direction of the package, kept by a test (STYLE.md): models import nothing of
zerolm outside models; inference does not import training; nothing imports the CLI; no
cycles between the package's parts. Imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "zerolm"
# what loads and runs a finished model: none of it may import zerolm.train
INFERENCE = ("zerolm.loading", "zerolm.predict", "zerolm.generate", "zerolm.embed", "zerolm.modeldir",
             "zerolm.atomic", "zerolm.models", "zerolm.tasks", "zerolm.peft", "zerolm.convert",
             "zerolm.tokenizers", "zerolm.eval", "zerolm.data", "zerolm.progress", "zerolm.export",
             "zerolm.serve")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """module -> the zerolm modules it imports (anywhere in the file)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        mod = module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("zerolm")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zerolm"):
                found.add(node.module)
        graph[mod] = found
    return graph


def part(mod: str) -> str:
    """The package part a module belongs to: zerolm.models, zerolm.train, zerolm.loading..."""
    return ".".join(mod.split(".")[:2])


def under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def test_models_import_nothing_of_zerolm_outside_models():
    bad = {m: sorted(i for i in deps if not under(i, "zerolm.models"))
           for m, deps in imports().items() if under(m, "zerolm.models")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_inference_does_not_import_training():
    bad = {m: sorted(i for i in deps if under(i, "zerolm.train"))
           for m, deps in imports().items() if any(under(m, p) for p in INFERENCE)}
    assert {m: d for m, d in bad.items() if d} == {}


def test_nothing_outside_the_cli_imports_it():
    bad = {m: sorted(i for i in deps if under(i, "zerolm.cli"))
           for m, deps in imports().items() if not under(m, "zerolm.cli")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_no_import_cycles_between_parts_of_the_package():
    edges: dict[str, set[str]] = {}
    for m, deps in imports().items():
        for d in deps:
            a, b = part(m), part(d)
            if a != b and b != "zerolm":  # the package root holds only the version and `load`
                edges.setdefault(a, set()).add(b)
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif len(path) < 12:
                visit(nxt, path + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    assert not cycles, f"import cycles: {sorted({' -> '.join(c) for c in cycles})[:5]}"


def test_the_test_sees_the_imports_it_guards():
    graph = imports()
    assert "zerolm.models" in graph["zerolm.loading"] or any(under(i, "zerolm.models") for i in graph["zerolm.loading"])
    assert any(under(i, "zerolm.train") for i in graph["zerolm.cli.pretrain"])
