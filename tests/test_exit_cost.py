"""The cost of a monitor exit (issue 15, "Speed on real workloads"): what each fast path of the
exit path saves is pinned here by counting the work it must not do, with real guests on real
engine runs; each guest's guest-visible result is QEMU's (recorded with qemu-system-i386, as
said at each test), and where a fast path stands beside a slow one, both give the same."""

import json

import pytest

import cache.tcache
from tests.cli import run_vmm
from tests.guests import EOI_IRET, EXIT, flat_gdt, idt_setup, paging_on, run_image, run_source
from tests.test_timer import pic_and_pit
from tests.samples import REPO_ROOT
from vmm.builder import MachineConfig, build_machine
from vmm.console import BufferConsole
from vmm.exits import ExitReason, StopReason

def _two_directories(entry: int = 0x83, cr4_bits: int = 0x10) -> str:
    """Two page directories sharing one 4 MiB page of kernel (`entry`: PSE, and G where asked,
    with CR4.PGE in `cr4_bits`): the guest switches between them."""
    return f"""
    mov esp, 0x90000
    mov dword ptr [0x10000], {entry:#x}
    mov dword ptr [0x11000], {entry:#x}
    mov eax, cr4
    or eax, {cr4_bits:#x}
    mov cr4, eax
""" + paging_on(0x10000)


def _switches(rounds: int, after_each: str = "") -> str:
    """`rounds` CR3 loads, each between the two directories and followed by `after_each`; EAX
    ends on the first directory, so the guest writes 0 to isa-debug-exit."""
    return f"""
    mov ecx, {rounds}
    mov eax, 0x10000
switch:
    xor eax, 0x1000
    mov cr3, eax
{after_each}    dec ecx
    jnz switch
    sub eax, 0x10000
""" + EXIT


