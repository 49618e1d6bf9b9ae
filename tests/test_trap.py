"""Trap-and-emulate (--mode trap): the guest kernel untranslated at ring 3. It must run every
sample whose behaviour does not depend on a virtualization hole exactly as QEMU does, go wrong
exactly where a hole explains it, and name the holes in its report."""

import json

import pytest

from tests.cli import run_vmm, sample_arguments
from tests.guests import EXIT, run_source
from tests.samples import MANIFEST, REPO_ROOT, ids
from tests.test_timer import window_guest
from vmm.exits import StopReason

# Samples that see a hole: sensitive reads its own state through sgdt/pushf/mov r,cs...; the
# user-mode ones (string_io, address_spaces too) enter ring 3 with an iret that runs natively at ring 3 as a
# same-ring return; higher_half checks its GDT and IDT bases with sgdt/sidt; holes is written to
# show two holes. `calls` runs 5 million loop rounds: with the hole watch (a
# call per engine block) that takes minutes, so it runs without it.
DIVERGING = {"sensitive", "multitask", "ring3", "segments", "string_io", "holes", "address_spaces", "higher_half"}
UNWATCHED = {"calls"}
FAITHFUL = [entry for entry in MANIFEST if entry["name"] not in DIVERGING]
HOLE_BOUND = ["--max-insns", "3000000"]      # a guest gone wrong may loop for ever


@pytest.mark.parametrize("entry", FAITHFUL, ids=ids(FAITHFUL))
def test_samples_without_holes_run_as_on_qemu(entry, tmp_path):
    if "trap" not in entry["modes"]:
        pytest.skip(f"{entry['name']} under trap: {entry['missing']['trap']}")
    report = tmp_path / "report.json"
    watch = ["--no-hole-watch"] if entry["name"] in UNWATCHED else []
    proc = run_vmm(*sample_arguments(entry), "--mode", "trap", "--report", report, *watch,
                   stdin=(entry["stdin"] or "").encode())
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes(), proc.stderr.decode()
    if entry["exit"] is not None:
        assert proc.returncode == entry["exit"] & 0xFF


def _run_holes_sample(tmp_path, name):
    entry = next(e for e in MANIFEST if e["name"] == name)
    report = tmp_path / "report.json"
    proc = run_vmm(*sample_arguments(entry), "--mode", "trap", "--report", report, *HOLE_BOUND)
    expected = (REPO_ROOT / entry["expected"]).read_text().splitlines()
    holes = json.loads(report.read_text())["counters"]["virtualization_holes"]
    return proc, expected, holes


def test_the_holes_sample_differs_exactly_where_popf_and_mov_cs_leak(tmp_path):
    proc, expected, holes = _run_holes_sample(tmp_path, "holes")
    lines = proc.stdout.decode().splitlines()
    assert expected == ["mov ax, cs: 0x0008", "IF after cli: 0", "IF after popf of flags with IF set: 1"]
    assert lines == ["mov ax, cs: 0x000b", "IF after cli: 0", "IF after popf of flags with IF set: 0"]
    assert proc.returncode == 0
    named = {hole["instruction"] for hole in holes}
    assert {"mov ax, cs", "popfd"} <= named
    assert all(hole["count"] >= 1 for hole in holes)


@pytest.mark.parametrize("name, hole", [
    ("sensitive", "sgdt"), ("multitask", "iretd"), ("ring3", "iretd"), ("segments", "iretd"), ("string_io", "iretd"),
    ("address_spaces", "iretd"), ("higher_half", "sgdt"),
])
def test_diverging_samples_name_the_hole_that_explains_them(tmp_path, name, hole):
    proc, expected, holes = _run_holes_sample(tmp_path, name)
    assert proc.stdout.decode().splitlines() != expected
    assert any(entry["instruction"].startswith(hole) for entry in holes), holes


def test_privileged_instructions_trap_and_are_emulated(tmp_path):
    report = tmp_path / "report.json"
    proc = run_vmm("run", "sample_binaries/sensitive.elf", "--mode", "trap", "--report", report)
    traps = json.loads(report.read_text())["counters"]["traps"]
    for mnemonic in ("cli", "sti", "lgdt", "lidt", "ltr", "lldt", "iretd", "wrmsr", "clts"):
        assert traps.get(mnemonic, 0) >= 1, (mnemonic, traps)
    assert proc.returncode == 0x12        # the sample's own verdict: its checks saw the holes


def test_a_waiting_interrupt_comes_after_an_emulated_sti_and_its_shadow(tmp_path):
    result, _out, vm = run_source(tmp_path, window_guest("    sti\n    nop\nwindow_end:"), mode="trap", timeout=60)
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0
    assert vm.external_interrupts[0x20] >= 250


def test_popf_cannot_set_if_at_ring_3_so_the_window_never_opens(tmp_path):
    # The same guest with a popf window: under trap the popf is a hole, IF stays clear, and the
    # timer interrupts wait until the guest's own sti... which it never executes: none arrive.
    result, _out, vm = run_source(tmp_path, window_guest("    push dword ptr [0x7008]\n    popfd\nwindow_end:"),
                                  mode="trap", timeout=60)
    assert result.reason is StopReason.DEBUG_EXIT
    assert vm.external_interrupts[0x20] == 0


def test_guest_hlt_with_interrupts_off_still_ends_the_run(tmp_path):
    result, _out, _vm = run_source(tmp_path, "cli\nhlt\n" + EXIT, mode="trap")
    assert result.reason is StopReason.HALTED


def test_without_the_hole_watch_the_report_has_no_holes_and_the_guest_the_same_output(tmp_path):
    report = tmp_path / "report.json"
    proc = run_vmm("run", "sample_binaries/holes.elf", "--mode", "trap", "--no-hole-watch", "--report", report)
    assert proc.stdout.decode().splitlines()[0] == "mov ax, cs: 0x000b"
    counters = json.loads(report.read_text())["counters"]
    assert counters["virtualization_holes"] is None and counters["traps"]["cli"] >= 2     # not watched
    assert run_vmm("run", "sample_binaries/holes.elf", "--no-hole-watch").returncode == 2
