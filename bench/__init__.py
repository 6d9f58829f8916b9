"""Benchmarks that run real traffic in private labs (see bench/README.md)."""
