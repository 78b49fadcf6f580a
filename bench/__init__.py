"""Benchmarks of dbtkd against the per-window backend it replaces; see bench/README.md."""
