"""Every arrow in the package points down: no import cycle between padistill's modules or sub-packages
(every import counted, the lazy ones inside functions included)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _graph(level):
    mods = {".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): p
            for p in (SRC / "padistill").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        found = set()
        for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(n, ast.Import):
                found |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module:
                found |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
        key = level(name)
        graph.setdefault(key, set()).update(level(m) for m in found if m in mods and level(m) != key)
    return graph


def _cycle(graph):
    state: dict[str, int] = {}

    def visit(v, path):
        state[v] = 1
        for w in graph.get(v, ()):
            if state.get(w) == 1:
                return path + [v, w]
            if w not in state and (c := visit(w, path + [v])):
                return c
        state[v] = 2
        return None

    return next((c for v in sorted(graph) if v not in state and (c := visit(v, []))), None)


def test_no_module_cycle():
    assert _cycle(_graph(lambda m: m)) is None


def test_no_subpackage_cycle():  # padistill.training -> padistill.match -> padistill.scores -> ... was one
    assert _cycle(_graph(lambda m: ".".join(m.split(".")[:2]))) is None
