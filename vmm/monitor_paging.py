"""The monitor's own page tables, which the engine walks while the guest's paging is off: for
trap and vt with shadow paging, FlatTables (the guest-physical space one to one, the monitor's
range as unassigned memory); for bt, LongModeTables (IA-32e: the guest's 4 GiB, its 4-8 GiB
alias, and the monitor's region far above, whose PML4 entry every bt shadow root shares;
docs/isolation.md).

Why paging at all while the guest's own paging is off. bt: a store the engine refuses through
Unicorn's memory permissions is reported at the start of the engine's translation block, not
at the store; a page fault from a read-only PTE is precise (EIP at the store, CR2 the address).
Write-protecting guest code pages this way gives exact self-modifying-code detection. trap and
vt: unpaged, the engine's physical space would be the guest's, the monitor's areas at their
physical addresses in it (the shadow pool, trap's ring views: their bytes read, stores refused,
where QEMU reads 0 and drops stores).
"""

from __future__ import annotations

import struct
from typing import Callable

from vmm.engine import PROT_READ
from vmm.memory import UNASSIGNED_ALIAS
from vmm.monitor_layout import BOOT_GDT_OFFSET, DIRECTORY_OFFSET, DIRECTORY_SIZE, MONITOR_LINEAR, TABLES_OFFSET, TABLES_SIZE
from vmm.x86 import PAGE_SIZE, PTE_A, PTE_D, PTE_NX, PTE_P, PTE_PS, PTE_RW, PTE_US

# Accessed and dirty are preset: the tables are read-only to the engine, so the page walker
# must never need to update them.
PDE_FLAGS = PTE_P | PTE_RW | PTE_US | PTE_A
PTE_READ_ONLY = PTE_P | PTE_US | PTE_A | PTE_D
PTE_WRITABLE = PTE_READ_ONLY | PTE_RW
ENTRIES = 1024
LARGE_PAGE = 1 << 22


def large_page_entry(physical: int) -> int:
    """A user-writable 4 MiB PDE for `physical` (4 MiB aligned, below 1 TiB): PSE-36 puts
    physical address bits 32-39 in PDE bits 13-20, so a two-level table names the unassigned
    alias above 4 GiB too (QEMU's walker, and the engine's, implement it)."""
    return (physical & 0xFFC00000) | ((physical >> 32) << 13) | PDE_FLAGS | PTE_D | PTE_PS


class FlatTables:
    """The tables the engine walks while the guest's paging is off under shadow paging (trap,
    vt; built by vmm/shadow_paging.py, in its pool): every guest-physical address the guest
    names behaves as without paging, and the monitor's range is unassigned memory to the guest
    as on QEMU, though the monitor's areas lie in the engine's physical space there.

    4 MiB pages (the engine needs CR4.PSE): below the monitor's range one to one (RAM, the
    engine's holes); in it, each 4 MiB at the unassigned alias above 4 GiB
    (PhysicalMemory.engine_page), unless the engine itself must reach a page there by linear
    address: then 4 KiB entries, that page the monitor's (`kept`: {page: entry}, trap's ring
    views, supervisor-only and read-only; the boot GDT page one to one, MMIO that serves the
    table while the guest's GDTR names it and unassigned memory after), the holes one to one,
    and any other monitor page absent. The guest's access at a kept or absent page faults and
    is the monitor's to serve (`serves`): it is unassigned memory to the guest, reached for one
    instruction through an entry lent in its place (`lend`, `restore`)."""

    def __init__(self, memory, kept: dict[int, int], new_page: Callable[[], tuple[memoryview, int]]) -> None:
        """new_page() -> (view, physical address) of a zeroed page for a table."""
        self.directory, self.directory_address = new_page()
        self._tables: dict[int, memoryview] = {}          # directory index -> its table
        self._standing: dict[int, int] = {}               # page -> its entry when nothing is lent
        self._served: set[int] = set()                    # pages whose guest accesses the monitor serves
        monitor = memory.monitor
        boot_gdt = (monitor.base + BOOT_GDT_OFFSET) >> 12
        mapped = {page for base, size, _perms in memory.monitor_mappings()
                  for page in range(base >> 12, (base + size + PAGE_SIZE - 1) >> 12)}
        for index in range(ENTRIES):
            base = index * LARGE_PAGE
            pages = range(base >> 12, (base + LARGE_PAGE) >> 12)
            if base < monitor.base:
                entry = large_page_entry(base)
            elif not any(page in kept or page == boot_gdt for page in pages):
                entry = large_page_entry(UNASSIGNED_ALIAS + base)
            else:
                table, address = new_page()
                self._tables[index] = table
                entry = address | PDE_FLAGS
                for page in pages:
                    if page in kept:
                        self._standing[page] = kept[page]
                        self._served.add(page)
                    elif page == boot_gdt or page not in mapped:
                        self._standing[page] = (page << 12) | PTE_WRITABLE
                    else:
                        self._standing[page] = 0
                        self._served.add(page)
                    struct.pack_into("<I", table, (page & 0x3FF) * 4, self._standing[page])
            struct.pack_into("<I", self.directory, index * 4, entry)

    def serves(self, page: int) -> bool:
        """Whether a guest access at linear (= physical) `page` faults into the monitor."""
        return page in self._served

    def lend(self, page: int, entry: int) -> None:
        """Put `entry` in place of a served page's for one guest instruction."""
        struct.pack_into("<I", self._tables[page >> 10], (page & 0x3FF) * 4, entry)

    def restore(self, page: int) -> None:
        struct.pack_into("<I", self._tables[page >> 10], (page & 0x3FF) * 4, self._standing[page])


