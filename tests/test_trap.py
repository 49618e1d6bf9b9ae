"""Trap-and-emulate (--mode trap): the guest kernel untranslated at ring 3. It must run every
sample whose behaviour does not depend on a virtualization hole exactly as QEMU does, go wrong
exactly where a hole explains it, and name the holes in its report."""

import json
import shutil

import pytest

from tests.cli import run_vmm, sample_arguments
from tests.guests import EXIT, identity_paging, run_source
from tests.samples import MANIFEST, REPO_ROOT, ids
from tests.test_timer import window_guest
from vmm.exits import StopReason

# Samples that see a hole: sensitive and ring3 read their own state through sgdt/pushf/mov r,cs...;
# segments reads CS after a far call the kernel makes natively (its RPL is the real 3);
# higher_half checks its GDT and IDT bases with sgdt/sidt; holes is written to show two holes. The
# kernel's iret to ring 3 is no hole any more (the ring views make it trap): multitask and
# address_spaces run as on QEMU. (`calls` runs 5 million loop rounds: it once ran without the
# hole watch, a call per engine block then; tests/test_watch_cost.py bounds what the watch costs.)
DIVERGING = {"sensitive", "ring3", "segments", "holes", "higher_half"}
FAITHFUL = [entry for entry in MANIFEST if entry["name"] not in DIVERGING]
HOLE_BOUND = ["--max-insns", "3000000"]      # a guest gone wrong may loop for ever


