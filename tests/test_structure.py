"""The package's structure: every module of ``lightning_snn/`` and ``tune/`` imports on its own, the
import graph has no circle (``python scripts/import_cycles.py`` lists them), and the modules' former
names keep working for one release, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import import_cycles  # noqa: E402

sys.path.pop(0)


def test_no_import_circles():
    found = import_cycles.circles()
    assert not found, "import circles:\n" + "\n".join(" -> ".join([*c, c[0]]) for c in found)


def test_circle_finder_sees_function_local_and_relative_imports(tmp_path):
    """The finder on a package made to have circles: one through a function-local import, one
    through a relative import and a package ``__init__``, and a line that only looks like one."""
    pkg = tmp_path / "lightning_snn"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from lightning_snn.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from lightning_snn import a\n    return a\n")
    (pkg / "c.py").write_text("import lightning_snn.sub.d\n")  # runs sub/__init__ too
    (pkg / "sub" / "__init__.py").write_text("from .e import g\n")
    (pkg / "sub" / "d.py").write_text("x = 1\n")
    (pkg / "sub" / "e.py").write_text("from lightning_snn import c\ng = 'import lightning_snn.a'\n")
    assert import_cycles.circles(tmp_path, ["lightning_snn"]) == [
        ["lightning_snn.a", "lightning_snn.b"],
        ["lightning_snn.c", "lightning_snn.sub", "lightning_snn.sub.e"],
    ]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "import_cycles.py"), "--root", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "lightning_snn.a -> lightning_snn.b -> lightning_snn.a" in r.stdout


ISOLATED = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for m in [m for m in sys.modules if m.split(".")[0] in ("lightning_snn", "tune")]:
        del sys.modules[m]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc(limit=-3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    """Each module imported first, with no module of the project loaded before it (third-party
    libraries stay loaded, which keeps this fast): a circle that only bites in one import order,
    or a module that relies on another having been imported, fails here."""
    names = sorted(import_cycles.modules())
    assert "lightning_snn.nir.export" in names and "tune.sweep" in names
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", ISOLATED, *names], capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]


@pytest.mark.parametrize("old, new", [
    ("lightning_snn.nir_export", "lightning_snn.nir.export"),
    ("lightning_snn.nir_import", "lightning_snn.nir.importer"),
    ("lightning_snn.report", "lightning_snn.energy"),
])
def test_former_module_names_warn_and_give_the_module(old, new):
    package = importlib.import_module("lightning_snn")
    sys.modules.pop(old, None)
    if hasattr(package, old.rpartition(".")[2]):
        delattr(package, old.rpartition(".")[2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        __import__(old)  # an import statement's call: the warning names this line
    assert sys.modules[old] is importlib.import_module(new)
    hits = [w for w in caught if issubclass(w.category, DeprecationWarning) and new in str(w.message)]
    assert len(hits) == 1, [str(w.message) for w in caught]
    assert Path(hits[0].filename) == Path(__file__)  # points at the import, not at the shim
