"""Differential fuzzing of execution modes: random guest programs (generator.py) run under two
modes and compared state for state (compare.py). Driven by tools/fuzz.py and tests/test_fuzz.py."""
