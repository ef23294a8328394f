"""Benchmarks: tenantkit against the tools people would use instead.

Run one with ``python -m benchmarks.NAME`` or all with ``python -m benchmarks``; results land
in ``benchmarks/results/NAME.json`` and ``benchmarks/results/REPORT.md``. Benchmarks never
decide whether tests pass. See :mod:`benchmarks.harness` for the common machinery.
"""
