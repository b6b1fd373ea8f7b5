"""Benchmarks and soak, kept out of `make test`: `make bench`, `python -m benchmarks.soak`."""
