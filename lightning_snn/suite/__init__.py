"""Benchmark suites: a paper's results table as one command (``python -m lightning_snn.suite``).

A suite file lists rows (a config plus the paper's reference, :mod:`.spec`); launchers start one
ordinary ``fit`` per (row, seed) here, on SLURM or on Ray (:mod:`.launchers`, :mod:`.execute`);
each run writes its result file at its end, and the report reads only those (:mod:`.report`).
"""
