"""kvm-unit-tests (i386 .flat images) booted unmodified under the monitor and compared with QEMU: the case list, QEMU's recorded verdicts, one run of a case, and a table.

    python -m tools.kvm_unit_tests                       # every case under bt: a table
    python -m tools.kvm_unit_tests --mode vt dummy vmexit_cpuid
    python -m tools.kvm_unit_tests --record              # run every case under QEMU, store the verdicts

A case is one .flat with no argument (all its sub-tests), or `vmexit_NAME`: vmexit.flat with the
sub-test NAME on its command line, as the suite's unittests.cfg names them. Every run is the
README's: 128 MiB, the environment module env-NR_CPUS-1.txt, the sub-test as -append. The
verdict is the guest's own, what it wrote to isa-debug-exit: 0 pass, 1 fail, 0x26 skip; any
other ending is named (halted, reset, hang: the time limit, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
SUITE = REPO_ROOT.parent / "shared" / "guests" / "kvm-unit-tests"
ENV_MODULE = "env-NR_CPUS-1.txt"
MEMORY_MIB = 128
VERDICTS_FILE = REPO_ROOT / "tests" / "kvm_unit_tests_qemu.json"
QEMU = "qemu-system-i386"
# The command of the suite's README (QEMU's default CPU model, qemu32), one case at a time.
QEMU_COMMAND = [QEMU, "-accel", "tcg", "-no-reboot", "-serial", "stdio", "-monitor", "none", "-display", "none",
                "-nic", "none", "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-m", str(MEMORY_MIB)]
QEMU_TIMEOUT = 120.0        # la57 never ends under QEMU: "hang" after this long
MONITOR_TIMEOUT = 300.0
TEST_TIMEOUT = 240.0        # a case under test (bt's vmexit sub-tests take about 40 s)

# The guest's value written to isa-debug-exit -> verdict (kvm-unit-tests' exit codes).
GUEST_VERDICTS = {0: "pass", 1: "fail", 0x26: "skip"}

# vmexit.flat's sub-tests, in the order of its tests[] table (x86/vmexit.c at 1da1819e).
VMEXIT_SUBTESTS = (
    "cpuid", "vmcall", "wbinvd", "invd", "mov_from_cr8", "mov_to_cr8", "inl_from_pmtimer", "inl_from_qemu",
    "inl_from_kernel", "outl_to_kernel", "mov_dr", "tscdeadline_immed", "tscdeadline", "self_ipi_sti_nop",
    "self_ipi_sti_hlt", "self_ipi_tpr", "self_ipi_tpr_sti_nop", "self_ipi_tpr_sti_hlt", "x2apic_self_ipi_sti_nop",
    "x2apic_self_ipi_sti_hlt", "x2apic_self_ipi_tpr", "x2apic_self_ipi_tpr_sti_nop", "x2apic_self_ipi_tpr_sti_hlt",
    "ipi", "ipi_halt", "ple_round_robin", "wr_kernel_gs_base", "wr_tsx_ctrl_msr", "wr_ibrs_msr", "wr_ibpb_msr",
    "wr_tsc_adjust_msr", "rd_tsc_adjust_msr", "toggle_cr0_wp", "toggle_cr4_pge", "pci-mem", "pci-io",
)

# Cases whose verdict here differs from QEMU's because they need what the platform does not
# model (yet): case -> what it needs; a value of (modes, reason) where only some modes differ.
# Every other case QEMU decides (pass, fail, skip, reset) gives QEMU's verdict in bt, direct and
# vt (tests/test_kvm_unit_tests.py holds them to it, and these to differing). hpet_read_test
# passes since the HPET (vmm/devices/hpet.py); vmexit_inl_from_pmtimer finds the FADT and times
# the PM timer at 0x608, as under QEMU (it passed before too, timing reads of port 0xcccc); pmu
# fails as under QEMU, on the same check, since CPUID is QEMU's qemu32 (vmm/cpu_model.py).
NOT_MODELLED = {
    "s3": "ACPI S3: QEMU suspends, wakes on the RTC alarm (RTC_EN), resets, and SeaBIOS's resume enters the "
          "FACS waking vector in real mode, whose 16-bit code reports 1 (fail); the monitor ends the run at the "
          "sleep request (unsupported)",
    "realmode": "16-bit code: bt refuses a 16-bit code segment (unsupported); under direct and vt the output is "
                "QEMU's up to 'sti inhibit' but for 'rflags.rf' (Unicorn 2.1.1's pushf shows the RF an iret loaded, "
                "as QEMU 5.0's helper_read_eflags did), and 'sti inhibit' halts for good: QEMU wakes it with "
                "SeaBIOS's 18.2 Hz PIT tick (IRQ0 to the firmware's vector 8 handler), firmware state the platform "
                "does not model (tests/test_smc_untranslated.py). The Multiboot information is where QEMU 7.2 "
                "leaves it (EBX 0x9500 inside the image, the image's bytes winning)",
    "taskswitch2": "a task switch into virtual-8086 mode (vm86 is not modelled)",
}


def expected_difference(name: str, mode: str) -> Optional[str]:
    """Why `name` is expected to give another verdict than QEMU's under `mode` (None: it gives QEMU's)."""
    entry = NOT_MODELLED.get(name)
    if isinstance(entry, tuple):
        modes, reason = entry
        return reason if mode in modes else None
    return entry


# vmexit.flat times each sub-test by the TSC: it repeats the operation, doubling the count, until
# one round took 2**30 cycles. Under the virtual clock a cycle is a guest instruction (bt reads
# it for rdtsc), and a round of IPIs or cpuid exits would take hours of monitor time: these run
# on the host's clock (--clock realtime), as QEMU's TSC follows the host's.
# s3 waits for the RTC's update-in-progress flag to come and go before it sets its alarm: under
# the virtual clock a run that only polls the RTC retires its instructions at its bound, which
# nothing armed brings near (the run would wait out its time limit), so it runs on the host's
# clock too.
MONITOR_OPTIONS = {"vmexit.flat": ("--clock", "realtime"), "s3.flat": ("--clock", "realtime")}


@dataclass(frozen=True)
class Case:
    name: str
    flat: str
    append: Optional[str] = None

    def options(self) -> tuple:
        """The monitor's options for this case beyond the README's command."""
        return MONITOR_OPTIONS.get(self.flat, ())


def cases(suite: Path = SUITE) -> list[Case]:
    """Every .flat of the suite's folder with no argument, then vmexit.flat's sub-tests one by one."""
    found = [Case(path.stem, path.name) for path in sorted(suite.glob("*.flat"))]
    if (suite / "vmexit.flat").exists():
        found += [Case(f"vmexit_{name}", "vmexit.flat", name) for name in VMEXIT_SUBTESTS]
    return found


def qemu_verdict(status: Optional[int]) -> str:
    """QEMU's exit status -> verdict: isa-debug-exit makes it (value << 1) | 1; 0 is the machine
    shut down or reset under -no-reboot; None: it never ended."""
    if status is None:
        return "hang"
    if status & 1:
        value = status >> 1
        return GUEST_VERDICTS.get(value, f"exit {value:#x}")
    return "reset" if status == 0 else f"status {status}"


def monitor_verdict(report: dict) -> str:
    """The monitor's report -> verdict, in QEMU's words where the ending is the same."""
    ending = report["exit"]
    if ending["reason"] == "debug_exit":
        value = ending["guest_value"]
        return GUEST_VERDICTS.get(value, f"exit {value:#x}")
    if ending["reason"] in ("reset", "triple_fault"):      # QEMU -no-reboot: both shut down
        return "reset"
    if ending["reason"] == "time_limit":
        return "hang"
    return ending["reason"]


@dataclass
class Outcome:
    verdict: str
    seconds: float
    output: bytes
    detail: str = ""


def run_qemu(case: Case, suite: Path = SUITE, timeout: float = QEMU_TIMEOUT) -> Outcome:
    command = QEMU_COMMAND + ["-kernel", case.flat, "-initrd", ENV_MODULE]
    if case.append is not None:
        command += ["-append", case.append]
    started = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=suite, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        return Outcome("hang", time.perf_counter() - started, expired.stdout or b"")
    return Outcome(qemu_verdict(proc.returncode), time.perf_counter() - started, proc.stdout,
                   proc.stderr.decode(errors="replace").strip())


def monitor_command(case: Case, mode: str, suite: Path = SUITE, timeout: float = MONITOR_TIMEOUT,
                    extra: tuple = ()) -> list[str]:
    command = [sys.executable, "-m", "vmm", "run", str(suite / case.flat), "--mode", mode, "--mem", str(MEMORY_MIB),
               "--initrd", str(suite / ENV_MODULE), "--timeout", f"{timeout:g}", *case.options(), *extra]
    if case.append is not None:
        command += ["--append", case.append]
    return command


def run_monitor(case: Case, mode: str = "bt", suite: Path = SUITE, timeout: float = MONITOR_TIMEOUT,
                extra: tuple = ()) -> Outcome:
    """One case under `vmm run` (this source tree's monitor) in a process of its own."""
    with tempfile.TemporaryDirectory() as scratch:
        report_path = Path(scratch) / "report.json"
        command = monitor_command(case, mode, suite, timeout, extra) + ["--report", str(report_path)]
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        started = time.perf_counter()
        try:
            proc = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=environment, timeout=timeout + 60)
        except subprocess.TimeoutExpired as expired:      # the monitor's own --timeout did not end it
            return Outcome("hang", time.perf_counter() - started, expired.stdout or b"", "killed")
        seconds = time.perf_counter() - started
        detail = proc.stderr.decode(errors="replace").strip()
        if not report_path.exists():
            return Outcome(f"status {proc.returncode}", seconds, proc.stdout, detail)
        report = json.loads(report_path.read_text())
        return Outcome(monitor_verdict(report), seconds, proc.stdout, detail or report["exit"]["message"])


