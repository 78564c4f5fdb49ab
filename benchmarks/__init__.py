"""Benchmarks for the data pipeline, the training step and the per-trial overheads of a sweep.

Run them with `make bench` (or `python -m benchmarks --help`); see README.md, "Performance".
"""
