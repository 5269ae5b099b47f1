"""Fuzz entry points, one per parser: ``TestOneInput(data: bytes)`` for atheris/libFuzzer.

Each module is importable without atheris (tests/test_fuzz_entrypoints.py feeds
the entry points a corpus), and runs atheris when executed.  ``fuzz/run.py`` is
the bounded run for CI.  See fuzz/README.md.
"""
