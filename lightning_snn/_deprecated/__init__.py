"""Modules under their former names, kept for one release: ``import lightning_snn.report`` still
works, warns (``DeprecationWarning``) and gives the module under its new name (the same object, so
``lightning_snn.report.SpikeEnergyReport is lightning_snn.energy.SpikeEnergyReport``).

The files live here, not at their old paths, so that git follows each move as a rename; the
package ``lightning_snn`` lists this folder on its ``__path__``, which is where ``import`` finds them.
The next release deletes this package and that line."""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

MOVED = {
    "lightning_snn.nir_export": "lightning_snn.nir.export",
    "lightning_snn.nir_import": "lightning_snn.nir.importer",
    "lightning_snn.report": "lightning_snn.energy",
}
"""Former module name -> its name now."""


def alias(old: str) -> ModuleType:
    """Make ``old`` (a key of :data:`MOVED`) name its module's new home, with a DeprecationWarning."""
    new = MOVED[old]
    warnings.warn(f"{old} moved to {new}; import it from there ({old} is removed in the next release)",
                  DeprecationWarning, stacklevel=3)  # the import line (warnings skips importlib's frames)
    module = importlib.import_module(new)
    sys.modules[old] = module  # the import statement returns what sys.modules holds under the name
    return module
