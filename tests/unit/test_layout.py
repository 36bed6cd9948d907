"""The package's import graph: no circles between its modules and packages, the config schemas
at the bottom (importing no other part of the package), the checks before loading independent
of the pipeline they guard. Lazy (function-level) imports count as arrows too."""

import ast

from tests.conftest import ROOT

PKG = ROOT / "xling_edit"


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def import_graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for name in names:
                if name.startswith("xling_edit.") and _unit(name) != _unit(module):
                    edges.setdefault(_unit(module), set()).add(_unit(name))
    return edges


def test_no_circles():
    edges = import_graph()

    def reaches(a, b, seen):
        for c in edges.get(a, ()):
            if c == b or (c not in seen and (seen.add(c) or reaches(c, b, seen))):
                return True
        return False

    circles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if reaches(b, a, set())})
    assert circles == []


def test_the_config_schemas_are_at_the_bottom_and_preflight_does_not_import_the_pipeline():
    edges = import_graph()
    assert edges.get("xling_edit.config", set()) <= {"xling_edit.fastpaths"}
    assert "xling_edit.pipeline" not in edges["xling_edit.preflight"]
    assert "xling_edit.pipeline" not in edges.get("xling_edit.editing", set())
