"""Guest-physical address space: guest RAM (pool frames through the P2M map), the MMIO bus and unassigned memory everywhere else, the monitor's reserved region, and linear-address walks."""

from __future__ import annotations

import struct
from bisect import bisect_right
from dataclasses import dataclass
from typing import Callable, Optional

from vmm.bus import PHYSICAL_SPACE, MmioBus
from vmm.engine import PROT_ALL, PROT_EXEC, PROT_READ, PROT_WRITE, Engine
from vmm.errors import ConfigError, UnsupportedGuestFeature
from vmm.frames import FramePool, PhysToMachine
from vmm.monitor_layout import (BOOT_GDT_OFFSET, BOOT_GDT_SIZE, MONITOR_BASE, MONITOR_SIZE, UNASSIGNED_PAGE_OFFSET,
                                UNTIL_PAGE_OFFSET, UNTIL_PAGE_SIZE)
from vmm.x86 import CR0_PG, CR0_WP, CR4_PAE, CR4_PGE, CR4_PSE, PAGE_SIZE, PTE_A, PTE_D, PTE_G, PTE_P, PTE_PS, PTE_RW, PTE_US

MIB = 1 << 20

# The monitor's region (its map: vmm/monitor_layout.py) sits at the top of the 32-bit physical space.
MAX_RAM_MIB = 3 * 1024          # RAM must end below the monitor region and the PCI hole
MIN_RAM_MIB = 2                 # room for the low Multiboot structures and a 1 MiB kernel


class PageFault(Exception):
    """A linear address the guest's page tables do not allow (becomes #PF with this error code)."""

    def __init__(self, error_code: int, linear: int) -> None:
        super().__init__(f"#PF({error_code:#x}) at {linear:#x}")
        self.error_code, self.linear = error_code, linear


class UnbackedAccess(Exception):
    """A physical address with no memory behind it, where the monitor cannot go on: code fetched
    from it, or any access under --unassigned stop (data accesses otherwise read as 0)."""

    def __init__(self, address: int, size: int, kind: str = "") -> None:
        super().__init__(f"{kind + ' of ' if kind else ''}no memory at physical {address:#x} (+{size})")
        self.address, self.size, self.kind = address, size, kind


# Where the engine sees guest-physical page P of the monitor's range (P >= MONITOR_BASE) when
# that range of the engine's physical space is the monitor's: engines whose page-table entries
# can name more than 4 GiB (bt's IA-32e shadows, the virtual TLB of nested paging) reach the
# unassigned memory there at UNASSIGNED_ALIAS + P (docs/isolation.md, "Unassigned memory").
UNASSIGNED_ALIAS = 1 << 32


@dataclass(frozen=True)
class Region:
    name: str
    base: int
    size: int

    @property
    def end(self) -> int:
        return self.base + self.size

    def contains(self, address: int, size: int) -> bool:
        return self.base <= address and address + size <= self.end

    def overlaps(self, address: int, size: int) -> bool:
        return address < self.end and self.base < address + size


