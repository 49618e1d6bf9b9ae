"""bench/bench_micro.py's arithmetic, on made-up runs (the benchmark itself takes minutes)."""

from __future__ import annotations

from tests.samples import load_script


def _run(bench, wall: float, iterations: int):
    return bench.Run({"wall_time_s": wall, "counters": {"exits": {"hlt": 1}}}, iterations)


def test_a_baseline_whose_loop_took_no_time_is_not_a_unit():
    # Issue 19: a baseline whose N rounds ran no longer than its one round (noise) gave a cost
    # unit of zero or less, and costs such as -692,307 were printed.
    bench = load_script("bench/bench_micro.py")
    guest = bench.Guest("spin", (), 1000, per_round=5)
    timed = bench.baseline(guest, _run(bench, 0.50, 1000), _run(bench, 0.30, 1))
    assert isinstance(timed, bench.Baseline) and timed.per_instruction > 0
    untimed = bench.baseline(guest, _run(bench, 0.30, 1000), _run(bench, 0.31, 1))
    assert isinstance(untimed, bench.Stopped) and untimed.cell == "n/a (baseline not timed)"
