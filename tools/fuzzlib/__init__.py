"""The differential fuzzing library: random guest programs (generator.py) run under two modes and
compared state for state (compare.py), QEMU as the arbiter (arbiter.py, qemu.py). In tools/, beside
its driver tools/fuzz.py, because tools import nothing of tests; tests/test_fuzz.py imports it."""
