"""Former name of :mod:`lightning_snn.energy` (deprecated: import that; removed in the next release)."""

from lightning_snn._deprecated import alias

alias("lightning_snn.report")
