"""The cost of a monitor exit (issue 15, "Speed on real workloads"): what each fast path of the
exit path saves is pinned here by counting the work it must not do, with real guests on real
engine runs; each guest's guest-visible result is QEMU's (recorded with qemu-system-i386, as
said at each test), and where a fast path stands beside a slow one, both give the same."""

import pytest

import cache.tcache
from tests.guests import EXIT, paging_on, run_source
from vmm.exits import ExitReason, StopReason

# Two page directories sharing one 4 MiB page of kernel (PSE): the guest switches between them.
TWO_DIRECTORIES = """
    mov dword ptr [0x10000], 0x83
    mov dword ptr [0x11000], 0x83
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
""" + paging_on(0x10000)


def test_a_cr3_switch_without_indirect_branches_leaves_the_lookup_table_alone(tmp_path, monkeypatch):
    # 400 CR3 loads in a loop with no indirect branch: no lookup-table entry is installed in
    # between, so no load rewrites the table's 512 KiB (each did: 20 us a switch). ECX counts
    # down to 0 and EAX ends on the first directory: the guest writes 0 to isa-debug-exit, as
    # under QEMU (qemu-system-i386 -kernel guest.elf: exit status 1, the value 0).
    rewrites = []
    empty = cache.tcache._empty_lookup_table
    monkeypatch.setattr(cache.tcache, "_empty_lookup_table", lambda: rewrites.append(1) or empty())
    source = TWO_DIRECTORIES + """
    mov ecx, 400
    mov eax, 0x10000
switch:
    xor eax, 0x1000
    mov cr3, eax
    dec ecx
    jnz switch
    sub eax, 0x10000
""" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert vm.exits[ExitReason.CALLOUT] >= 400
    assert len(rewrites) == 1, len(rewrites)          # the cache's first, empty table
