"""Benchmarks: scripts that print a table, beside the package (`python -m study bench --help`)."""
