"""List the import circles among the modules of ``lightning_snn/`` and ``tune/``.

Every ``import`` statement counts, wherever it is (module level, inside a function, under
``if TYPE_CHECKING``): a function-local import still ties the two modules together, it only hides
the circle until the function runs. An edge ``a -> b`` means module ``a`` imports module ``b``
(``from pkg import name`` names the submodule ``pkg.name`` when there is one, else ``pkg``); importing
``p.q.m`` from outside package ``p.q`` also runs ``p/__init__.py`` and ``p/q/__init__.py``, which are
edges too (from inside, a package's ``__init__`` has run before its modules: only an explicit import
of the package is an edge). Prints each elementary circle, one a line (``a -> b -> a``), and exits 1 when there is one.

    python scripts/import_cycles.py            # the circles, or "no import circles"
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterable
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("lightning_snn", "tune")


def modules(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``packages`` (``__main__`` included)."""
    out = {}
    for top in packages:
        for f in sorted((root / top).rglob("*.py")):
            parts = f.relative_to(root).with_suffix("").parts
            if not all(p.isidentifier() for p in parts):  # not importable under a dotted name
                continue
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def _is_package(name: str, files: dict[str, Path]) -> bool:
    return name in files and files[name].name == "__init__.py"


def _imported(node: ast.Import | ast.ImportFrom, name: str, files: dict[str, Path]) -> list[str]:
    """The modules of ``files`` that one import statement of module ``name`` names."""
    if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importing module's package
            pkg = name.split(".") if _is_package(name, files) else name.split(".")[:-1]
            pkg = pkg[: len(pkg) - (node.level - 1)]
            base = ".".join([*pkg, base] if base else pkg)
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
    out = []
    for t in targets:
        while t and t not in files:  # `import lightning_snn.x.y` where y is a name: the module x
            t = t.rpartition(".")[0]
        if t:
            out.append(t)
    return out


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> nx.DiGraph:
    """The graph of the imports between the modules of ``packages`` (edges as the module docstring says)."""
    files = modules(root, packages)
    g = nx.DiGraph()
    g.add_nodes_from(files)
    for name, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(node, name, files):
                parts = target.split(".")
                # the target and the packages above it that `name` is not inside of (their __init__ runs)
                for i in range(1, len(parts) + 1):
                    mod = ".".join(parts[:i])
                    if mod == name or mod not in files:
                        continue
                    if i == len(parts) or (_is_package(mod, files) and not name.startswith(mod + ".")):
                        g.add_edge(name, mod)
    return g


def circles(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> list[list[str]]:
    """Every elementary circle of the import graph, each starting at its smallest name, sorted."""
    out = []
    for c in nx.simple_cycles(import_graph(root, packages)):
        i = c.index(min(c))
        out.append(c[i:] + c[:i])
    return sorted(out, key=lambda c: (len(c), c))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout to read (default: this one)")
    args = parser.parse_args(argv)
    found = circles(args.root)
    for c in found:
        print(" -> ".join([*c, c[0]]))
    print(f"{len(found)} import circle(s)" if found else "no import circles")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
