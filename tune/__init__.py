"""Hyper-parameter sweeps with Ray Tune over the ordinary ``lightning_snn`` fit.

``python -m tune.sweep`` launches trials; each trial is the project's command line (``SNNCLI``)
run on a config with the trial's overrides, reporting validation metrics to Tune every epoch.
"""
