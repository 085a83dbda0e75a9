"""Benchmarks: each ``bench_*.py`` module has ``main(argv)`` printing ratios measured side by side."""
