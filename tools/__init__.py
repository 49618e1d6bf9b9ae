"""Developer and user tools beside the monitor: sample builder, cache inspector, the differential fuzzer and its library (fuzzlib/, which tests import; tools import nothing of tests)."""
