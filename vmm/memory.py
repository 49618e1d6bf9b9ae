"""Guest-physical address space: guest RAM, the monitor's reserved region, and linear-address walks."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmm.engine import PROT_EXEC, PROT_READ, Engine
from vmm.errors import ConfigError
from vmm.x86 import CR0_PG

MIB = 1 << 20
PAGE_SIZE = 4096

# The monitor keeps its own structures (boot descriptor table, translation cache, lookup table,
# virtual-CPU block) at the top of the 32-bit physical space, above any guest RAM, as VMware and
# Xen reserve the top of the address space for themselves. Parts are mapped into the engine
# only when used, each with its own permissions (map_monitor_area); the rest is a hole.
MONITOR_BASE = 0xFF000000
MONITOR_SIZE = 16 * MIB
BOOT_AREA_SIZE = 0x1000                 # boot GDT, mapped read/execute
UNTIL_PAGE_OFFSET = MONITOR_SIZE - PAGE_SIZE
MAX_RAM_MIB = 3 * 1024          # RAM must end below the monitor region and the PCI hole
MIN_RAM_MIB = 2                 # room for the low Multiboot structures and a 1 MiB kernel


class PageFault(Exception):
    """A linear address the guest's page tables do not allow (becomes #PF with this error code)."""

    def __init__(self, error_code: int, linear: int) -> None:
        super().__init__(f"#PF({error_code:#x}) at {linear:#x}")
        self.error_code, self.linear = error_code, linear


class UnbackedAccess(Exception):
    """A physical address with no memory behind it."""

    def __init__(self, address: int, size: int) -> None:
        super().__init__(f"no memory at physical {address:#x} (+{size})")
        self.address, self.size = address, size


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
    """Guest RAM at physical 0 plus the monitor region, both backed by host buffers that the
    monitor reads and writes directly (no engine call on the access path)."""

    def __init__(self, engine: Engine, ram_mib: int) -> None:
        if not MIN_RAM_MIB <= ram_mib <= MAX_RAM_MIB:
            raise ConfigError(f"--mem must be between {MIN_RAM_MIB} and {MAX_RAM_MIB} MiB, got {ram_mib}")
        self.ram = Region("guest RAM", 0, ram_mib * MIB)
        self.monitor = Region("monitor", MONITOR_BASE, MONITOR_SIZE)
        self._engine = engine
        self._ram = engine.map_memory(self.ram.base, self.ram.size)
        self._monitor = engine.host_buffer(self.monitor.size)
        self.write_observers: list = []     # called as observer(address, size) after monitor writes
        self._monitor_mappings: list[tuple[int, int, int]] = []
        # Readable so the CPU can load descriptors from it; guest stores into it fault.
        self.map_monitor_area(0, BOOT_AREA_SIZE, PROT_READ | PROT_EXEC)
        self.map_monitor_area(UNTIL_PAGE_OFFSET, PAGE_SIZE, PROT_READ | PROT_EXEC)

    def map_monitor_area(self, offset: int, size: int, perms: int) -> int:
        """Make part of the monitor region visible to the engine with `perms`; returns its address."""
        self._engine.map_buffer(self.monitor.base + offset, self._monitor, offset, size, perms)
        self._monitor_mappings.append((self.monitor.base + offset, size, perms))
        return self.monitor.base + offset

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
        if self.ram.contains(address, size):
            return self._ram, address
        if self.monitor.contains(address, size):
            return self._monitor, address - self.monitor.base
        return None, 0

    def read(self, address: int, size: int) -> bytes:
        buffer, offset = self._buffer(address, size)
        if buffer is None:
            raise UnbackedAccess(address, size)
        return bytes(buffer[offset:offset + size])

    def write(self, address: int, data: bytes) -> None:
        """A store by the monitor on the guest's behalf (loader, exception frames, emulation).
        Observers (the translation cache) see it, since it bypasses the engine's protections."""
        buffer, offset = self._buffer(address, len(data))
        if buffer is None:
            raise UnbackedAccess(address, len(data))
        buffer[offset:offset + len(data)] = data
        for observer in self.write_observers:
            observer(address, len(data))

    def read_u32(self, address: int) -> int:
        return struct.unpack("<I", self.read(address, 4))[0]

    def fill(self, address: int, size: int, byte: int = 0) -> None:
        self.write(address, bytes([byte]) * size)

    def monitor_write(self, offset: int, data: bytes) -> int:
        """Store monitor-owned bytes at `offset` in the monitor region; returns the physical address."""
        self._monitor[offset:offset + len(data)] = data
        return self.monitor.base + offset


def linear_to_physical(memory: PhysicalMemory, cr0: int, cr3: int, linear: int, write: bool) -> int:
    """Walk the guest's two-level (non-PAE) page tables as a ring-0 access would.
    Raises PageFault for a not-present entry or a write to a read-only page with WP."""
    linear &= 0xFFFFFFFF
    if not cr0 & CR0_PG:
        return linear
    pde = memory.read_u32((cr3 & 0xFFFFF000) + ((linear >> 22) << 2))
    error = 2 if write else 0
    if not pde & 1:
        raise PageFault(error, linear)
    if pde & 0x80:   # 4 MiB page (PSE)
        frame, writable = (pde & 0xFFC00000) | (linear & 0x3FFFFF), pde & 2
    else:
        pte = memory.read_u32((pde & 0xFFFFF000) + (((linear >> 12) & 0x3FF) << 2))
        if not pte & 1:
            raise PageFault(error, linear)
        frame, writable = (pte & 0xFFFFF000) | (linear & 0xFFF), pde & pte & 2
    if write and not writable and cr0 & (1 << 16):
        raise PageFault(error | 1, linear)
    return frame
