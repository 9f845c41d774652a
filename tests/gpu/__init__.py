"""Tests that need a CUDA GPU (marked ``gpu``: skipped, with the reason, where there is none), and the guards
that every other test runs as on a machine without one. ``benchmarks/gpu_check.py`` runs this folder on
the lent GPU (docs/gpu_check.md)."""
