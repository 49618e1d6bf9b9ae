"""Every sample guest under the monitor: console output byte for byte and the exit status, as
recorded from QEMU (tests/test_qemu_reference.py checks the recordings against QEMU itself), in
the modes its manifest entry lists; the modes it leaves out stop cleanly or still differ, for
the reason the entry gives. Then what the paging samples found in the monitor."""

import json
import struct
import subprocess
import sys

import pytest

from tests.cli import run_vmm, sample_arguments
from tests.guests import EXIT, flat_gdt, idt_setup, paging_on, run_source
from tests.samples import MANIFEST, REPO_ROOT, ids
from tests.test_timer import HANDLER, PIC_AND_PIT_100HZ
from vmm.cpu import GuestCpu
from vmm.engine import Engine
from vmm.exits import ExitReason, StopReason
from vmm.guest_view import GuestFault, GuestView
from vmm.memory import PhysicalMemory
from vmm.x86 import PTE_A, PTE_D

TRIPLE_FAULT_STATUS = 120


def skip_unless_the_mode_runs(entry, mode):
    if mode not in entry["modes"]:
        pytest.skip(f"{entry['name']} under {mode}: {entry['missing'][mode]}")


@pytest.mark.parametrize("entry", MANIFEST, ids=ids(MANIFEST))
def test_sample(entry, mode, tmp_path):
    skip_unless_the_mode_runs(entry, mode)
    report = tmp_path / "report.json"
    proc = run_vmm(*sample_arguments(entry), "--mode", mode, "--report", report,
                   stdin=(entry["stdin"] or "").encode())
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes(), proc.stderr.decode()
    summary = json.loads(report.read_text())
    if entry["exit"] is None:                        # the triple-fault sample
        assert proc.returncode == TRIPLE_FAULT_STATUS
        assert summary["exit"]["reason"] == "triple_fault"
        assert proc.stderr.decode().startswith("vmm: triple fault:") and proc.stderr.count(b"\n") == 1
    else:
        assert proc.returncode == entry["exit"] & 0xFF and proc.stderr == b""
        assert summary["exit"] == {"reason": "debug_exit", "status": entry["exit"] & 0xFF,
                                   "guest_value": entry["exit"], "message": summary["exit"]["message"]}
    assert summary["mode"] == mode and summary["image"] == entry["image"]
    assert summary["counters"]["port_io"]["com1"]["writes"] >= len(proc.stdout)