class PhysicalMemory:
    """Guest RAM at physical 0 plus the monitor region, both backed by host memory that the
    monitor reads and writes directly (no engine call on the access path). RAM is frames of a
    FramePool (a private one sized for the machine unless one is given) through the machine's
    P2M map: each extent is mapped into the engine at its guest-physical base, and monitor
    accesses that cross extents are split."""

    def __init__(self, engine: Engine, ram_mib: int, pool: Optional[FramePool] = None) -> None:
        if not MIN_RAM_MIB <= ram_mib <= MAX_RAM_MIB:
            raise ConfigError(f"--mem must be between {MIN_RAM_MIB} and {MAX_RAM_MIB} MiB, got {ram_mib}")
        self.ram = Region("guest RAM", 0, ram_mib * MIB)
        self.monitor = Region("monitor", MONITOR_BASE, MONITOR_SIZE)
        self._engine = engine
        self.pool = FramePool.for_bytes(self.ram.size) if pool is None else pool
        self.p2m = PhysToMachine.from_allocation(self.ram.base // PAGE_SIZE, self.pool.allocate(self.ram.size // PAGE_SIZE))
        self._map_ram()
        self._monitor = engine.host_buffer(self.monitor.size)
        self.write_observers: list = []     # called as observer(address, size) after monitor writes
        self._monitor_mappings: list[tuple[int, int, int]] = []
        # Everything that is neither RAM nor a device is QEMU's unassigned memory: the bus serves
        # the guest's accesses there, the engine's (serve_unassigned) and the monitor's own alike.
        self.mmio = MmioBus()
        self.mmio.reserve(self.ram.base, self.ram.size, "guest RAM")
        self._holes: list[tuple[int, int]] = []     # engine MMIO regions at their guest-physical base
        self._shared_frame = 0                      # the guest page last given the shared page
        self._released = False                      # release(): no memory left, every access fails
        # Whether guest-physical reads of the boot GDT page see the boot GDT (the firmware's
        # table, which the guest's GDTR may still name) rather than unassigned memory.
        self.boot_gdt_visible = lambda: True
        # The boot GDT is served through the bus in every mode (_bus_read): the CPU's descriptor
        # loads see the table while the guest's GDTR names it; once the guest has its own, the
        # page is unassigned memory as on QEMU (whose boot GDT lives in its option ROM), and a
        # guest store there is dropped, never a fault.
        gdt = self.monitor.base + BOOT_GDT_OFFSET
        engine.map_mmio(gdt, BOOT_GDT_SIZE, lambda offset, size: self._bus_read(gdt + offset, size),
                        lambda offset, size, value: self._bus_write(gdt + offset, size, value))
        self._monitor_mappings.append((gdt, BOOT_GDT_SIZE, PROT_READ | PROT_WRITE))
        self.map_monitor_area(UNTIL_PAGE_OFFSET, UNTIL_PAGE_SIZE, PROT_READ | PROT_EXEC)

    def _map_ram(self) -> None:
        """Map every P2M extent into the engine and keep a host view of each for the monitor."""
        self._ram_pieces: list[tuple[int, int, memoryview]] = []     # (guest base, guest end, host view)
        mapped = []
        try:
            for guest_pfn, frame, pages in self.p2m.extents:
                base, size = guest_pfn * PAGE_SIZE, pages * PAGE_SIZE
                self._engine.map_host(base, size, PROT_ALL, self.pool.host_address(frame), self.pool)
                mapped.append((base, size))
                self._ram_pieces.append((base, base + size, self.pool.view(frame, pages)))
        except BaseException:
            for base, size in mapped:
                self._engine.unmap(base, size)
            self.pool.release(self.p2m.machine_extents())
            raise
        self._ram_starts = [base for base, _end, _view in self._ram_pieces]
        # The fast path: one extent is one host buffer at guest-physical 0, as before the P2M.
        self._ram = self._ram_pieces[0][2] if len(self._ram_pieces) == 1 and self.ram.base == 0 else None

    def release(self) -> None:
        """Give the RAM's frames back to the pool: unmapped from the engine first, so the guest
        (and the monitor, whose RAM accesses then fail) can no longer reach them. The machine must
        not run again. Idempotent."""
        if not self._ram_pieces:
            return
        for base, end, _view in self._ram_pieces:
            self._engine.unmap(base, end - base)
        self._ram_pieces, self._ram_starts, self._ram = [], [], None
        self.ram = Region("guest RAM", 0, 0)
        self._released = True
        self.pool.release(self.p2m.machine_extents())

    def map_monitor_area(self, offset: int, size: int, perms: int) -> int:
        """Make part of the monitor region visible to the engine with `perms`; returns its address."""
        self._carve(self.monitor.base + offset, size)
        self._engine.map_buffer(self.monitor.base + offset, self._monitor, offset, size, perms)
        self._monitor_mappings.append((self.monitor.base + offset, size, perms))
        return self.monitor.base + offset

    # -- the engine's view of what is not RAM ------------------------------------------------------
    def serve_unassigned(self, identity: bool, guest_gdt_base: Callable[[], int]) -> None:
        """Map every part of the engine's 4 GiB physical space that holds neither RAM nor a
        monitor area as MMIO served by the bus, so that a guest access there reads 0 and drops
        its store as on QEMU, with no Python call on any RAM access; and the alias of the
        monitor's range above 4 GiB (engine_page). Called once the mode mapped its areas (later
        areas are carved out of the holes).

        identity: the engine walks the guest's own tables (direct, vt with nested paging), so
        guest-physical is engine-physical and the monitor's pages there are guest addresses:
        the until page is given back to the guest (nothing reads it: the engine's exits are
        enabled). guest_gdt_base() -> the guest's GDTR base: the boot GDT page shows the boot
        GDT while it names it, and is unassigned memory once the guest loaded its own
        (docs/isolation.md)."""
        engine = self._engine
        boot_gdt = self.monitor.base + BOOT_GDT_OFFSET
        self.boot_gdt_visible = lambda: guest_gdt_base() == boot_gdt
        if identity:
            until = self.monitor.base + UNTIL_PAGE_OFFSET
            engine.unmap(until, UNTIL_PAGE_SIZE)
            self._monitor_mappings = [m for m in self._monitor_mappings if m[0] != until]
        taken = sorted([(self.ram.base, self.ram.end)] + [(base, base + size) for base, size, _p in self._monitor_mappings])
        cursor = 0
        for start, end in taken + [(PHYSICAL_SPACE, PHYSICAL_SPACE)]:
            if start > cursor:
                self._map_hole(cursor, start - cursor)
            cursor = max(cursor, end)
        alias = UNASSIGNED_ALIAS + self.monitor.base
        # The engine's own accesses there are the guest's data accesses (its descriptor loads go
        # to the monitor's tables): the boot GDT never shows through.
        bus = self.mmio
        engine.map_mmio(alias, self.monitor.size, lambda offset, size: bus.read(self.monitor.base + offset, size),
                        lambda offset, size, value: bus.write(self.monitor.base + offset, size, value))
        if not identity:
            # The one page 32-bit shadow tables point at for guest pages the monitor's own areas
            # shadow (they cannot name the alias above 4 GiB): offsets only, the page is the one
            # last filled.
            self._carve(self.monitor.base + UNASSIGNED_PAGE_OFFSET, PAGE_SIZE)
            engine.map_mmio(self.monitor.base + UNASSIGNED_PAGE_OFFSET, PAGE_SIZE,
                            lambda offset, size: bus.read(self._shared_frame + offset, size),
                            lambda offset, size, value: bus.write(self._shared_frame + offset, size, value))

    def _map_hole(self, base: int, size: int) -> None:
        bus = self.mmio
        self._engine.map_mmio(base, size, lambda offset, width: bus.read(base + offset, width),
                              lambda offset, width, value: bus.write(base + offset, width, value))
        self._holes.append((base, size))

    def _carve(self, base: int, size: int) -> None:
        """Take [base, base + size) out of the holes (a monitor area mapped there now)."""
        for hole_base, hole_size in [h for h in self._holes if h[0] < base + size and base < h[0] + h[1]]:
            self._engine.unmap(hole_base, hole_size)
            self._holes.remove((hole_base, hole_size))
            if hole_base < base:
                self._map_hole(hole_base, base - hole_base)
            if base + size < hole_base + hole_size:
                self._map_hole(base + size, hole_base + hole_size - base - size)

    def engine_page(self, physical: int, wide: bool) -> int:
        """The engine-physical page that serves guest-physical page `physical` for a shadow or
        nested entry: RAM and the holes where the guest names them, the monitor's range at its
        alias above 4 GiB when the entry can name it (`wide`), else (a guest page behind one of
        the monitor's own areas, or past 4 GiB) the shared unassigned page."""
        page = physical & ~0xFFF
        if self.ram.contains(page, PAGE_SIZE) or page < self.monitor.base:
            return page
        if page < PHYSICAL_SPACE:
            if wide:
                return UNASSIGNED_ALIAS + page
            if any(base <= page < base + size for base, size in self._holes):
                return page
        self._shared_frame = page
        return self.monitor.base + UNASSIGNED_PAGE_OFFSET

    def monitor_mappings(self) -> list[tuple[int, int, int]]:
        """(address, size, perms) of every monitor area mapped so far."""
        return list(self._monitor_mappings)

    def monitor_view(self, offset: int, size: int) -> memoryview:
        """The monitor's own read/write window on part of its region (no engine call, no checks)."""
        return self._monitor[offset:offset + size]

    @property
    def until_address(self) -> int:
        """An address the guest never executes, for the engine's `until` (see engine pitfalls)."""
        return self.monitor.base + UNTIL_PAGE_OFFSET + PAGE_SIZE - 16

    @property
    def ram_size(self) -> int:
        return self.ram.size

    def _buffer(self, address: int, size: int):
        """(host buffer, offset) holding [address, address + size), or (None, 0) when no one
        buffer does: outside memory, or RAM across two P2M extents (see _ram_parts)."""
        if self.ram.contains(address, size):
            if self._ram is not None:
                return self._ram, address
            index = bisect_right(self._ram_starts, address) - 1
            if index >= 0:
                base, end, view = self._ram_pieces[index]
                if address + size <= end:
                    return view, address - base
            return None, 0
        return None, 0

    def _ram_parts(self, address: int, size: int):
        """(view, offset, length) per extent for a RAM range that crosses extents, in order."""
        index = bisect_right(self._ram_starts, address) - 1
        while size:
            base, end, view = self._ram_pieces[index]
            length = min(size, end - address)
            yield view, address - base, length
            address, size, index = address + length, size - length, index + 1

    def read(self, address: int, size: int) -> bytes:
        """Guest-physical bytes as the guest's CPU would read them: RAM, devices, and 0 from
        unassigned memory (the monitor's region is unassigned to the guest; only the boot GDT
        shows through while boot_gdt_visible())."""
        ram = self._ram
        if ram is not None and 0 <= address and address + size <= self.ram.size:    # (most reads)
            return bytes(ram[address:address + size])
        buffer, offset = self._buffer(address, size)
        if buffer is None:
            if size > 0 and self.ram.contains(address, size):
                return b"".join(bytes(view[start:start + length])
                                for view, start, length in self._ram_parts(address, size))
            return self._read_outside(address, size)
        return bytes(buffer[offset:offset + size])

    def _pieces(self, address: int, size: int):
        """(address, length, in RAM) runs covering [address, address + size)."""
        ram = self.ram
        while size > 0:
            if ram.contains(address, 1):
                length = min(size, ram.end - address)
                yield address, length, True
            else:
                length = size if address >= ram.end else min(size, ram.base - address)
                yield address, length, False
            address, size = address + length, size - length

    def _read_outside(self, address: int, size: int) -> bytes:
        if self._released:
            raise UnbackedAccess(address, size)
        out = bytearray()
        for start, length, in_ram in self._pieces(address, size):
            if in_ram:
                out += self.read(start, length)
                continue
            while length:
                chunk = 4 if length >= 4 and not start & 3 else 1
                out += self._bus_read(start, chunk).to_bytes(chunk, "little")
                start, length = start + chunk, length - chunk
        return bytes(out)

    def _write_outside(self, address: int, data: bytes) -> None:
        if self._released:
            raise UnbackedAccess(address, len(data))
        done = 0
        for start, length, in_ram in self._pieces(address, len(data)):
            if in_ram:
                self.write(start, data[done:done + length])
            else:
                at = 0
                while at < length:
                    chunk = 4 if length - at >= 4 and not (start + at) & 3 else 1
                    self._bus_write(start + at, chunk, int.from_bytes(data[done + at:done + at + chunk], "little"))
                    at += chunk
            done += length

    def _boot_gdt(self, address: int, size: int) -> bool:
        base = self.monitor.base + BOOT_GDT_OFFSET
        return base <= address and address + size <= base + BOOT_GDT_SIZE and self.boot_gdt_visible()

    def _bus_read(self, address: int, size: int) -> int:
        """A guest-physical read outside RAM, through the MMIO bus (0 where nothing answers)."""
        if self._boot_gdt(address, size):
            offset = address - self.monitor.base
            return int.from_bytes(self._monitor[offset:offset + size], "little")
        return self.mmio.read(address, size)

    def _bus_write(self, address: int, size: int, value: int) -> None:
        self.mmio.write(address, size, value)

    def read_code(self, address: int, size: int) -> bytes:
        """Up to `size` bytes of guest RAM at physical `address` for a decoder: fewer at the end
        of RAM, none outside it (translator.decoder.Decoder's read_code)."""
        ram = self.ram
        if not ram.contains(address, 1):
            return b""
        return self.read(address, min(size, ram.end - address))

    def write(self, address: int, data: bytes) -> None:
        """A store by the monitor on the guest's behalf (loader, exception frames, emulation).
        Observers (the translation cache) see it, since it bypasses the engine's protections.
        Outside RAM it goes to the MMIO bus (unassigned memory drops it)."""
        buffer, offset = self._buffer(address, len(data))
        if buffer is None:
            if not (data and self.ram.contains(address, len(data))):
                if data:
                    self._write_outside(address, data)
                return
            done = 0
            for view, start, length in self._ram_parts(address, len(data)):
                view[start:start + length] = data[done:done + length]
                done += length
        else:
            buffer[offset:offset + len(data)] = data
        self.written(address, len(data))

    def host_ranges(self, address: int, size: int):
        """(host address, length) of guest RAM [address, address + size), one per P2M run (each
        inside one engine mapping), through the physical-to-machine map; nothing outside RAM."""
        if size <= 0 or not self.ram.contains(address, size):
            return
        offset = address % PAGE_SIZE
        for _pfn, frame, pages in self.p2m.runs(address // PAGE_SIZE, (offset + size + PAGE_SIZE - 1) // PAGE_SIZE):
            length = min(size, pages * PAGE_SIZE - offset)
            yield self.pool.host_address(frame) + offset, length
            offset, size = 0, size - length

    def written(self, address: int, size: int) -> None:
        """Guest RAM at [address, address + size) changed behind the engine's back (a monitor
        store, a device's DMA): the observers (translated code, traced page tables) see it."""
        for observer in self.write_observers:
            observer(address, size)

    def read_u32(self, address: int) -> int:
        return struct.unpack("<I", self.read(address, 4))[0]

    def read_table_entry(self, address: int) -> int:
        """A page-table entry the guest's tables point at: outside guest RAM nothing answers and
        the entry reads as 0 (not present), as unassigned memory reads on the reference
        machine. The monitor's region is never walked on the guest's behalf."""
        if self._ram is not None and 0 <= address and address + 4 <= self.ram.size:    # (every walk)
            return _U32.unpack_from(self._ram, address)[0]
        if not self.ram.contains(address, 4):
            return 0
        return self.read_u32(address)

    def fill(self, address: int, size: int, byte: int = 0) -> None:
        self.write(address, bytes([byte]) * size)

    def monitor_write(self, offset: int, data: bytes) -> int:
        """Store monitor-owned bytes at `offset` in the monitor region; returns the physical address."""
        self._monitor[offset:offset + len(data)] = data
        return self.monitor.base + offset


_U32 = struct.Struct("<I")
PDE_4M_RESERVED = 1 << 21               # a 4 MiB PDE's reserved bit (bits 20-13: address bits 39-32)
PF_PROTECTION, PF_WRITE, PF_USER, PF_RESERVED = 1, 2, 4, 8      # #PF error code bits


def mapped_global(memory: PhysicalMemory, cr3: int, cr4: int, linear: int) -> bool:
    """Whether the guest's tables map `linear` through a global entry while CR4.PGE is set: a CR3
    load leaves such a TLB entry (the monitor's look: no accessed bit is set)."""
    if not cr4 & CR4_PGE or cr4 & CR4_PAE:
        return False
    pde = memory.read_table_entry((cr3 & 0xFFFFF000) + ((linear >> 22) << 2))
    if not pde & PTE_P:
        return False
    if pde & PTE_PS and cr4 & CR4_PSE:
        return bool(pde & PTE_G)
    pte = memory.read_table_entry((pde & 0xFFFFF000) + (((linear >> 12) & 0x3FF) << 2))
    return bool(pte & PTE_P and pte & PTE_G)


def linear_to_physical(memory: PhysicalMemory, cr0: int, cr3: int, linear: int, write: bool, *,
                       cr4: int = 0, user: bool = False, mark: bool = False) -> int:
    """Walk the guest's two-level (non-PAE) page tables for one access, as QEMU's MMU does (the
    reference machine): 4 KiB pages, and 4 MiB pages only while CR4.PSE is set; R/W and U/S
    combined from both levels; a supervisor write to a read-only page faults only with CR0.WP.
    Raises PageFault with the error code the CPU reports (P, W/R, U/S, RSVD).

    mark: the access is one the CPU makes for the guest, so the walk sets the accessed bit in
    the entries it uses and the dirty bit of the page written, as QEMU does: the PDE of a page
    table as soon as it is found present (even when the PTE then faults), the PTE or 4 MiB PDE
    only once the access is allowed. False for the monitor's own look at guest memory."""
    linear &= 0xFFFFFFFF
    if not cr0 & CR0_PG:
        return linear
    if cr4 & CR4_PAE:
        raise UnsupportedGuestFeature("PAE paging (CR4.PAE): the monitor walks two-level 32-bit page tables only")
    error = (PF_WRITE if write else 0) | (PF_USER if user else 0)
    pde_address = (cr3 & 0xFFFFF000) + ((linear >> 22) << 2)
    pde = memory.read_table_entry(pde_address)
    if not pde & PTE_P:
        raise PageFault(error, linear)
    if pde & PTE_PS and cr4 & CR4_PSE:      # a 4 MiB page
        if pde & PDE_4M_RESERVED:
            raise PageFault(error | PF_RESERVED | PF_PROTECTION, linear)
        entry, entry_address, rights = pde, pde_address, pde
        frame = ((pde & 0x1FE000) << 19) | (pde & 0xFFC00000) | (linear & 0x3FFFFF)
    else:
        if mark and not pde & PTE_A:
            _store_entry(memory, pde_address, pde | PTE_A)
        pte_address = (pde & 0xFFFFF000) + (((linear >> 12) & 0x3FF) << 2)
        pte = memory.read_table_entry(pte_address)
        if not pte & PTE_P:
            raise PageFault(error, linear)
        entry, entry_address, rights = pte, pte_address, pde & pte
        frame = (pte & 0xFFFFF000) | (linear & 0xFFF)
    if user and not rights & PTE_US:
        raise PageFault(error | PF_PROTECTION, linear)
    if write and not rights & PTE_RW and (user or cr0 & CR0_WP):
        raise PageFault(error | PF_PROTECTION, linear)
    if mark:
        marked = entry | PTE_A | (PTE_D if write else 0)
        if marked != entry:
            _store_entry(memory, entry_address, marked)
    return frame


def _store_entry(memory: PhysicalMemory, address: int, value: int) -> None:
    memory.write(address, struct.pack("<I", value))
