"""kvm-unit-tests, unmodified (../shared/guests/kvm-unit-tests, i386 .flat images): each case boots as
its README says (128 MiB, the environment module env-NR_CPUS-1.txt, the sub-test on the command
line) under bt, direct and vt, and the guest's own verdict (what it wrote to isa-debug-exit: 0
pass, 1 fail, 0x26 skip) must be QEMU's, recorded in tests/kvm_unit_tests_qemu.json by
`python -m tools.kvm_unit_tests --record` (the file says how). Cases that need what the platform
does not model yet (tools/kvm_unit_tests.py, NOT_MODELLED: ACPI S3's resume, vm86, 16-bit
code) are expected to differ, strictly: one that
starts to agree fails here until it is taken off that list. QEMU's hang (la57) and the verdicts
that are no verdict (vmexit without a sub-test, vmcall, taskswitch2: exit codes 0x3f, 0x2) are
left out.

Long cases are marked `slow` (setup.cfg: the default run leaves them out, `-m slow` runs them):
those QEMU itself takes over 10 s for (sieve); vmexit's sub-tests, whose rounds run until 2**30
TSC cycles passed on a 100 MHz TSC in every mode (--clock realtime: 10.7 s a round; 20-45 s a
case; until direct and vt read guest time for rdtsc too, their TSC was the host's and the APIC
sub-tests took 1-6 s); and eventinj, whose delay loops read the TSC (13 s under bt, 35-40 s
under direct and vt on the loaded machine). The default run keeps every other case."""

from __future__ import annotations

import pytest

from tools import kvm_unit_tests as kut

pytestmark = pytest.mark.skipif(not kut.SUITE.is_dir(), reason=f"kvm-unit-tests are not built here ({kut.SUITE})")

MODES = ("bt", "direct", "vt")
DECIDED = ("pass", "fail", "skip", "reset")      # QEMU verdicts a test can compare with
SLOW_UNDER_QEMU = 10.0                           # seconds
SLOW_CASES = {("eventinj", "bt"), ("eventinj", "direct"), ("eventinj", "vt")}     # measured over 10 s


def _slow(case, mode: str, qemu_seconds: float) -> bool:
    if qemu_seconds > SLOW_UNDER_QEMU:
        return True
    if case.flat == "vmexit.flat":
        return True
    return (case.name, mode) in SLOW_CASES


def _params():
    if not kut.SUITE.is_dir():
        return []
    recorded = kut.load_verdicts()["cases"]
    params = []
    for case in kut.cases():
        qemu = recorded.get(case.name)
        if qemu is None or qemu["verdict"] not in DECIDED:
            continue
        for mode in MODES:
            marks = []
            if _slow(case, mode, qemu["seconds"]):
                marks.append(pytest.mark.slow)
            differs = kut.expected_difference(case.name, mode)
            if differs is not None:
                marks.append(pytest.mark.xfail(strict=True, reason=differs))
            params.append(pytest.param(case, mode, qemu["verdict"], id=f"{case.name}-{mode}", marks=marks))
    return params


@pytest.mark.parametrize("case, mode, qemu_verdict", _params())
def test_guest_verdict_is_qemus(case, mode, qemu_verdict):
    outcome = kut.run_monitor(case, mode, timeout=kut.TEST_TIMEOUT)
    assert outcome.verdict == qemu_verdict, (
        f"{case.name} under {mode}: {outcome.verdict}, QEMU {qemu_verdict}\n{outcome.detail}\n"
        f"{outcome.output.decode(errors='replace')[-2000:]}")


def test_every_case_has_a_recorded_qemu_verdict():
    recorded = kut.load_verdicts()
    assert {case.name for case in kut.cases()} <= set(recorded["cases"]), "re-record: python -m tools.kvm_unit_tests --record"
    assert "qemu-system-i386" in recorded["how"] and recorded["recorded"]
    assert set(kut.NOT_MODELLED) <= set(recorded["cases"])


def test_the_tool_prints_a_table(capsys):
    # The table the tool prints for one case: the test, QEMU's verdict, ours, the time ratio.
    differ = kut.table("direct", ["dummy"], kut.SUITE, 120)
    lines = capsys.readouterr().out.splitlines()
    assert differ == 0 and lines[0].split()[:3] == ["test", "QEMU", "direct"]
    name, qemu, ours, ratio = lines[1].split()[:4]
    assert (name, qemu, ours) == ("dummy", "pass", "pass") and float(ratio) > 0


@pytest.mark.parametrize("arguments, message", [
    (["--mode", "bogus"], "unknown mode 'bogus'"),
    (["nosuch"], "no such case: nosuch"),
    (["--suite", "/nonexistent"], "/nonexistent: no such folder"),
])
def test_bad_input_is_a_one_line_error(arguments, message):
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "tools.kvm_unit_tests", *arguments], cwd=kut.REPO_ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.returncode == 2 and proc.stdout == b""
    assert message in proc.stderr.decode() and proc.stderr.count(b"\n") == 1
