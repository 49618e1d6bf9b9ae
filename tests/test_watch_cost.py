"""What watching costs the untranslated modes: trap's hole watch and vt's shadow paging (whose
cr_access, invlpg and task-switch exits are found by scanning code) are paid per translation,
not per executed engine block, so a compute-bound loop runs about as fast as without them
(bench/bench_untranslated.py measures the same pairs). Each guest runs a hot loop after a
`pushfd; popfd` (two holes under trap) and, with paging on, three control-register accesses
(vt's cr_access exits under shadow paging); the reports must name them with their exact counts.

Ratios, not times: each side is the faster of two runs of the same guest in this process
(the machine is shared). A watch paid per block run made these ratios 250-270 (trap) and
165-170 (vt): a Python call per round of the loop; the bound is a few times. So that such a
regression fails in seconds, not minutes, the watched runs have a time limit of ten times the
unwatched run's."""

import pytest

from tests.guests import run_source, watched_loop
from vmm.exits import StopReason

ROUNDS = 40_000_000         # 320 million instructions: about 0.2 s unwatched on the development machine
BOUND = 3.0
def _fastest(tmp_path, source, limit=None, **config):
    """The faster of two runs (the VirtualMachine); a run the time limit ends fails the test."""
    runs = []
    for _ in range(2):
        result, _output, vm = run_source(tmp_path, source, timeout=limit, **config)
        assert result.reason is not StopReason.TIME_LIMIT, f"{config}: over {limit:.2f} s, ten times the unwatched run"
        assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0, result
        runs.append(vm)
    return min(runs, key=lambda vm: vm.wall_time)


def _ratio(tmp_path, source, watched: dict, unwatched: dict):
    """(watched machine, its run time / the unwatched one's)."""
    fast = _fastest(tmp_path, source, **unwatched)
    slow = _fastest(tmp_path, source, limit=max(1.0, 10 * fast.wall_time), **watched)
    return slow, slow.wall_time / fast.wall_time


@pytest.mark.parametrize("paging", [False, True], ids=["paging-off", "paging-on"])
def test_the_hole_watch_costs_a_loop_no_more_than_a_few_times_its_run(tmp_path, paging):
    source = watched_loop(ROUNDS, paging)
    watched, ratio = _ratio(tmp_path, source, dict(mode="trap"), dict(mode="trap", watch_holes=False))
    holes = watched.mode.holes()
    assert [(hole["instruction"], hole["count"]) for hole in holes] == [("pushfd", 1), ("popfd", 1)]
    assert ratio < BOUND


def test_shadow_paging_under_vt_costs_a_loop_no_more_than_a_few_times_nested_paging(tmp_path):
    source = watched_loop(ROUNDS, True)
    shadow, ratio = _ratio(tmp_path, source, dict(mode="vt", paging="shadow"), dict(mode="vt", paging="nested"))
    assert shadow.mode.vt_exits["cr_access"] == 3        # mov cr3, mov eax, cr0, mov cr0
    assert ratio < BOUND