def test_a_cr3_switch_without_indirect_branches_leaves_the_lookup_table_alone(tmp_path, monkeypatch):
    # 400 CR3 loads in a loop with no indirect branch: no lookup-table entry is installed in
    # between, so no load rewrites the table's 512 KiB (each did: 20 us a switch). ECX counts
    # down to 0 and EAX ends on the first directory: the guest writes 0 to isa-debug-exit, as
    # under QEMU (qemu-system-i386 -kernel guest.elf: exit status 1, the value 0).
    rewrites = []
    empty = cache.tcache._empty_lookup_table
    monkeypatch.setattr(cache.tcache, "_empty_lookup_table", lambda: rewrites.append(1) or empty())
    result, _out, vm = run_source(tmp_path, _two_directories() + _switches(400), mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert vm.exits[ExitReason.CALLOUT] >= 400
    assert len(rewrites) == 1, len(rewrites)          # the cache's first, empty table



def _cr3_switches_with_returns(global_bit: int) -> str:
    """The two directories with the kernel's 4 MiB page global or not (CR4.PGE on): 200 CR3
    loads, each followed by six calls of one function, whose `ret` has more targets than the
    inline cache predicts, so it goes through the lookup table. As under QEMU (recorded: exit
    status 1, the value 0)."""
    return (_two_directories(0x83 | global_bit, 0x90) + _switches(200, "    call function\n" * 6)
            + "function:\n    ret\n")


@pytest.mark.parametrize("global_bit", [0x100, 0])
def test_a_cr3_load_keeps_the_lookup_entries_of_global_pages(tmp_path, global_bit):
    # Of the ret's six targets, the inline cache predicts four and the lookup table holds the
    # other two; a CR3 load leaves those entries when the code is global (as the CPU leaves
    # global TLB entries), and clears them when it is not: then every switch costs two misses
    # (a Linux context switch missed its kernel's return targets again: 95,000 misses in the
    # boot, before global entries were kept).
    result, _out, vm = run_source(tmp_path, _cr3_switches_with_returns(global_bit), mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    misses = vm.mode.exit_counts["lookup miss"]
    assert misses < 20 if global_bit else misses >= 2 * 200, misses

# A ring-0 `int 0x30` loop (300 rounds) whose handler counts in EBX and returns with iretd; the
# stack is on the code's own page, below the code's end: each delivery's frame and each iretd's
# pop are monitor accesses next to translated code. QEMU (qemu-system-i386 -kernel, through the
# Multiboot wrapper of tools/build_samples.py): isa-debug-exit value 0, nothing printed.
INT_LOOP = """
    mov esp, 0x100f00
    mov eax, handler
    mov word ptr [0x8000 + 0x30 * 8], ax
    mov word ptr [0x8000 + 0x30 * 8 + 2], 0x08
    mov byte ptr [0x8000 + 0x30 * 8 + 4], 0
    mov byte ptr [0x8000 + 0x30 * 8 + 5], 0x8e
    shr eax, 16
    mov word ptr [0x8000 + 0x30 * 8 + 6], ax
    mov word ptr [0x7ff0], 0x30 * 8 + 7
    mov dword ptr [0x7ff2], 0x8000
    lidt [0x7ff0]
    mov ecx, 300
    xor ebx, ebx
again:
    int 0x30
    dec ecx
    jnz again
    lea eax, [ebx - 300]
""" + EXIT + """
handler:
    inc ebx
    iretd
"""


def test_monitor_stores_next_to_translated_code_look_at_no_block(tmp_path, monkeypatch):
    # The exception frames the monitor pushes land on a page of translated code, but on no
    # translated byte: the page's code bitmap says so, and no block is examined (each store
    # looked at every block of the page: most of a system call's cost in bench_micro's guest).
    looked = []
    covers = cache.tcache.TranslatedBlock.covers
    monkeypatch.setattr(cache.tcache.TranslatedBlock, "covers",
                        lambda block, address, size: looked.append(1) or covers(block, address, size))
    result, _out, vm = run_source(tmp_path, INT_LOOP, mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert vm.delivery.delivered[0x30] == 300
    assert len(looked) < 50, len(looked)


def test_a_monitor_store_into_translated_code_still_drops_the_block(tmp_path):
    # The loop's first round runs `once` (translated), then moves the stack onto it: the frame
    # of each delivery lands on those translated bytes, and their block goes (the delivery's
    # stores are the monitor's, which the engine's write protection does not see). QEMU: value 0.
    source = INT_LOOP.replace("again:\n", """again:
    cmp ecx, 300
    jne skip
    call once
    mov esp, once_end
skip:
""") + "once:\n" + "    nop\n" * 15 + """    ret
once_end:
"""
    result, _out, vm = run_source(tmp_path, source, mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert vm.mode.cache.counters["invalidations_smc"] >= 1


def test_delivery_from_ring_3_under_bt_leaves_the_guest_gdt_unwritten(monkeypatch):
    # sample ring3 (its output and exit value recorded from QEMU in sample_binaries/expected)
    # takes 23 #GPs, a #UD and system calls from ring 3. bt's engine loads the shadows of CS and
    # SS (accessed bit preset), never the guest's descriptors: the monitor no longer sets their
    # accessed bits around the load and puts them back (59 stores into the GDT, each an
    # invalidation check and a page-table trace check, with nothing changed in the end).
    console = BufferConsole()
    vm, _image = build_machine(MachineConfig(image=str(REPO_ROOT / "sample_binaries/ring3.elf"), mode="bt"), console)
    stores = []
    write = vm.memory.write
    monkeypatch.setattr(vm.memory, "write", lambda address, data: stores.append(address) or write(address, data))
    result = vm.run()
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert bytes(console.output) == (REPO_ROOT / "sample_binaries/expected/ring3.out").read_bytes()
    base, limit = vm.cpu.tables["gdtr"]
    assert vm.delivery.delivered[13] == 23
    # what remains is the guest's own: ltr's busy bit, the accessed bits of two segment loads
    assert len([address for address in stores if base <= address <= base + limit]) == 3


@pytest.mark.parametrize("mode, reason", [("bt", "callout"), ("direct", "exception")])
def test_the_report_gives_the_seconds_spent_on_each_exit_reason(tmp_path, mode, reason):
    # The INT_LOOP guest (QEMU: value 0): under bt 300 int 0x30 and 300 iretd callouts (and
    # lidt's), dispatched by the run loop; under direct 300 exceptions, dispatched from the
    # engine's interrupt hook. The report says how long each reason took, and nothing
    # measurable went to the reasons that did not happen.
    image = tmp_path / "guest.s"
    image.write_text(INT_LOOP)
    report = tmp_path / "report.json"
    proc = run_vmm("run", image, "--mode", mode, "--report", report)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(report.read_text())
    assert result["counters"]["exits"][reason] == (601 if mode == "bt" else 300)
    seconds = result["exit_seconds"]
    assert set(seconds) == set(result["counters"]["exits"])
    assert 0 < seconds[reason] < result["wall_time_s"]
    assert seconds["hlt"] == seconds["event"] == 0


def test_the_virtual_cpu_block_holds_its_fields_at_the_layout_offsets():
    # VcpuBlock packs its 80 bytes at once and stores them only when they changed. After sample
    # ring3 (QEMU's output, sample_binaries/expected) under bt, whose deliveries, irets and
    # segment loads changed the virtual CPU hundreds of times, both pages hold each field where
    # translator/layout.py puts it (the field-by-field writes this replaced, the reference).
    import struct
    from capstone import x86_const as X
    from translator import layout
    from vmm.modes.bt.vcpu import SEGMENT_IDS
    result, output, vm = run_image(str(REPO_ROOT / "sample_binaries/ring3.elf"), mode="bt")
    assert output == (REPO_ROOT / "sample_binaries/expected/ring3.out").read_bytes(), result.message
    cpu, block = vm.cpu, vm.mode.vcpu_block
    expected, privileged = bytearray(bytes(block.view)), bytearray(bytes(block.privileged_view))
    expected[:layout.VCPU_TSC_CHECK + 4] = bytes(layout.VCPU_TSC_CHECK + 4)    # every field written below
    for name, register in SEGMENT_IDS.items():
        struct.pack_into("<I", expected, layout.VCPU_SELECTOR[register], cpu.selectors[name])
    struct.pack_into("<I", expected, layout.VCPU_PUSHF_ADJUST, (cpu.virtual_flags - cpu.real_iopl) & 0xFFFFFFFF)
    struct.pack_into("<I", expected, layout.VCPU_POPF_EXPECT, cpu.virtual_flags)
    struct.pack_into("<I", expected, layout.VCPU_IO_CHECK, int(cpu.cpl > (cpu.virtual_flags >> 12) & 3))
    struct.pack_into("<I", expected, layout.VCPU_TSC_CHECK, int(cpu.cpl > 0 and bool(cpu.control[4] & 4)))
    for offset, name in ((layout.VCPU_GDTR, "gdtr"), (layout.VCPU_IDTR, "idtr")):
        base, limit = cpu.tables[name]
        struct.pack_into("<HIH", expected, offset, limit, base, 0)
    struct.pack_into("<II", expected, layout.VCPU_LDTR, cpu.table_selectors["ldtr"], cpu.table_selectors["tr"])
    assert layout.VCPU_TR == layout.VCPU_LDTR + 4
    for number, offset in layout.VCPU_CR.items():
        struct.pack_into("<I", expected, offset, cpu.control[number])
        struct.pack_into("<I", privileged, offset, cpu.control[number])
    assert (bytes(block.view), bytes(block.privileged_view)) == (bytes(expected), bytes(privileged))
    assert cpu.selectors["cs"] & 3 == 0 and X.X86_REG_CS in layout.VCPU_SELECTOR


def test_decoded_descriptors_are_those_a_fresh_decode_gives():
    # Gate.decode and SegmentDescriptor.decode keep their results by the raw bytes; a fresh
    # decode (a bytearray is never kept) gives the same for every kind of descriptor.
    import random
    from vmm.x86 import Gate, SegmentDescriptor
    rng = random.Random(15)
    for _ in range(2000):
        raw = rng.getrandbits(64).to_bytes(8, "little")
        for kind in (Gate, SegmentDescriptor):
            assert kind.decode(raw) == kind.decode(bytearray(raw)) and kind.decode(raw) is kind.decode(raw)


# Callouts serviced inside the engine's interrupt hook (vmm/modes/bt/dispatch.py,
# _callout_in_hook): segment loads, invlpg, cpuid and CR3 loads in a loop, each exact, none
# leaving the engine; the run loop sees them as callouts all the same.
IN_HOOK_LOOP = flat_gdt(0x6000) + _two_directories() + """
    mov esp, 0x90000
    mov ecx, 300
    xor esi, esi
again:
    mov ax, 0x10
    mov es, ax
    push es
    pop fs
    invlpg [0x5000]
    mov eax, 0x10000
    mov cr3, eax
    mov eax, 0
    push ecx
    cpuid
    pop ecx
    add esi, eax
    dec ecx
    jnz again
    lea eax, [esi - 300 * 4]            /* cpuid leaf 0: the highest basic leaf, 4 (qemu32) */
""" + EXIT


def test_callouts_are_serviced_inside_the_engine_hook(tmp_path):
    result, _out, vm = run_source(tmp_path, IN_HOOK_LOOP, mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    exits = vm.mode.exit_counts
    assert exits["callout_in_hook"] >= 5 * 300 and exits["callout"] - exits["callout_in_hook"] < 10
    assert vm.exits[ExitReason.CALLOUT] == exits["callout"]      # dispatched as every callout is
    assert vm.exits[ExitReason.EVENT] < 10                       # and never a return from the engine


IRET_WINDOW = """
    mov esp, 0x90000
    mov dword ptr [0x7000], 0
""" + idt_setup({0x20: "timer"}) + pic_and_pit(2) + """
    mov ecx, 1000000                     /* long enough for QEMU's real-time PIT too */
spin:
    dec ecx
    jnz spin                             /* IRQ0 waits: IF is clear */
    pushfd
    or dword ptr [esp], 0x200
    xor eax, eax
    mov ax, cs                           /* (keystone's `push cs` pushes 2 bytes) */
    push eax
    mov eax, returned
    push eax
    iretd                                /* sets IF: the interrupt comes before `returned` runs */
returned:
    cli
    mov eax, dword ptr [0x7000]
    mov edx, returned
    sub eax, edx
""" + EXIT + """
timer:
    cmp dword ptr [0x7000], 0
    jne timer_done
    mov eax, dword ptr [esp]
    mov dword ptr [0x7000], eax
timer_done:
""" + EOI_IRET


@pytest.mark.parametrize("mode", ["bt", "direct"])
def test_an_interrupt_waiting_for_an_iret_that_sets_if_comes_right_after_it(tmp_path, mode):
    # As on QEMU (recorded: status 1, the value 0): the first timer interrupt returns to the
    # instruction after the iret. Under bt
    # the iret's callout is serviced in the hook, which stops the engine for the window.
    result, _out, vm = run_source(tmp_path, IRET_WINDOW, mode=mode)
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message



# IRET_WINDOW with 500 callouts (segment loads) run while IRQ0 waits for IF: each is serviced in
# the hook, and none stops the engine for the window, whose watch for IF is armed already. (The
# PIT at divisor 1000, not 2: its edges, each a run's bound, are not what is counted here.)
CLI_SECTION_WINDOW = IRET_WINDOW.replace(pic_and_pit(2), pic_and_pit(1000)).replace("    pushfd\n", """    mov ecx, 500
    mov dx, ds
loads:
    mov ds, dx                           /* a callout, with IRQ0 raised and IF clear */
    dec ecx
    jnz loads
    pushfd
""", 1)


def test_callouts_in_a_cli_section_do_not_stop_for_an_interrupt_that_waits_for_if(tmp_path):
    # As IRET_WINDOW on QEMU (recorded: status 1, the value 0): the interrupt comes right after
    # the iret. Before, each of the 500 loads stopped the engine for a window that could only
    # find IF clear again (the Linux boot: 78,000 such stops, for 20,000 interrupts delivered).
    result, _out, vm = run_source(tmp_path, CLI_SECTION_WINDOW, mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert vm.mode.exit_counts["callout_in_hook"] >= 500
    assert vm.exits[ExitReason.EVENT] < 50, vm.exits

# Page faults classified inside the engine's hook (_page_fault_in_hook): under shadow paging the
# guest's own #PF (a page not present in its tables) is delivered to its handler, which maps the
# page and returns, and the shadow's hidden faults resume, all without the engine stopping.
# QEMU runs the guest to the same end (status 1: the value 0).
DEMAND_PAGING = flat_gdt(0x6000) + idt_setup({14: "page_fault"}, trap_vectors=()) + """
    mov esp, 0x90000
    mov edi, 0x81000                     /* table for 4-8 MiB: every page not present */
    mov ecx, 1024
clear:
    mov dword ptr [edi], 0
    add edi, 4
    dec ecx
    jnz clear
    mov dword ptr [0x80000], 0x83        /* 0-4 MiB: one 4 MiB page */
    mov dword ptr [0x80004], 0x81003
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
""" + paging_on(0x80000) + """
    xor esi, esi
    mov ebx, 0x400000
touch:
    add esi, dword ptr [ebx]             /* faults once per page: the handler maps it */
    add ebx, 0x1000
    cmp ebx, 0x400000 + 64 * 0x1000
    jne touch
    mov eax, dword ptr [0x7000]
    sub eax, 64
    add eax, esi                         /* the frames read hold zeros */
""" + EXIT + """
page_fault:
    push eax
    push edx
    inc dword ptr [0x7000]
    mov eax, cr2
    shr eax, 12
    and eax, 0x3ff
    mov edx, eax
    shl edx, 12
    add edx, 0x200003                    /* page n of 4-8 MiB -> frame 0x200000 + n pages */
    mov dword ptr [0x81000 + eax * 4], edx
    pop edx
    pop eax
    add esp, 4                           /* the error code */
    iretd
"""


@pytest.mark.parametrize("mode, paging", [("bt", "shadow"), ("bt", "nested"), ("direct", None)])
def test_guest_page_faults_are_delivered_from_the_engine_hook(tmp_path, mode, paging):
    result, _out, vm = run_source(tmp_path, DEMAND_PAGING, mode=mode, **({"paging": paging} if paging else {}))
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert vm.delivery.delivered[14] == 64
    if (mode, paging) == ("bt", "shadow"):
        exits = vm.mode.exit_counts
        assert exits["fault_in_hook"] == exits["true_page_fault"] == 64
        assert vm.exits[ExitReason.EVENT] < 10
