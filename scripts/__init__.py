"""Benchmarks, the chaos run and their harness; run from the checkout's root as modules (`python -m scripts.bench`)."""
