"""The packages stay layered: each module imports only its own layer and the ones below, with no import cycle.

Layers, bottom up: ``engine`` (the domain core) < ``crawlers``, ``dashboards`` (siblings that never import each
other) < ``ray_jobs`` (jobs, benchmarks, demo and the ``homeward`` command line that wires them all).

An ``ast`` scan rather than import-linter: it reads every ``import`` statement, those inside functions included (a
lazy import is still a dependency), in well under a second, without importing a module (no Ray, torch or Scrapy
start-up) and without another dev tool with its own configuration format; the strongly connected components of the
same graph give every cycle at once (networkx, already installed with torch).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import networkx as nx

REPO = Path(__file__).resolve().parents[1]

#: package → rank; a module may import a package of a lower rank, or its own package.
LAYERS = {"engine": 0, "crawlers": 1, "dashboards": 1, "ray_jobs": 2}


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


#: a string that is a whole dotted path or ``module:attr``: an import by name (Scrapy component paths, the verb table)
_NAMED_IMPORT = re.compile(r"[A-Za-z_]\w*(?:\.\w+)+(?::\w+)?|[A-Za-z_]\w*:\w+")


def _imported_names(module: str, is_package: bool, tree: ast.AST) -> list[str]:
    """Every dotted name the module imports, relative imports resolved; ``from a import b`` gives both ``a`` and
    ``a.b`` (``b`` may be a submodule or an attribute; the caller keeps the ones that are modules). Strings naming
    a module (``"pkg.mod:func"``, ``"pkg.mod.Class"``) count: importing by name is still a dependency."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _NAMED_IMPORT.fullmatch(node.value):
            names.append(node.value.partition(":")[0])
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.append(source)
            names += [f"{source}.{alias.name}" for alias in node.names]
    return names


def import_graph(root: Path, packages: list[str]) -> nx.DiGraph:
    """Module → module edges between the modules of ``packages`` under ``root``."""
    files = {_module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph = nx.DiGraph()
    graph.add_nodes_from(files)
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in _imported_names(module, path.name == "__init__.py", tree):
            # the longest prefix that is one of ours: `engine.models.embedder.Embedder` → engine.models.embedder
            parts = name.split(".")
            target = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in files), None)
            if target and target != module and not module.startswith(target + "."):
                graph.add_edge(module, target)
    return graph


def layer_violations(graph: nx.DiGraph, layers: dict[str, int]) -> list[str]:
    """``importer → imported`` for each import of a higher layer or of a sibling package."""
    bad = []
    for importer, imported in graph.edges:
        src, dst = importer.split(".")[0], imported.split(".")[0]
        if src != dst and layers[dst] >= layers[src]:
            bad.append(f"{importer} → {imported}")
    return sorted(bad)


def import_cycles(graph: nx.DiGraph) -> list[list[str]]:
    """The modules of each cycle (a strongly connected component of more than one module)."""
    return sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1)


def test_no_module_imports_a_layer_above_its_own() -> None:
    violations = layer_violations(import_graph(REPO, list(LAYERS)), LAYERS)
    assert not violations, "imports against the layers:\n" + "\n".join(violations)


def test_no_import_cycles() -> None:
    cycles = import_cycles(import_graph(REPO, list(LAYERS)))
    assert not cycles, "import cycles:\n" + "\n".join(" ↔ ".join(c) for c in cycles)


def test_scan_finds_lazy_relative_and_sibling_imports(tmp_path: Path) -> None:
    """The scanner itself can fail: a planted upward lazy import, a sibling import and a relative-import cycle."""
    files = {
        "low/__init__.py": "",
        "low/a.py": "def f():\n    from high.job import run\n    return run\n",
        "low/b.py": "from . import c\n",
        "low/c.py": "from .b import x\n",
        "left/__init__.py": "",
        "left/x.py": "import right.y\nimport low.a\n",
        "right/__init__.py": "",
        "right/y.py": "from low import a\n",
        "high/__init__.py": "",
        "high/job.py": "from low.a import f\n",
        "high/cli.py": "VERBS = {'run': 'left.x:main'}\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    layers = {"low": 0, "left": 1, "right": 1, "high": 2}
    graph = import_graph(tmp_path, list(layers))
    assert layer_violations(graph, layers) == ["left.x → right.y", "low.a → high.job"]
    assert import_cycles(graph) == [["high.job", "low.a"], ["low.b", "low.c"]]
    assert graph.has_edge("high.cli", "left.x")  # an import by name
