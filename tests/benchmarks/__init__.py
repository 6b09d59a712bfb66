"""The benchmarks' own models (not their measurements): pure code, no processes."""
