"""pyergon's benchmarks: ``python -m benchmarks`` prints one JSON line per scenario.

See ``benchmarks/README.md`` for the scenarios, the options and how to compare runs.
"""
