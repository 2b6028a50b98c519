"""Benchmark harness: `python -m bench <scenario> [--db postgres|sqlite] [--warm]`.

See bench/README.md for the scenarios, the lower bound and the latest figures.
"""
