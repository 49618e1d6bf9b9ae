"""Shadow paging under binary translation (vmm/shadow_paging.py), driven by real guests: the
monitor's memory stays out of reach whatever tables the guest builds, the shadow counts its
faults, switches and traces, and translations are shared by physical address. The paging
samples (tests/test_samples.py) check the guest-visible behaviour against QEMU."""

import json

import pytest

from tests.cli import run_vmm, sample_arguments, sample_report
from tests.guests import EXIT, paging_on, run_source
from tests.samples import MANIFEST
from vmm.exits import StopReason

PAGING_ON = """
    mov eax, 0x83                       /* PDE 0: 0-4 MiB, one 4 MiB page, kernel read/write */
    mov dword ptr [0x10000], eax
    mov eax, 0x11003                    /* PDE 1: 4-8 MiB through the table at 0x11000 */
    mov dword ptr [0x10004], eax
    mov eax, cr4
    or eax, 0x10                        /* CR4.PSE */
    mov cr4, eax
""" + paging_on(0x10000, 0x80010000)      # PG | WP


@pytest.mark.parametrize("access", ["read", "write"])
@pytest.mark.parametrize("physical", [0xFF0E8000, 0xFF0E9000, 0xFF500000, 0xFF004000, 0xFFD00000, 0xFF000000])
def test_guest_page_tables_cannot_reach_monitor_memory(tmp_path, physical, access):
    # A kernel maps linear 0x400000 onto a frame of the monitor's region (the virtual-CPU block,
    # the scratch page, the translation cache, the monitor's page directory, the shadow-table
    # pool, the boot GDT) and writes it: the shadow maps the frame to unassigned memory (the
    # monitor's range through its alias above 4 GiB), never to the monitor's page: as on QEMU
    # the read gives 0 and the store vanishes.
    source = PAGING_ON.replace("mov cr0, eax", f"""mov cr0, eax
    mov dword ptr [0x11000], {physical | 0x3:#x}
    {"mov eax, dword ptr [0x400000]" if access == "read" else ""}
    mov eax, 0xdeadbeee                 /* the value stored is made at run time, so that no */
    inc eax                             /* translation of this code holds it */
    mov dword ptr [0x400000], eax
    mov eax, 0
""") + EXIT
    result, _out, vm = run_source(tmp_path, source, mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert vm.memory.mmio.counters()["unassigned"] == {"reads": int(access == "read"), "writes": 1}
    offset = physical - vm.memory.monitor.base
    assert b"\xef\xbe\xad\xde" not in bytes(vm.memory.monitor_view(offset, 4096))


def test_a_page_directory_outside_guest_ram_reads_as_not_present(tmp_path):
    # CR3 aimed at the monitor's own page directory: the walk sees nothing present (and sets no
    # accessed bits in monitor memory): the fetch after mov cr0 faults, and with no usable IDT
    # the machine triple-faults.
    directory = 0xFF004000
    source = paging_on(directory) + "    mov eax, 0\n" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode="bt")
    before = vm.memory.read(directory, 4096)
    assert result.reason is StopReason.TRIPLE_FAULT, result.message
    assert vm.memory.read(directory, 4096) == before


def test_address_space_switches_reuse_cached_shadows(tmp_path):
    # address_spaces runs two processes A, B, A, B by CR3 loads: the second visit to each space
    # finds its shadow cached; the copy-on-write fault is a true fault, the kernel's edits of its
    # page tables are tracing faults, and most shadow entries come from hidden faults.
    counters = sample_report(tmp_path, "address_spaces", "--mode", "bt")["counters"]
    shadow = counters["shadow_paging"]
    assert shadow["shadow_switches"] >= 4 and shadow["shadow_reuses"] >= 2
    assert shadow["hidden_faults"] > 0 and shadow["true_faults"] > 0 and shadow["tracing_faults"] > 0
    assert shadow["page_tables_traced"] > 0
    assert counters["cache_exits"]["true_page_fault"] == shadow["true_faults"]


