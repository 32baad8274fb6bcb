"""Benchmarks for myctr, run with ``python -m bench.<name>`` (see bench/README.md)."""