# -- QEMU's recorded verdicts -------------------------------------------------------------------
def load_verdicts(path: Path = VERDICTS_FILE) -> dict:
    return json.loads(path.read_text())


def qemu_version() -> str:
    proc = subprocess.run([QEMU, "--version"], stdout=subprocess.PIPE, text=True, check=True)
    return proc.stdout.splitlines()[0]


def record(suite: Path = SUITE, path: Path = VERDICTS_FILE, only: Optional[list[str]] = None) -> dict:
    """Run the cases under QEMU and store each verdict and time (`only`: re-record those, keep
    the others as they were)."""
    old = load_verdicts(path)["cases"] if path.exists() and only else {}
    recorded = {}
    for case in cases(suite):
        if only and case.name not in only:
            if case.name in old:
                recorded[case.name] = old[case.name]
            continue
        outcome = run_qemu(case, suite)
        print(f"{case.name:32} {outcome.verdict:8} {outcome.seconds:7.2f} s", file=sys.stderr)
        recorded[case.name] = {"flat": case.flat, "append": case.append, "verdict": outcome.verdict,
                               "seconds": round(outcome.seconds, 2)}
    data = {
        "how": (f"python -m tools.kvm_unit_tests --record: each case run once, one at a time, by "
                f"{qemu_version()} as `{' '.join(QEMU_COMMAND)} -kernel FLAT -initrd {ENV_MODULE} "
                f"[-append SUBTEST]` in the suite's folder (its README's command); the verdict from QEMU's "
                f"exit status: 1 pass, 3 fail, 77 skip (isa-debug-exit's (value << 1) | 1), 0 reset "
                f"(shut down under -no-reboot), hang: still running after {QEMU_TIMEOUT:g} s; seconds: "
                f"QEMU's wall time, start-up included, on the 2-core development machine"),
        "recorded": time.strftime("%Y-%m-%d"),
        "cases": recorded,
    }
    path.write_text(json.dumps(data, indent=1) + "\n")
    return data