def test_translations_are_keyed_by_physical_address(tmp_path):
    # The two processes of address_spaces run different code at the same linear address: two
    # blocks for one guest EIP, each with its own frame; the kernel's blocks, mapped alike in
    # both spaces, are translated once with paging on (code that also ran before paging, such
    # as idt_set_gate, has a second block keyed by no physical address).
    dump = tmp_path / "cache.json"
    entry = next(e for e in MANIFEST if e["name"] == "address_spaces")
    proc = run_vmm(*sample_arguments(entry), "--mode", "bt", "--dump-cache", dump)
    assert proc.returncode == 0, proc.stderr.decode()
    blocks = json.loads(dump.read_text())["blocks"]
    process = [b for b in blocks if b["guest_address"] == 0x40000000]
    assert len(process) == 2 and process[0]["key"]["physical"] != process[1]["key"]["physical"]
    kernel = [b["guest_address"] for b in blocks if b["guest_address"] < 0x40000000 and b["key"]["physical"] != -1]
    assert kernel and len(kernel) == len(set(kernel))


def test_paging_off_again_returns_to_the_identity_map(tmp_path):
    # Paging on, a store through a mapping that moves a page, paging off: linear addresses are
    # physical again, and translated code keeps running.
    source = PAGING_ON + """
    mov dword ptr [0x11000], 0x203003   /* linear 0x400000 -> physical 0x203000 */
    mov dword ptr [0x400010], 0x1234
    mov eax, cr0
    and eax, 0x7fffffff
    mov cr0, eax
    mov eax, dword ptr [0x203010]
    sub eax, 0x1234
""" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode="bt")
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0, result
    assert vm.mode.paging.pager.active is None


def test_trap_mode_shadows_the_guest_tables_with_ring_compression(tmp_path):
    # Under trap the guest kernel runs natively at CPL 3 over the kernel view of its shadows:
    # its page-table stores trap and run once with the page lent (ended by a single-step trap),
    # hidden faults fill the shadow, true faults reach the guest's handler.
    report = sample_report(tmp_path, "paging", "--mode", "trap")
    shadow = report["counters"]["shadow_paging"]
    assert shadow["tracing_faults"] > 0 and shadow["page_table_writes"] > 0
    assert shadow["hidden_faults"] > 0 and shadow["true_faults"] > 0
    assert shadow["shadows_built"] >= 1


SHADOWED = [("bt", "shadow"), ("trap", "shadow"), ("vt", "shadow")]


@pytest.mark.parametrize("mode, paging", SHADOWED, ids=[m for m, _p in SHADOWED])
@pytest.mark.parametrize("edit", [
    "mov dword ptr [0x11000], 0x205003",            # a plain store: the monitor does it itself
    "xor dword ptr [0x11000], 0x006000",            # read-modify-write: run alone with the page lent
])
def test_a_traced_page_table_edit_takes_effect_at_invlpg(tmp_path, mode, paging, edit):
    # Linear 0x400000 maps frame 0x203000, then the PTE is edited to frame 0x205000 and the page
    # flushed: the next load reads the new frame. Both kinds of store into a traced table.
    source = PAGING_ON + """
    mov dword ptr [0x203000], 0x1111
    mov dword ptr [0x205000], 0x2222
    mov dword ptr [0x11000], 0x203003
    mov eax, dword ptr [0x400000]
    mov dword ptr [0x7000], eax
""" + f"    {edit}\n" + """
    invlpg [0x400000]
    mov eax, dword ptr [0x400000]
    mov dword ptr [0x7004], eax
    mov eax, 0
""" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode=mode, paging=paging)
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0, result.message
    assert vm.memory.read(0x7000, 8) == (0x1111).to_bytes(4, "little") + (0x2222).to_bytes(4, "little")
    counters = vm.mode.paging.pager.counters       # the table is traced once 0x400000 was used
    assert counters["tracing_faults"] == 1
    assert counters["stores_emulated"] == (1 if edit.startswith("mov") else 0)


