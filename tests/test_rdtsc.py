"""rdtsc reads guest time in every mode: the virtual clock (one cycle per retired instruction),
as bt's callout reads it, also where the guest's code runs untranslated on the engine (direct,
trap, vt), whose own rdtsc is the host's TSC (Unicorn has no hook for it: Engine.intercept_rdtsc
makes it QEMU's SVM rdtsc intercept, an exception at the interrupt hook)."""

from __future__ import annotations

import pytest

from tests.guests import EXIT, flat_gdt, identity_paging, idt_setup, run_source
from tests.probe import brief, parse, probe_source, qemu_available, run_under_monitor, run_under_qemu
from vmm.x86 import GP

UNTRANSLATED = ("direct", "trap", "vt")

# Two reads around a known number of instructions: the first rdtsc puts time in use (the
# unbounded run before it retires nothing), the second and third are 2003 instructions apart
# (rdtsc, mov, mov, 1000 rounds of dec/jnz).
AROUND_A_LOOP = ("    rdtsc\n    rdtsc\n    mov ebx, eax\n    mov ecx, 1000\nspin:\n    dec ecx\n    jnz spin\n"
                 "    rdtsc\n    sub eax, ebx\n" + EXIT)
# A delay loop as Linux's and kvm-unit-tests' (read the TSC until 5000 cycles passed): every read
# but the first happens inside one engine run under direct, so each must count the run's
# instructions so far. Exits with the rounds it took (five instructions each).
DELAY_LOOP = ("    rdtsc\n    rdtsc\n    mov ebx, eax\n    xor esi, esi\nwait:\n    inc esi\n    rdtsc\n"
              "    sub eax, ebx\n    cmp eax, 5000\n    jb wait\n    mov eax, esi\n" + EXIT)


@pytest.mark.parametrize("mode", UNTRANSLATED)
@pytest.mark.parametrize("source, expected", [(AROUND_A_LOOP, 2003), (DELAY_LOOP, 1001)], ids=["around", "delay"])
def test_rdtsc_counts_guest_instructions_as_under_bt(tmp_path, mode, source, expected):
    """Regression: under direct, trap and vt rdtsc was the host's TSC, far faster than every other
    guest clock (Linux calibrated its TSC and APIC timer against it and crawled). Now the same
    counts as bt's, exactly."""
    assert run_source(tmp_path, source, mode="bt")[0].guest_value == expected
    result, _output, vm = run_source(tmp_path, source, mode=mode)
    assert result.guest_value == expected
    assert vm.mode.timestamps_read == (3 if source is AROUND_A_LOOP else 2 + expected)


def test_rdtsc_is_one_exception_without_ending_the_run(tmp_path):
    """The intercepted rdtsc is answered inside the run (no engine exit: the run that Unicorn
    would end at an exit, and after which it drops and retranslates the code around it, so
    that a delay loop filled the code buffer and crashed the engine in kvm-unit-tests'
    eventinj): the delay loop's 1000 reads take a handful of engine runs."""
    runs = []
    from vmm.engine import Engine
    original = Engine.run

    def counted(self, *args, **kwargs):
        runs.append(args[0])
        return original(self, *args, **kwargs)
    Engine.run = counted
    try:
        result, _output, _vm = run_source(tmp_path, DELAY_LOOP, mode="direct")
    finally:
        Engine.run = original
    assert result.guest_value == 1001
    assert len(runs) < 20


# CR4.TSD: rdtsc outside ring 0 is #GP(0); in ring 0 it runs. Under trap the guest's CR4 is
# virtual (the engine's has no TSD), so the monitor makes the check itself.
TSD_SET = "    mov eax, cr4\n    or eax, 4\n    mov cr4, eax\n"
# What QEMU 7.2 logs for these probes (recorded by test_tsd_matches_qemu): vector, error code,
# index of the faulting instruction.
TSD_RING3 = [(GP, 0, 1)]


@pytest.mark.parametrize("mode", UNTRANSLATED + ("bt",))
def test_tsd_faults_rdtsc_outside_ring_0(tmp_path, mode):
    log = run_under_monitor(tmp_path, probe_source(["nop", "rdtsc", "nop"], ring3=True, setup=TSD_SET), mode=mode)
    assert brief(log) == TSD_RING3
    log = run_under_monitor(tmp_path, probe_source(["nop", "rdtsc", "nop"], ring3=True), mode=mode)
    assert brief(log) == []


@pytest.mark.skipif(not qemu_available(), reason="qemu-system-i386 is not installed")
def test_tsd_matches_qemu():
    assert brief(run_under_qemu(probe_source(["nop", "rdtsc", "nop"], ring3=True, setup=TSD_SET))) == TSD_RING3
    assert brief(run_under_qemu(probe_source(["nop", "rdtsc", "nop"], ring3=True))) == []


# A page fault after the guest unmapped code that held an engine exit (rdmsr, under direct
# and vt: vmm/msr_cpuid.py). Unicorn looks up the code in front of every exit at the end of
# every run, through the guest's tables: once they no longer map it, that walk faulted inside
# the library, left CR2 at the exit's address and the exception marked in flight, and the
# guest's next page fault arrived as a double fault (Linux's first one in user space panicked
# in strncpy_from_user: its rdmsr exits were in __init code it had freed).
UNMAPPED_EXIT = """
    mov esp, 0x90000
""" + flat_gdt(0x7000) + idt_setup({8: "double_fault", 14: "page_fault"}) + identity_paging() + """
    mov dword ptr [0x200010], 0x00c3320f     # rdmsr; ret: an engine exit at 0x200010
    mov ecx, 0x1b
    mov eax, 0x200010
    call eax
    mov dword ptr [0x81800], 0               # unmap 0x200000 and 0x300000
    mov dword ptr [0x81c00], 0
    invlpg [0x200000]
    invlpg [0x300000]
    rdtsc                                    # time in use: this run ends, others follow
    mov ecx, 1000
spin:
    dec ecx
    jnz spin
    mov eax, dword ptr [0x300004]            # #PF, CR2 0x300004
    mov eax, 0xbad
""" + EXIT + """
page_fault:
    mov eax, cr2
""" + EXIT + """
double_fault:
    mov eax, 0xdf
""" + EXIT


@pytest.mark.parametrize("mode", ("direct", "vt"))
def test_page_fault_after_an_exit_was_unmapped(tmp_path, mode):
    result, _output, _vm = run_source(tmp_path, UNMAPPED_EXIT, mode=mode)
    # QEMU: #PF, CR2 the address read (its exit status 9: (0x300004 << 1 | 1) & 0xFF; a #DF's is 0xBF)
    assert result.guest_value == 0x300004