def test_exception_sample_report_counts_each_vector(tmp_path, mode):
    entry = next(e for e in MANIFEST if e["name"] == "exceptions")
    run_vmm(*sample_arguments(entry), "--mode", mode, "--report", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    exceptions = report["counters"]["exceptions"]
    assert exceptions["0 #DE"] == 2 and exceptions["13 #GP"] == 1 and exceptions["6 #UD"] == 2
    exits = report["counters"]["exits"]
    if mode == "direct":      # every exception and int n reaches the monitor as an exception exit
        assert exits["exception"] == sum(exceptions.values())
    else:                     # int n, int3, into are callouts; faults and #DB single steps are exits
        assert exits["exception"] + exits["callout"] >= sum(exceptions.values())


@pytest.mark.parametrize("entry", MANIFEST, ids=ids(MANIFEST))
def test_inspection_and_tracing_work_on_every_sample(entry, tmp_path):
    """vmm-tcache reads every sample's cache dump, and the trace flags (all but exec, which
    tests/test_trace.py covers) log every sample's run."""
    skip_unless_the_mode_runs(entry, "bt")
    dump, log = tmp_path / "cache.json", tmp_path / "trace.log"
    proc = run_vmm(*sample_arguments(entry), "--dump-cache", dump, "-d", "in_asm,out_asm,int,exits,io", "-D", log,
                   stdin=(entry["stdin"] or "").encode())
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes()
    blocks = json.loads(dump.read_text())["blocks"]
    assert log.read_text().count("OUT: [size=") >= len(blocks) > 0
    table = subprocess.run([sys.executable, "tools/vmm_tcache.py", str(dump), "--summary", "--json"],
                           capture_output=True, text=True, cwd=REPO_ROOT)
    assert table.returncode == 0, table.stderr
    assert json.loads(table.stdout)["blocks"] == len(blocks)


# -- the modes a run leaves out -------------------------------------------------------------------
LEFT_OUT = [(entry, mode) for entry in MANIFEST for mode in entry["missing"]]
DIFFERING = [(entry, mode) for entry, mode in LEFT_OUT if mode in ("direct", "trap", "vt")]


def _pair_ids(pairs):
    return [f"{entry['name']}-{mode}" for entry, mode in pairs]


# How each left-out run differs, as its "missing" reason says (the sample's own checks report it):
# (sample, mode) -> (exit status, a line of its output or of the monitor's error).
_STRING_IO = (31, b"string_io: 24 checks, 5 FAILED")
_TASKS16 = (124, b"vmm: instruction limit reached (20000000 instructions) at eip 0x00100059")
STILL_DIFFERS = {("string_io", "direct"): _STRING_IO, ("string_io", "trap"): _STRING_IO,
                 ("string_io", "vt"): _STRING_IO, ("tasks16", "direct"): _TASKS16, ("tasks16", "vt"): _TASKS16}


def test_every_left_out_run_says_how_it_differs():
    assert set(STILL_DIFFERS) == {(entry["name"], mode) for entry, mode in DIFFERING}


@pytest.mark.parametrize("entry, mode", DIFFERING, ids=_pair_ids(DIFFERING))
def test_a_mode_left_out_for_an_engine_defect_still_differs(entry, mode):
    """The run's "missing" reason is real: the output differs from QEMU's, in the way the defect
    makes it (not a crash, not another failure). If this fails, the mode may now match: add it
    to the run's modes in tools/build_samples.py."""
    proc = run_vmm(*sample_arguments(entry), "--mode", mode, "--max-insns", "20000000")
    status, line = STILL_DIFFERS[entry["name"], mode]
    assert proc.returncode == status, proc.stderr.decode()
    assert line in proc.stdout.splitlines() + proc.stderr.splitlines()


# -- what the paging samples found in the monitor ----------------------------------------------------
PD, PT, CR0_PAGING = 0x10000, 0x11000, 0x80010011       # PE, ET, WP, PG
BIG_PDE = PD + 4                                         # 4-8 MiB: a 4 MiB page (PS) onto itself


def _paged_view(**view_options):
    """A machine's memory and CPU with paging on: 0-4 MiB through one table that maps
    0x20000 writable and 0x21000 read-only (0x22000 absent), and a 4 MiB page at 4 MiB."""
    engine = Engine()
    memory = PhysicalMemory(engine, 8)
    for address, entry in ((PD, PT | 3), (BIG_PDE, 0x400000 | 0x83),
                           (PT + 0x20 * 4, 0x20000 | 3), (PT + 0x21 * 4, 0x21000 | 1)):
        memory.write(address, struct.pack("<I", entry))
    cpu = GuestCpu(engine)
    cpu.set_reg("cr3", PD)
    cpu.set_reg("cr0", CR0_PAGING)
    return memory, cpu, GuestView(cpu, memory, **view_options)


def _entry(memory, address):
    return memory.read_u32(address)


def test_delivery_sets_accessed_and_dirty_bits_as_the_cpu_does():
    """The monitor's own accesses for the guest (exception frames, IDT and GDT reads) walk the
    guest's tables as QEMU's MMU does: accessed bits in the PDE and PTE used, dirty on a write
    (paging.elf: the IDT's page and the stack page after int3)."""
    memory, cpu, view = _paged_view()
    view.read(0x20010, 4)
    assert _entry(memory, PD) & (PTE_A | PTE_D) == PTE_A
    assert _entry(memory, PT + 0x20 * 4) & (PTE_A | PTE_D) == PTE_A
    view.write(0x20010, b"\x01")
    assert _entry(memory, PT + 0x20 * 4) & (PTE_A | PTE_D) == PTE_A | PTE_D
    with pytest.raises(GuestFault) as fault:             # CR0.WP: a protection fault, not marked
        view.write(0x21000, b"\x01")
    assert (fault.value.vector, fault.value.error_code) == (14, 3)
    assert _entry(memory, PT + 0x21 * 4) & (PTE_A | PTE_D) == 0
    memory.write(PD, struct.pack("<I", PT | 3))          # A cleared; the PTE is absent
    with pytest.raises(GuestFault) as fault:
        view.read(0x22000, 4)
    assert (fault.value.error_code, cpu.reg("cr2")) == (0, 0x22000)
    assert _entry(memory, PD) & PTE_A                    # the PDE found present is marked anyway
    with pytest.raises(GuestFault) as fault:             # PS means nothing without CR4.PSE
        view.write(0x400010, b"\x01")
    cpu.set_reg("cr4", 0x10)
    view.write(0x400010, b"\x01")
    assert _entry(memory, BIG_PDE) & (PTE_A | PTE_D) == PTE_A | PTE_D
    assert memory.read(0x400010, 1) == b"\x01"


def test_a_look_that_is_not_the_cpus_leaves_the_guest_as_it_was():
    memory, cpu, view = _paged_view(cpu_access=False)
    cpu.set_reg("cr2", 0x1234)
    cpu.set_reg("cr3", PD)                               # see the next test
    assert view.read(0x20010, 4) == b"\0" * 4
    assert _entry(memory, PT + 0x20 * 4) & (PTE_A | PTE_D) == 0
    with pytest.raises(GuestFault):
        view.read(0x22000, 4)
    assert cpu.reg("cr2") == 0x1234


def test_a_page_fault_the_monitor_raises_sets_cr2_and_keeps_cr3():
    """Unicorn 2.1.1 writes CR3 along with CR2 (uc_reg_write calls cpu_x86_update_cr3 for CR2;
    tests/test_engine.py pins it): a fault the monitor raises during delivery must not move the
    guest's address space."""
    _memory, cpu, view = _paged_view()
    with pytest.raises(GuestFault):
        view.read(0x22000, 4)
    assert (cpu.reg("cr2"), cpu.reg("cr3")) == (0x22000, PD)


ALIAS_GUEST = ("    mov esp, 0x90000\n    mov dword ptr [0x7000], 0\n" + idt_setup({0x20: "timer"}) + flat_gdt(0x7f00)
               + """
    mov edi, 0x201000
    mov eax, 3
fill:
    mov dword ptr [edi], eax
    add eax, 0x1000
    add edi, 4
    cmp edi, 0x202000
    jb fill
    mov dword ptr [0x200000], 0x201003
    mov dword ptr [0x200400], 0x201003
""" + paging_on(0x200000) + """    mov eax, high
    add eax, 0x40000000
    jmp eax
high:
""" + PIC_AND_PIT_100HZ + """
wait:
    sti
    hlt
    cli
    cmp dword ptr [0x7000], 5
    jb wait
    xor eax, eax
""" + EXIT + HANDLER)


@pytest.mark.parametrize("untranslated", ["direct", "vt"])
def test_untranslated_modes_read_guest_code_at_its_linear_address(tmp_path, untranslated):
    """Direct execution decodes guest code at EIP to tell a hlt from a spent count, to find
    where a stop from an I/O hook landed, ...: EIP is linear, so with paging on the bytes come
    through the guest's tables. The guest runs at 0x40100000, mapped onto 0x100000, waits for
    five timer ticks with sti; hlt and exits there."""
    result, _out, vm = run_source(tmp_path, ALIAS_GUEST, mode=untranslated, timeout=30)
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0
    assert vm.exits[ExitReason.HLT] >= 5                 # each hlt seen as one, not as a spent count
    eip = result.registers["eip"]                        # right after the OUT to the debug-exit port
    assert eip > 0x40100000 and vm.memory.read(eip - 0x40000000 - 1, 1) == b"\xef"