# -- the table --------------------------------------------------------------------------------------
def table(mode: str, names: Optional[list[str]], suite: Path, timeout: float, out=None,
          extra: tuple = ()) -> int:
    """Run the cases under `mode` and print test, QEMU's verdict, ours, the wall-time ratio and,
    where they differ, why. Returns how many differ where no difference is expected."""
    out = out or sys.stdout
    recorded = load_verdicts()["cases"]
    chosen = [case for case in cases(suite) if not names or case.name in names]
    print(f"{'test':32} {'QEMU':8} {mode:8} {'time / QEMU':>11}  note", file=out)
    differ = 0
    for case in chosen:
        qemu = recorded.get(case.name, {"verdict": "?", "seconds": None})
        outcome = run_monitor(case, mode, suite, timeout, extra)
        ratio = f"{outcome.seconds / qemu['seconds']:.1f}" if qemu.get("seconds") else "-"
        note = ""
        if outcome.verdict != qemu["verdict"]:
            last = outcome.detail.splitlines()[-1] if outcome.detail else ""
            note = expected_difference(case.name, mode)
            if note is None:
                differ += 1
                note = f"(not expected) {last}"
        print(f"{case.name:32} {qemu['verdict']:8} {outcome.verdict:8} {ratio:>11}  {note}", file=out, flush=True)
    return differ


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.kvm_unit_tests", description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="case names (default: all); see --list")
    parser.add_argument("--mode", default="bt", help="execution mode (default bt)")
    parser.add_argument("--paging", help="--paging for the monitor")
    parser.add_argument("--suite", type=Path, default=SUITE, help=f"the .flat folder (default {SUITE})")
    parser.add_argument("--timeout", type=float, default=MONITOR_TIMEOUT, help="seconds per case under the monitor")
    parser.add_argument("--record", action="store_true", help=f"run the cases under QEMU and write {VERDICTS_FILE.name}")
    parser.add_argument("--list", action="store_true", help="list the cases and QEMU's verdicts")
    args = parser.parse_args(argv)
    if not args.suite.is_dir():
        print(f"kvm_unit_tests: {args.suite}: no such folder", file=sys.stderr)
        return 2
    from vmm.modes import available_modes
    if args.mode not in available_modes():
        print(f"kvm_unit_tests: unknown mode {args.mode!r} (available: {', '.join(sorted(available_modes()))})",
              file=sys.stderr)
        return 2
    unknown = sorted(set(args.cases) - {case.name for case in cases(args.suite)})
    if unknown:
        print(f"kvm_unit_tests: no such case: {', '.join(unknown)} (--list names them)", file=sys.stderr)
        return 2
    if args.record:
        if shutil.which(QEMU) is None:
            print(f"kvm_unit_tests: {QEMU} is not installed", file=sys.stderr)
            return 2
        record(args.suite, only=args.cases or None)
        return 0
    if args.list:
        recorded = load_verdicts()["cases"]
        for case in cases(args.suite):
            entry = NOT_MODELLED.get(case.name, "")
            why = f"({', '.join(entry[0])}) {entry[1]}" if isinstance(entry, tuple) else entry
            print(f"{case.name:32} {recorded.get(case.name, {}).get('verdict', '?'):8} {why}")
        return 0
    extra = ("--paging", args.paging) if args.paging else ()
    return 1 if table(args.mode, args.cases, args.suite, args.timeout, extra=extra) else 0


if __name__ == "__main__":
    sys.exit(main())
