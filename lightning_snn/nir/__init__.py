"""NIR exchange: export (:mod:`lightning_snn.nir.export`), import (:mod:`lightning_snn.nir.importer`),
readers that load an exported file in snnTorch, Norse and SpikingJelly with the conversions that
make them compute this project's network (:mod:`lightning_snn.nir.readers`), and the check that
runs a file in each of them next to the original network (:mod:`lightning_snn.nir.verify`)."""