@pytest.mark.parametrize("mode", ["bt", "trap"])
def test_the_shadow_pool_runs_out_and_recovers(tmp_path, mode):
    # 800 directory entries, each a 4 MiB page onto the same frame, one load from each: a shadow
    # table per entry (the pool holds 752 pages), so the pool runs out mid-way and the running
    # shadow gives its tables back; every load still reads the frame's value.
    source = PAGING_ON.replace("mov cr0, eax", """mov cr0, eax
    mov dword ptr [0x11000], 0x400003
    mov dword ptr [0x400010], 0x5a5a
    mov edi, 0x10000 + 16 * 4
    mov ecx, 800
fill_pdes:
    mov dword ptr [edi], 0x400083
    add edi, 4
    dec ecx
    jnz fill_pdes
    mov eax, cr3
    mov cr3, eax
    mov esi, 16 << 22
    mov ecx, 800
    xor ebx, ebx
touch:
    mov eax, dword ptr [esi + 0x10]
    add ebx, eax
    add esi, 1 << 22
    dec ecx
    jnz touch
    mov eax, ebx
    sub eax, 800 * 0x5a5a
""") + EXIT
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0, result.message
    assert vm.mode.paging.pager.counters["pool_exhausted"] >= 1


@pytest.mark.parametrize("mode", ["bt", "trap"])
def test_more_address_spaces_than_cached_shadows(tmp_path, mode):
    # Twenty page directories (the cache keeps 8 shadows, 16 under trap's two views): each maps
    # linear 0x400000 onto a frame of its own; two rounds of CR3 loads read each frame's value.
    lines = []
    for space in range(20):
        directory, table, frame = 0x20000 + space * 0x2000, 0x21000 + space * 0x2000, 0x300000 + space * 0x1000
        lines += [f"    mov dword ptr [{directory:#x}], 0x83",
                  f"    mov dword ptr [{directory + 4:#x}], {table | 3:#x}",
                  f"    mov dword ptr [{table:#x}], {frame | 3:#x}",
                  f"    mov dword ptr [{frame:#x}], {space + 1}"]
    lines += ["    xor ebx, ebx", "    mov edx, 2", "round:"]
    for space in range(20):
        lines += [f"    mov eax, {0x20000 + space * 0x2000:#x}", "    mov cr3, eax",
                  "    add ebx, dword ptr [0x400000]"]
    lines += ["    dec edx", "    jnz round", "    mov eax, ebx", f"    sub eax, {2 * sum(range(1, 21))}"]
    source = PAGING_ON + "\n".join(lines) + "\n" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0, result.message
    counters = vm.mode.paging.pager.counters
    assert counters["shadows_evicted"] >= 4 and counters["shadow_switches"] >= 40


@pytest.mark.parametrize("mode, paging", SHADOWED, ids=[m for m, _p in SHADOWED])
def test_a_page_table_cleared_while_unused_stops_being_traced(tmp_path, mode, paging):
    # Space B maps linear 0x400000 through the table at 0x21000 onto 0x300000; once B has run,
    # the table is traced. Back in space A the kernel clears that table one store at a time (as
    # an OS clears a freed page): after FLOOD_WRITES stores with no use of it, its shadows are
    # dropped and the other 1021 stores run at full speed. It then maps 0x301000 there and B,
    # entered again, reads the new frame: the table was traced anew when used.
    source = PAGING_ON + """
    mov dword ptr [0x300000], 7
    mov dword ptr [0x301000], 9
    mov dword ptr [0x20000], 0x83
    mov dword ptr [0x20004], 0x21003
    mov dword ptr [0x21000], 0x300003
    mov eax, 0x20000
    mov cr3, eax
    mov ebx, dword ptr [0x400000]
    mov eax, 0x10000
    mov cr3, eax
    mov edi, 0x21000
    xor eax, eax
clear:
    mov dword ptr [edi], eax
    add edi, 4
    cmp edi, 0x22000
    jne clear
    mov dword ptr [0x21000], 0x301003
    mov eax, 0x20000
    mov cr3, eax
    mov eax, dword ptr [0x400000]
    shl ebx, 8
    or eax, ebx
    sub eax, 0x709
""" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode=mode, paging=paging)
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0, result.message
    counters = vm.mode.paging.pager.counters
    assert counters["flooded_tables_unshadowed"] >= 1
    assert counters["tracing_faults"] < 20          # of the 1025 stores into the table


