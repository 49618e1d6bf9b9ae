"""The monitor's own page tables, which the engine walks while the guest's paging is off: an
identity map of guest RAM with per-page write protection, two-level for trap and vt
(MonitorPageTables; trap's `build_flat` keeps the monitor's areas from its deprivileged kernel)
and IA-32e for bt (LongModeTables: the guest's 4 GiB, its 4-8 GiB alias, and the monitor's
region far above, whose PML4 entry every bt shadow root shares; docs/isolation.md).

Why paging at all while the guest's own paging is off: a store the engine refuses through
Unicorn's memory permissions is reported at the start of the engine's translation block, not
at the store; a page fault from a read-only PTE is precise (EIP at the store, CR2 the address).
Write-protecting guest code pages this way gives exact self-modifying-code detection.
"""

from __future__ import annotations

import array
import struct
import sys

from vmm.engine import PROT_READ, PROT_WRITE
from vmm.monitor_layout import DIRECTORY_OFFSET, DIRECTORY_SIZE, MONITOR_LINEAR, TABLES_OFFSET, TABLES_SIZE
from vmm.x86 import PAGE_SIZE, PTE_A, PTE_D, PTE_NX, PTE_P, PTE_PS, PTE_RW, PTE_US

# Accessed and dirty are preset: the tables are read-only to the engine, so the page walker
# must never need to update them.
PDE_FLAGS = PTE_P | PTE_RW | PTE_US | PTE_A
PTE_READ_ONLY = PTE_P | PTE_US | PTE_A | PTE_D
PTE_WRITABLE = PTE_READ_ONLY | PTE_RW
ENTRIES = 1024


class MonitorPageTables:
    """`directory_view`/`tables_view` are the monitor's windows on the page directory (4 KiB) and
    a pool of page tables; `*_address` are where the engine sees them."""

    def __init__(self, directory_view: memoryview, directory_address: int,
                 tables_view: memoryview, tables_address: int) -> None:
        self.directory = directory_view
        self.directory_address = directory_address
        self.tables = tables_view
        self.tables_address = tables_address
        self._next_table = 0
        self.directory[:PAGE_SIZE] = bytes(PAGE_SIZE)

    def _table_for(self, address: int) -> int:
        """Offset in the pool of the page table covering `address`, created on first use."""
        index = address >> 22
        (pde,) = struct.unpack_from("<I", self.directory, index * 4)
        if pde & PTE_P:
            return (pde & ~0xFFF) - self.tables_address
        offset = self._next_table
        if offset + PAGE_SIZE > len(self.tables):
            raise MemoryError("monitor page-table pool exhausted")
        self._next_table += PAGE_SIZE
        self.tables[offset:offset + PAGE_SIZE] = bytes(PAGE_SIZE)
        struct.pack_into("<I", self.directory, index * 4, (self.tables_address + offset) | PDE_FLAGS)
        return offset

    def map_identity(self, base: int, size: int, writable: bool, user: bool = True) -> None:
        """user=False: supervisor-only, a fault for translated guest ring-3 code (real CPL 3)."""
        flags = PTE_WRITABLE if writable else PTE_READ_ONLY
        if not user:
            flags &= ~PTE_US
        page, end = base, base + size
        while page < end:               # one page table's run of entries at a time
            table = self._table_for(page)
            first = (page >> 12) & 0x3FF
            count = min(ENTRIES - first, (end - page + PAGE_SIZE - 1) // PAGE_SIZE)
            entries = array.array("I", range(page | flags, (page + count * PAGE_SIZE) | flags, PAGE_SIZE))
            if sys.byteorder != "little":
                entries.byteswap()
            self.tables[table + first * 4:table + (first + count) * 4] = entries.tobytes()
            page += count * PAGE_SIZE

    @classmethod
    def build(cls, memory) -> "MonitorPageTables":
        """Map the directory and table areas (read-only to the engine) and identity-map guest RAM
        and every monitor area mapped so far, with their permissions."""
        directory_address = memory.map_monitor_area(DIRECTORY_OFFSET, DIRECTORY_SIZE, PROT_READ)
        tables_address = memory.map_monitor_area(TABLES_OFFSET, TABLES_SIZE, PROT_READ)
        tables = cls(memory.monitor_view(DIRECTORY_OFFSET, DIRECTORY_SIZE), directory_address,
                     memory.monitor_view(TABLES_OFFSET, TABLES_SIZE), tables_address)
        tables.map_identity(memory.ram.base, memory.ram.size, writable=True)
        # The monitor's areas are supervisor-only (the tables themselves are read by the page
        # walker through physical addresses only, and are left out). The boot GDT is the
        # firmware's, readable as at its guest-physical address in every mode.
        for base, size, perms in memory.monitor_mappings():
            if base in (directory_address, tables_address):
                continue
            boot = base == memory.monitor.base
            tables.map_identity(base, size, writable=bool(perms & PROT_WRITE), user=boot)
        return tables

    @classmethod
    def build_flat(cls, memory) -> "MonitorPageTables":
        """trap's tables for while the guest's paging is off: all 4 GiB one to one and user
        accessible (4 MiB pages where no monitor area is), so guest RAM and every address the
        engine itself answers for behave as without paging; but the monitor's areas mapped so
        far are supervisor-only and read-only, so that the deprivileged kernel at CPL 3 faults
        on them (the CPU's descriptor loads, supervisor accesses, still read trap's ring views;
        the page walker reads tables by physical address). The boot GDT stays user-readable,
        the firmware's as in every mode. Needs CR4.PSE in the engine."""
        directory_address = memory.map_monitor_area(DIRECTORY_OFFSET, DIRECTORY_SIZE, PROT_READ)
        tables_address = memory.map_monitor_area(TABLES_OFFSET, TABLES_SIZE, PROT_READ)
        tables = cls(memory.monitor_view(DIRECTORY_OFFSET, DIRECTORY_SIZE), directory_address,
                     memory.monitor_view(TABLES_OFFSET, TABLES_SIZE), tables_address)
        areas = memory.monitor_mappings()
        split = {index for base, size, _perms in areas for index in range(base >> 22, ((base + size - 1) >> 22) + 1)}
        for index in range(ENTRIES):
            if index in split:
                tables.map_identity(index << 22, 1 << 22, writable=True)
            else:
                struct.pack_into("<I", tables.directory, index * 4, (index << 22) | PDE_FLAGS | PTE_D | PTE_PS)
        for base, size, _perms in areas:
            tables.map_identity(base, size, writable=False, user=base == memory.monitor.base)
        return tables

    def set_writable(self, page_address: int, writable: bool) -> None:
        table = self._table_for(page_address)
        at = table + ((page_address >> 12) & 0x3FF) * 4
        (pte,) = struct.unpack_from("<I", self.tables, at)
        struct.pack_into("<I", self.tables, at, (pte | PTE_RW) if writable else (pte & ~PTE_RW))


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
