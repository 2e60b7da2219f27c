"""The model package's imports run one way (no cycle at run time, not even through imports
inside functions; ``if TYPE_CHECKING:`` blocks do not run), and the memory's fast path is layered
scan <- fused <- memory <- modeling, with the oracles (reference) beside fused."""

from __future__ import annotations

import ast
from pathlib import Path

import pmnet.model as pm

MODEL_DIR = Path(pm.__file__).parent


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except those under ``if TYPE_CHECKING:``."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            todo += node.orelse
            continue
        todo += ast.iter_child_nodes(node)
    return out


def _package_imports() -> dict[str, set[str]]:
    """module name -> the modules of pmnet.model it imports at run time anywhere in its file."""
    modules = {p.stem for p in MODEL_DIR.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for p in MODEL_DIR.glob("*.py"):
        deps: set[str] = set()
        for node in _runtime_nodes(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "pmnet.model":
                deps |= {a.name if a.name in modules else "__init__" for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pmnet.model."):
                deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("pmnet.model.")}
        graph[p.stem] = deps - {p.stem}
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo += graph.get(mod, set())
    return seen


def test_no_import_cycles() -> None:
    graph = _package_imports()
    cycles = [mod for mod in graph if mod in _reaches(graph, mod)]
    assert cycles == [], f"modules on an import cycle: {cycles}"


def test_fast_path_layers() -> None:
    graph = _package_imports()
    below = {
        "scan": set(),
        "state": set(),
        "reference": {"scan", "state"},
        "triton_scan": {"scan"},
        "fused": {"scan", "state", "triton_scan", "triton_scores"},
        # config (and what it uses: the FLOP counter) sits below everything
        "memory": {"scan", "state", "reference", "fused", "triton_scan", "triton_scores", "layers", "config"}
        | _reaches(graph, "config"),
    }
    for mod, allowed in below.items():
        assert _reaches(graph, mod) <= allowed, f"{mod} imports {_reaches(graph, mod) - allowed}"
    assert "memory" in graph["modeling"] and "modeling" in graph["compiled"]