@pytest.mark.parametrize("mode, paging", [("bt", "shadow"), ("bt", "nested"), ("direct", None)],
                         ids=["bt-shadow", "bt-nested", "direct"])
def test_a_chained_call_into_a_remapped_code_page_runs_the_new_code(tmp_path, mode, paging):
    # Linear 0x400000 maps frame 0x203000 (`mov eax, 1; ret`); a loop calls it three times, so
    # under bt the call is chained across pages into its translation. Then the PTE points at
    # frame 0x205000 (`mov eax, 2; ret`) and invlpg flushes that page only: the same chained
    # call must now run the other frame's code (the link into the flushed page is broken),
    # while the unflushed kernel page's own links stay. EBX sums the results: 3 * 1 + 2 * 2.
    source = PAGING_ON + """
    mov dword ptr [0x203000], 0x000001b8     /* mov eax, 1 */
    mov dword ptr [0x203004], 0x0000c300     /* ret */
    mov dword ptr [0x205000], 0x000002b8     /* mov eax, 2 */
    mov dword ptr [0x205004], 0x0000c300
    mov dword ptr [0x11000], 0x203003
    mov esp, 0x90000
    xor ebx, ebx
    mov esi, 0
again:
    mov ecx, 3
    sub ecx, esi
calls:
    call 0x400000
    add ebx, eax
    dec ecx
    jnz calls
    test esi, esi
    jnz done
    mov dword ptr [0x11000], 0x205003
    invlpg [0x400000]
    inc esi
    jmp again
done:
    lea eax, [ebx - 7]
""" + EXIT
    result, _out, _vm = run_source(tmp_path, source, mode=mode, paging=paging)
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message


def _switching_calls(global_bit: int) -> str:
    """Two directories mapping linear 0x400000 onto the same frame (`mov eax, 1; ret`), through
    entries with `global_bit` (0x100: G, with CR4.PGE on); 50 rounds of a CR3 load and a call
    into that page, chained across pages under bt. Exits with EBX - 50 (0 when right)."""
    return f"""
    mov esp, 0x90000
    mov dword ptr [0x203000], 0x000001b8     /* mov eax, 1 */
    mov dword ptr [0x203004], 0x0000c300     /* ret */
    mov dword ptr [0x10000], {0x83 | global_bit:#x}     /* 0-4 MiB, both directories */
    mov dword ptr [0x12000], {0x83 | global_bit:#x}
    mov dword ptr [0x10004], 0x11003
    mov dword ptr [0x12004], 0x13003
    mov dword ptr [0x11000], {0x203003 | global_bit:#x}
    mov dword ptr [0x13000], {0x203003 | global_bit:#x}
    mov eax, cr4
    or eax, 0x90                              /* PSE, PGE */
    mov cr4, eax
""" + paging_on(0x10000, 0x80010000) + """
    xor ebx, ebx
    mov ecx, 50
    mov esi, 0x10000
switch:
    xor esi, 0x2000
    mov cr3, esi
    call 0x400000
    add ebx, eax
    dec ecx
    jnz switch
    lea eax, [ebx - 50]
""" + EXIT


@pytest.mark.parametrize("paging", ["shadow", "nested"])
def test_links_into_global_pages_survive_cr3_loads(tmp_path, paging):
    # The same code through global entries: one link across pages made once and kept over 50
    # CR3 loads; through ordinary entries each load breaks it and the next call makes it again.
    # (QEMU runs both guests to the value 0.)
    broken = {}
    for name, bit in (("global", 0x100), ("ordinary", 0)):
        result, _out, vm = run_source(tmp_path, _switching_calls(bit), mode="bt", paging=paging)
        assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
        broken[name] = vm.mode.cache.counters["links_broken"]
    assert broken["global"] < 5 and broken["ordinary"] >= 50, broken