@pytest.mark.parametrize("entry", FAITHFUL, ids=ids(FAITHFUL))
def test_samples_without_holes_run_as_on_qemu(entry, tmp_path):
    if "trap" not in entry["modes"]:
        pytest.skip(f"{entry['name']} under trap: {entry['missing']['trap']}")
    report = tmp_path / "report.json"
    proc = run_vmm(*sample_arguments(entry), "--mode", "trap", "--report", report,
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
    # Exactly these, each as often as it ran. The first four blocks end in a trap (cli, lgdt)
    # or begin after one: no engine block returned to Unicorn's loop before the ljmp's, and
    # the translation hook must see them all the same (Engine.on_translation's stand-in).
    assert [(hole["instruction"], hole["count"]) for hole in holes] == [
        ("ljmp 8:0x100020", 1), ("mov ds, eax", 1), ("mov es, eax", 1), ("mov fs, eax", 1), ("mov gs, eax", 1),
        ("mov ax, cs", 1), ("pushfd", 1), ("popfd", 1), ("pushfd", 2)]


@pytest.mark.parametrize("name, hole", [
    ("sensitive", "sgdt"), ("ring3", "sgdt"), ("segments", "mov ax, cs"), ("higher_half", "sgdt"),
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


# 100 rounds of a block that loads from a page it has not touched (under shadow paging a hidden
# page fault: the monitor fills the shadow and the load runs again) and then runs a pushfd.
HIDDEN_FAULT_BEFORE_A_HOLE = """
    mov esp, 0x90000
""" + identity_paging() + """
    mov ecx, 100
    mov esi, 0x200000
top:
    inc edx
    mov eax, dword ptr [esi]
    pushfd
    pop eax
    add esi, 0x1000
    dec ecx
    jnz top
""" + EXIT


def test_a_hole_counts_the_times_it_ran_though_its_block_faulted_in_front_of_it(tmp_path):
    # The block holding the pushfd starts twice a round (again at the load, after the hidden
    # fault): counting block starts said 201 (the hole watch before issue 13), it ran 100 times.
    result, _out, vm = run_source(tmp_path, HIDDEN_FAULT_BEFORE_A_HOLE, mode="trap")
    assert result.reason is StopReason.DEBUG_EXIT
    assert vm.mode.paging.pager.counters["hidden_faults"] >= 100
    assert [(hole["instruction"], hole["count"]) for hole in vm.mode.holes()] == [("pushfd", 100)]


def test_an_iret_that_faults_and_then_traps_is_no_native_return(tmp_path):
    # paging's int3 handler is a lone iretd back to the kernel: at the real ring 3 it traps
    # (#GP) and is emulated, once after a hidden page fault at the iretd itself (the shadow has
    # not yet mapped what it reads). Watched as block starts, the run after the fault counted
    # as a native return (the hole watch before issue 13 named `iretd`, count 1).
    proc, expected, holes = _run_holes_sample(tmp_path, "paging")
    assert proc.stdout.decode().splitlines() == expected and proc.returncode == 0
    assert not [hole for hole in holes if hole["instruction"] == "iretd"], holes


# -- ring compression: the views of the shadow GDT per virtual ring (vmm/shadow_tables.py) ----------
def _ring_views_guest(entry: str):
    """The kernel maps 0xFF400000-0xFF7FFFFF onto its own RAM (where trap keeps its ring views of
    the GDT and LDT, 0xFF410000 on: a monitor page in every shadow, lent or emulated), loads DS
    from there, copies from there with rep movsd, scribbles over what lies at the kernel view's
    GDT linear address and loads DS natively, loads ring 3's readable code segment into DS (a
    mark in its view: emulated); then enters ring 3 by `entry` (iretd or retf) with
    ES and FS holding the kernel's data selector. The process shows its segment registers (ES and
    FS nulled by the return, as the CPU does), is refused the kernel's data selector and a far
    call to the kernel's code (#GP with the selector), and reads its own page at 0xFF470008."""
    from tests.test_isolation import BUFFER, REP_MOVSD, USER_STACK, Guest, _map_own_frames

    def build(p) -> None:
        _map_own_frames(p)          # among them 0xFF400000-0xFF7FFFFF: a 4 MiB page onto 0x400000
        p.probe("own 0xff410008 written high, read low",
                "    mov dword ptr [0xff410008], 0x600dbeef\n    mov eax, dword ptr [0x410008]")
        p.probe("mov ds, [0xff410010] holding 0x10",
                "    mov word ptr [0x410010], 0x10\n    mov ds, word ptr [0xff410010]\n    mov eax, ds")
        p.probe("rep movsd from 0xff410000",
                f"    mov dword ptr [0x410000], 0x11\n    mov dword ptr [0x41000c], 0x44\n"
                f"    mov esi, 0xff410000\n    mov edi, {BUFFER:#x}\n    mov ecx, 4\n    {REP_MOVSD}\n"
                f"    mov eax, dword ptr [{BUFFER:#x}]\n    mov ebx, dword ptr [{BUFFER + 12:#x}]", "eax", "ebx")
        p.probe("mov ds, 0x10 with 0xff410010 scribbled",
                "    mov dword ptr [0xff410010], 0xffffffff\n    mov dword ptr [0xff410014], 0xffffffff\n"
                "    mov ax, 0x10\n    mov ds, ax\n    mov eax, dword ptr [0x410010]")
        p.probe("the kernel loads ring 3's code segment into DS",      # marked in its view: emulated
                "    mov ax, 0x1b\n    mov ds, ax\n    mov eax, ds\n    mov bx, 0x10\n    mov ds, bx")
        p.emit("    mov dword ptr [0x470008], 0x600d3333")
        flags = "    pushfd\n    and dword ptr [esp], 0xfffffdff\n" if entry == "iretd" else ""
        p.emit(f"    push 0x23\n    push {USER_STACK:#x}\n{flags}    push 0x1b\n    mov eax, user_entry\n    push eax\n"
               "    mov ax, 0x23\n    mov ds, ax\n    mov ax, 0x10\n    mov es, ax\n    mov fs, ax\n"
               f"    mov ax, 0x23\n    mov gs, ax\n    {entry}\nuser_entry:")
        p.ring = 3
        p.probe(f"ring 3 after the kernel's {entry}: es fs gs cs ss",
                "    mov eax, es\n    mov ebx, fs\n    mov ecx, gs\n    mov edx, cs\n    mov esi, ss",
                "eax", "ebx", "ecx", "edx", "esi")
        p.probe("ring 3 loads the kernel's data selector", "    mov ax, 0x10\n    mov ds, ax\n    mov eax, 1")
        p.probe("ring 3 far call to the kernel's code", "    .byte 0x9a\n    .long 0\n    .word 0x08\n    mov eax, 2")
        p.probe("ring 3 reads own 0xff470008", "    mov eax, dword ptr [0xff470008]")
        p.exit(0x33)

    return Guest(f"ring_views_{entry}", "trap's ring views", build, True)


# What qemu-system-i386 printed for each guest (recorded with tests.test_isolation.run_qemu; the
# test below checks it again where QEMU is installed). Under trap before the ring views, the
# kernel's iretd/retf ran natively as a same-ring return: the process kept the kernel's virtual
# ring and its first report through int 0x80 ended in #GP(0x18), exit 0x4d.
def _ring_views_console(entry: str, load_eip: int, call_eip: int) -> str:
    return ("own 0xff410008 written high, read low: 600dbeef\n"
            "mov ds, [0xff410010] holding 0x10: 00000010\n"
            "rep movsd from 0xff410000: 00000011 00000044\n"
            "mov ds, 0x10 with 0xff410010 scribbled: ffffffff\n"
            "the kernel loads ring 3's code segment into DS: 0000001b\n"
            f"ring 3 after the kernel's {entry}: es fs gs cs ss: 00000000 00000000 00000023 0000001b 00000023\n"
            f"ring 3 loads the kernel's data selector: #0d e=00000010 eip={load_eip:08x}\n"
            f"ring 3 far call to the kernel's code: #0d e=00000008 eip={call_eip:08x}\n"
            "ring 3 reads own 0xff470008: 600d3333\n")


RING_VIEWS_QEMU = {"iretd": (_ring_views_console("iretd", 0x100814, 0x100869), "exit 0x33"),
                   "retf": (_ring_views_console("retf", 0x10080C, 0x100861), "exit 0x33")}


# Under nested paging the views are at MONITOR_LINEAR, out of the guest's 4 GiB: its own frames at
# 0xFF410000 are simply its own (before, the virtual TLB answered there from the monitor's map,
# and the first store stopped the run as memory_fault).
@pytest.mark.parametrize("paging", ["shadow", "nested"])
@pytest.mark.parametrize("entry", sorted(RING_VIEWS_QEMU))
def test_the_kernel_returns_to_ring_3_through_the_ring_views_as_on_qemu(entry, paging):
    from tests.test_isolation import run_monitor
    console, ending = RING_VIEWS_QEMU[entry]
    outcome = run_monitor(_ring_views_guest(entry), "trap", paging)
    assert (outcome.console.decode(), outcome.ending) == (console, ending), outcome.detail
    assert not outcome.traceback


@pytest.mark.skipif(shutil.which("qemu-system-i386") is None, reason="qemu-system-i386 is not installed")
@pytest.mark.parametrize("entry", sorted(RING_VIEWS_QEMU))
def test_the_ring_views_expectations_are_qemus(entry):
    from tests.test_isolation import run_qemu
    outcome = run_qemu(_ring_views_guest(entry))
    assert (outcome.console.decode(), outcome.ending) == RING_VIEWS_QEMU[entry]


# The monitor's areas a trap or vt-shadow engine has mapped, as of the layout: ring views (trap:
# the page its flat tables keep, a guest access there served as unassigned memory), the shadow
# pool, the shared unassigned page, the until page; and where trap's flat tables were until they
# came from the pool (its own page directory and tables).
MONITOR_AREA_ADDRESSES = [0xFF410008, 0xFF480FF8, 0xFF004008, 0xFF100008, 0xFFD00008, 0xFFFFE008, 0xFFFFF008]


@pytest.mark.parametrize("mode, paging", [("trap", "shadow"), ("trap", "nested"), ("vt", "shadow")])
@pytest.mark.parametrize("address", MONITOR_AREA_ADDRESSES, ids=[f"{a:#x}" for a in MONITOR_AREA_ADDRESSES])
def test_with_paging_off_the_monitors_areas_are_unassigned_memory_to_the_kernel(tmp_path, mode, paging, address):
    # On QEMU the range is unassigned memory: the store vanishes, the dword reads 0 (both probes
    # of tests/test_isolation.py's kernel_reads_monitor-paging_off, recorded under QEMU). trap
    # (shadow) and vt with shadow paging once ran such a guest on the engine's physical space or on
    # flat tables that kept the monitor's areas there: the kernel read the monitor's page
    # directory (vt: 0xff102027), or its access stopped the run as memory_fault (trap); trap with
    # nested paging read its ring views (0x0000ffff).
    from vmm.monitor_layout import MONITOR_BASE
    source = (f"    mov dword ptr [{address:#x}], 0x5a5a5a5a\n    mov eax, 0x5a\n    mov eax, dword ptr [{address:#x}]\n"
              + EXIT)
    result, _out, vm = run_source(tmp_path, source, mode=mode, paging=paging)
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert bytes(vm.memory.monitor_view(address - MONITOR_BASE, 4)) != b"\x5a" * 4
    assert vm.memory.mmio.counters()["unassigned"] == {"reads": 1, "writes": 1}


def _descriptor_with(access: int) -> bytes:
    """A flat 4 GiB descriptor with the access byte `access`."""
    return (0x0000FFFF | (0x00CF0000 | access << 8) << 32).to_bytes(8, "little")


@pytest.mark.parametrize("access, ring, view_access, marked", [
    (0x9A, 0, 0xFB, False),     # the ring's own code: DPL 3, accessed
    (0xFA, 0, 0x7B, True),      # ring 3's code in the kernel's view: not present (a mark)
    (0x7A, 0, 0x7B, False),     # ...but the guest's own not-present code is no mark
    (0x9E, 0, 0x7F, True),      # conforming code: a mark in the kernel's view
    (0xDA, 0, 0x7B, True),      # ring 2's code: a mark
    (0x92, 0, 0xF3, False),     # the kernel's data: DPL 3
    (0xF2, 0, 0xF3, False),     # ring 3's data: loadable by the kernel as it is
    (0x92, 1, 0x93, False),     # ring 0's data in ring 1's view: DPL 0 kept, the engine's #GP
    (0xB2, 1, 0xF3, False),     # ring 1's own data
    (0x9A, 3, 0x9B, False),     # ring 3's view: the guest's descriptors as they are
    (0x9E, 3, 0x9F, False),
    (0x89, 0, 0x09, False),     # a TSS: never present in any view (the monitor emulates its uses)
    (0x89, 3, 0x09, False),
])
def test_a_ring_view_lets_through_what_that_ring_may_do_and_marks_the_rest(access, ring, view_access, marked):
    from vmm.shadow_tables import ring_view_descriptor
    descriptor, was_marked = ring_view_descriptor(_descriptor_with(access), ring)
    assert (descriptor[5], was_marked) == (view_access, marked)
    assert descriptor[:5] + descriptor[6:] == _descriptor_with(access)[:5] + _descriptor_with(access)[6:]