# -- long mode (binary translation, docs/isolation.md) ----------------------------------------------
# Translated code runs in the engine's long mode: IA-32e tables, 8-byte entries, four levels.
# Linear [0, 4 GiB) is the guest's (identity-mapped RAM here, a shadow when the guest's paging is
# on), [4, 8 GiB) an alias of it (an FS/GS base plus offset past 4 GiB wraps as in 32-bit code),
# and the monitor's region is far above, at MONITOR_LINEAR, where no 32-bit address reaches.
MONITOR_PML4_INDEX = (MONITOR_LINEAR >> 39) & 511
LONG_TABLE_FLAGS = PTE_P | PTE_RW | PTE_US | PTE_A
LONG_PAGE_FLAGS = PTE_P | PTE_A | PTE_D
GUEST_GIB = 4                             # page directories for [0, 4 GiB)
_LARGE_PAGE = 1 << 21


class LongModeTables:
    """The monitor's IA-32e tables: a PML4 whose entry 0 maps guest RAM one to one (2 MiB pages,
    split into 4 KiB ones where a page must be write-protected) and whose entry
    MONITOR_PML4_INDEX maps the monitor's areas at MONITOR_LINEAR with their permissions. Every
    guest page is no-execute: nothing below 4 GiB ever runs as host code, so guest code cannot
    run untranslated even by mistake. Shadow roots share the monitor's entry (monitor_entry)."""

    def __init__(self, memory) -> None:
        self.memory = memory
        self.root_address = memory.map_monitor_area(DIRECTORY_OFFSET, DIRECTORY_SIZE, PROT_READ)
        self.root = memory.monitor_view(DIRECTORY_OFFSET, DIRECTORY_SIZE)
        self.tables_address = memory.map_monitor_area(TABLES_OFFSET, TABLES_SIZE, PROT_READ)
        self.tables = memory.monitor_view(TABLES_OFFSET, TABLES_SIZE)
        self.tables[:] = bytes(TABLES_SIZE)
        self.root[:] = bytes(PAGE_SIZE)
        self._next = 0
        self._split: dict[int, int] = {}          # 2 MiB page number -> offset of its table
        guest_pdpt = self._new_page()
        self.guest_directories = [self._new_page() for _ in range(GUEST_GIB)]
        for gib in range(2 * GUEST_GIB):           # 4-8 GiB: the same directories (the wrap)
            self._entry(guest_pdpt, gib, self._address(self.guest_directories[gib % GUEST_GIB]) | LONG_TABLE_FLAGS)
        self.guest_pdpt_entry = self._address(guest_pdpt) | LONG_TABLE_FLAGS
        struct.pack_into("<Q", self.root, 0, self.guest_pdpt_entry)
        monitor_pdpt, self._monitor_directory = self._new_page(), self._new_page()
        self._entry(monitor_pdpt, 0, self._address(self._monitor_directory) | LONG_TABLE_FLAGS)
        self.monitor_entry = self._address(monitor_pdpt) | LONG_TABLE_FLAGS
        struct.pack_into("<Q", self.root, MONITOR_PML4_INDEX * 8, self.monitor_entry)
        ram = memory.ram
        for large in range(ram.base >> 21, (ram.end + _LARGE_PAGE - 1) >> 21):
            self._set_large(large, writable=True)
        # The rest of the guest's 4 GiB is unassigned memory (or a device), served by the MMIO
        # bus: the engine's holes where the guest names them, the monitor's range through its
        # alias above 4 GiB (PhysicalMemory.engine_page). The boot GDT shows through there while
        # the guest's GDTR names it (the firmware's table: QEMU's lives in its option ROM).
        for large in range((ram.end + _LARGE_PAGE - 1) >> 21, GUEST_GIB << 9):
            physical = memory.engine_page(large << 21, wide=True)
            directory, index = self.guest_directories[large >> 9], large & 511
            self._entry(directory, index, physical | LONG_PAGE_FLAGS | PTE_US | PTE_PS | PTE_NX | PTE_RW)

    def _new_page(self) -> int:
        offset = self._next
        if offset + PAGE_SIZE > len(self.tables):
            raise MemoryError("monitor page-table pool exhausted")
        self._next += PAGE_SIZE
        return offset

    def _address(self, offset: int) -> int:
        return self.tables_address + offset

    def _entry(self, table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self.tables, table + index * 8, value)

    def _set_large(self, large: int, writable: bool) -> None:
        directory, index = self.guest_directories[large >> 9], large & 511
        flags = LONG_PAGE_FLAGS | PTE_US | PTE_PS | PTE_NX | (PTE_RW if writable else 0)
        self._entry(directory, index, (large << 21) | flags)

    def map_monitor(self, offset: int, size: int, writable: bool, executable: bool, user: bool = True) -> int:
        """Map monitor-region bytes [offset, offset + size) at MONITOR_LINEAR + offset; returns
        that linear address. user=False: supervisor-only (translated guest ring 3 faults on it)."""
        flags = LONG_PAGE_FLAGS | (PTE_RW if writable else 0) | (0 if executable else PTE_NX) | (PTE_US if user else 0)
        physical = self.memory.monitor.base + offset
        for page in range(offset >> 12, (offset + size + PAGE_SIZE - 1) >> 12):
            table = self._monitor_table(page >> 9)
            self._entry(table, page & 511, (physical + ((page << 12) - offset)) | flags)
        return MONITOR_LINEAR + offset

    def _monitor_table(self, index: int) -> int:
        (entry,) = struct.unpack_from("<Q", self.tables, self._monitor_directory + index * 8)
        if entry & PTE_P:
            return (entry & 0x000FFFFFFFFFF000) - self.tables_address
        table = self._new_page()
        self._entry(self._monitor_directory, index, self._address(table) | LONG_TABLE_FLAGS)
        return table

    def _guest_table(self, page_address: int) -> int:
        """The table of 4 KiB entries for the 2 MiB of guest linear space around page_address,
        made the first time (from its 2 MiB page, or empty beyond RAM)."""
        large = page_address >> 21
        table = self._split.get(large)
        if table is None:
            table = self._split[large] = self._new_page()
            base = large << 21
            if self.memory.ram.contains(base, 1):
                for index in range(512):
                    self._entry(table, index, (base + (index << 12)) | LONG_PAGE_FLAGS | PTE_US | PTE_RW | PTE_NX)
            self._entry(self.guest_directories[large >> 9], large & 511, self._address(table) | LONG_TABLE_FLAGS)
        return table

    def _map_guest_page(self, physical: int, writable: bool) -> None:
        table = self._guest_table(physical)
        self._entry(table, (physical >> 12) & 511, physical | LONG_PAGE_FLAGS | PTE_US | PTE_NX | (PTE_RW if writable else 0))

    def set_writable(self, page_address: int, writable: bool) -> None:
        """Write-protect one 4 KiB page of guest RAM (or release it): its 2 MiB page is split
        into a table of 4 KiB entries the first time."""
        table = self._guest_table(page_address)
        at = table + ((page_address >> 12) & 511) * 8
        (entry,) = struct.unpack_from("<Q", self.tables, at)
        struct.pack_into("<Q", self.tables, at, (entry | PTE_RW) if writable else (entry & ~PTE_RW))
