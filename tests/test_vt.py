"""The hardware-assisted model (--mode vt): every sample exactly as on QEMU (no holes: the guest
runs at its own rings on state of its own) but those whose manifest entry leaves vt out, exits
by reason as the exit controls select them, and the controls' option errors."""

import json

import pytest

from tests.cli import run_vmm, sample_arguments
from tests.samples import MANIFEST, REPO_ROOT, ids


@pytest.mark.parametrize("entry", MANIFEST, ids=ids(MANIFEST))
def test_every_sample_runs_as_on_qemu(entry, tmp_path):
    if "vt" not in entry["modes"]:      # what vt still lacks for it, from the manifest
        pytest.skip(f"{entry['name']} under vt: {entry['missing']['vt']}")
    report = tmp_path / "report.json"
    proc = run_vmm(*sample_arguments(entry), "--mode", "vt", "--report", report,
                   stdin=(entry["stdin"] or "").encode())
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes(), proc.stderr.decode()
    counters = json.loads(report.read_text())["counters"]
    assert counters["vt_exit_controls"] == ["cpuid", "external_interrupt", "hlt", "io"]
    assert counters["vt_exits"]["io"] >= len(proc.stdout)        # every byte printed is an OUT


def test_exits_follow_the_controls(tmp_path):
    report = tmp_path / "report.json"
    proc = run_vmm("run", "sample_binaries/sensitive.elf", "--mode", "vt", "--vt-exits", "all", "--report", report)
    assert proc.returncode == 0
    exits = json.loads(report.read_text())["counters"]["vt_exits"]
    # sensitive.elf: 2 rdtsc, 6 rdmsr/wrmsr, invlpg twice, lgdt/lidt/sgdt/.../ltr, mov crN/drN,
    # its #GP/#NP probes and its int 0x80s
    for reason in ("rdtsc", "msr", "invlpg", "descriptor_table", "cr_access", "dr_access", "cpuid", "exception"):
        assert exits[reason] >= 1, (reason, exits)
    vectors = json.loads(report.read_text())["counters"]["vt_exception_exits"]
    assert vectors["0x0d"] >= 1 and vectors["0x80"] >= 1 and sum(vectors.values()) == exits["exception"]
    default = tmp_path / "default.json"
    run_vmm("run", "sample_binaries/sensitive.elf", "--mode", "vt", "--report", default)
    taken = {reason for reason, count in json.loads(default.read_text())["counters"]["vt_exits"].items() if count}
    assert taken <= {"io", "hlt", "cpuid", "external_interrupt"}


def test_timer_interrupts_are_external_interrupt_exits(tmp_path):
    report = tmp_path / "report.json"
    run_vmm("run", "sample_binaries/ticks.elf", "--mode", "vt", "--report", report)
    counters = json.loads(report.read_text())["counters"]
    assert counters["vt_exits"]["external_interrupt"] == sum(counters["external_interrupts"].values())


@pytest.mark.parametrize("arguments, message", [
    (["--mode", "bt", "--vt-exits", "all"], "--vt-exits needs --mode vt"),
    (["--mode", "vt", "--vt-exits", "io,bogus"], "unknown VT exit 'bogus'"),
])
def test_bad_exit_controls_are_one_line_errors(arguments, message):
    proc = run_vmm("run", "sample_binaries/hello.elf", *arguments)
    assert proc.returncode == 2 and proc.stdout == b""
    assert message in proc.stderr.decode() and proc.stderr.count(b"\n") == 1
