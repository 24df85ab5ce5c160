"""No import cycles in ``threestudio/`` and ``custom/`` (static: the source is parsed with ``ast``, nothing imported).

What counts as an edge ``a -> b``: every ``import``/``from ... import`` in ``a`` that names a module ``b`` of the
tree, **at module level and inside functions alike**. A function-level import does not crash at import time, but it
is the same dependency: it only moves a cycle's failure from start-up to first use (``guidance/base.py``'s lazy
import of ``stable_diffusion_base``, which imported the base, was such a cycle). Imports under
``if TYPE_CHECKING:`` are not edges (they never run). ``from pkg import name`` is an edge to ``pkg.name`` when that
is a module, else to ``pkg``. Two graphs must be acyclic: the modules, and the packages (each module collapsed to
its package; a package and its own sub-packages are not compared, as a package's ``__init__`` importing its
children is how packages work). And the diffusion package sits under guidance and prompt processors: nothing it
reaches imports either of them.
"""

from __future__ import annotations

import ast
import os
from typing import Dict, List, Optional, Set

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOPS = ("threestudio", "custom")


def module_files(root: str, tops=TOPS) -> Dict[str, str]:
    """Dotted module name -> file, for every .py under ``tops``."""
    out = {}
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for f in sorted(filenames):
                if not f.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(dirpath, f)
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def imports_of(module: str, path: str, modules: Dict[str, str]) -> Set[str]:
    """The modules of ``modules`` that ``module`` imports (module level and inside functions)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    is_pkg = path.endswith("__init__.py")

    def known(name: str) -> Optional[str]:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    out: Set[str] = set()
    for node in _walk(tree):
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module if is_pkg else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    pkg = pkg.rpartition(".")[0]
                base = f"{pkg}.{base}" if base else pkg
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for t in targets:
            m = known(t)
            if m and m != module:
                out.add(m)
    return out


def _walk(node: ast.AST):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:  # the else branch does run
                yield sub
                yield from _walk(sub)
            continue
        yield child
        yield from _walk(child)


def import_graph(root: str = ROOT, tops=TOPS) -> Dict[str, Set[str]]:
    modules = module_files(root, tops)
    return {m: imports_of(m, p, modules) for m, p in modules.items()}


def package_graph(graph: Dict[str, Set[str]], root: str = ROOT) -> Dict[str, Set[str]]:
    modules = module_files(root)

    def pkg(m: str) -> str:
        return m if modules.get(m, "").endswith("__init__.py") else m.rpartition(".")[0]

    out: Dict[str, Set[str]] = {}
    for a, targets in graph.items():
        for b in targets:
            pa, pb = pkg(a), pkg(b)
            if pa == pb or pa.startswith(pb + ".") or pb.startswith(pa + "."):
                continue
            out.setdefault(pa, set()).add(pb)
            out.setdefault(pb, set())
    return out


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as a path [a, b, ..., a], or None (iterative DFS, deterministic order)."""
    state: Dict[str, int] = {}  # 1: on the stack, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(graph.get(start, ()))))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append((nxt, iter(sorted(graph.get(nxt, ())))))
    return None


def reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen: Set[str] = set()
    todo = [start]
    while todo:
        for n in graph.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_no_module_import_cycles():
    graph = import_graph()
    assert "threestudio.models.diffusion.compile" in graph and "custom.amortized" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_package_import_cycles():
    cycle = find_cycle(package_graph(import_graph()))
    assert cycle is None, "package import cycle: " + " -> ".join(cycle)


def test_diffusion_imports_neither_guidance_nor_prompt_processors():
    graph = import_graph()
    diffusion = [m for m in graph if m.startswith("threestudio.models.diffusion")]
    assert len(diffusion) >= 6
    for m in diffusion:
        bad = sorted(r for r in reachable(graph, m) | {m}
                     if r.startswith(("threestudio.models.guidance", "threestudio.models.prompt_processors")))
        assert not bad, f"{m} reaches {bad}: the diffusion package must sit below guidance and prompt processors"


def test_the_checker_finds_cycles_through_function_level_imports(tmp_path):
    """The checker itself: a cycle closed by an import inside a function is found, a TYPE_CHECKING one is not."""
    pkg = tmp_path / "threestudio" / "p"
    pkg.mkdir(parents=True)
    (tmp_path / "threestudio" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from threestudio.p.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from threestudio.p import a\n")
    graph = import_graph(str(tmp_path), ("threestudio",))
    assert find_cycle(graph) == ["threestudio.p.a", "threestudio.p.b", "threestudio.p.a"]
    assert graph["threestudio.p.c"] == set()
    (pkg / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(str(tmp_path), ("threestudio",))) is None
