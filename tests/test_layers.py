"""The package's layering (README, architecture): no import cycles between top-level units, nothing at the
bottom imports a feature package, and `model/` imports nothing of phiforge but `io`."""

from __future__ import annotations

import ast
from pathlib import Path

import phiforge

ROOT = Path(phiforge.__file__).parent
BOTTOM = {"io", "stages", "teacher", "sandbox", "tokenizer", "model"}


def _unit_imports() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT).with_suffix("").parts
        unit, pkg = parts[0], ["phiforge", *parts[:-1]]  # the package a relative import starts from
        for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(n, ast.ImportFrom) and n.level:
                base = pkg[: len(pkg) - (n.level - 1)]
                targets = (
                    [".".join(base + [n.module])]
                    if n.module
                    else [".".join(base + [a.name]) for a in n.names]
                )
            elif isinstance(n, ast.ImportFrom):
                targets = [n.module or ""]
            elif isinstance(n, ast.Import):
                targets = [a.name for a in n.names]
            else:
                continue
            for t in targets:
                bits = t.split(".")
                if bits[0] == "phiforge" and len(bits) > 1 and bits[1] != unit:
                    edges.setdefault(unit, set()).add(bits[1])
    return edges


def test_no_cycles_between_units():
    edges = _unit_imports()

    def reach(u, seen):
        for v in edges.get(u, ()):
            if v not in seen:
                seen.add(v)
                reach(v, seen)
        return seen

    cyclic = [u for u in edges if u in reach(u, set())]
    assert not cyclic, f"import cycles through {cyclic}: {edges}"


def test_bottom_imports_only_io():
    edges = _unit_imports()
    for u in BOTTOM:
        assert edges.get(u, set()) <= {"io"}, f"{u} imports {edges[u]}"


def test_no_feature_imports_cli_or_speedrun():
    edges = _unit_imports()
    for u, targets in edges.items():
        if u not in ("cli", "speedrun"):
            assert not targets & {"cli", "speedrun"}, f"{u} wires stages: {targets}"
