"""The I/O buses: ports and guest-physical memory-mapped I/O, where devices claim non-overlapping ranges and see offsets, not absolute addresses."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Optional, Protocol

from vmm.errors import BusError

PORT_SPACE = 0x10000
_ALL_ONES = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}


class PortDevice(Protocol):
    """The two-method interface every port-mapped device implements. A device may set
    `access_width` (bytes) to the widest access its registers take; wider guest accesses are
    split into consecutive byte accesses, as QEMU splits them for byte-wide devices."""

    name: str

    def io_read(self, offset: int, size: int) -> int: ...

    def io_write(self, offset: int, size: int, value: int) -> None: ...


@dataclass(frozen=True)
class PortRange:
    base: int
    length: int
    device: PortDevice

    @property
    def end(self) -> int:
        return self.base + self.length


class PortBus:
    """Routes guest port accesses to devices. Unassigned ports read as all ones and drop writes,
    like an ISA bus with nothing answering; `on_unassigned` may log them."""

    def __init__(self, on_unassigned: Optional[Callable[[str, int, int, int], None]] = None) -> None:
        self._ranges: list[PortRange] = []
        self._registered: dict[int, PortRange] = {}     # the fixed claims, by port
        self._overlays: dict[object, PortRange] = {}    # movable claims (PCI BARs), by device
        self._by_port: dict[int, PortRange] = {}        # what answers each port: an overlay first
        self._names: set[str] = set()                   # every device ever on the bus (counters)
        self.on_unassigned = on_unassigned
        self.reads: Counter = Counter()     # by device name ("unassigned" for none)
        self.writes: Counter = Counter()

    def register(self, base: int, length: int, device: PortDevice) -> None:
        if length <= 0 or base < 0 or base + length > PORT_SPACE:
            raise BusError(f"{device.name}: port range {base:#x}+{length} is outside the port space")
        for existing in self._ranges:
            if base < existing.end and existing.base < base + length:
                raise BusError(f"{device.name}: ports {base:#x}-{base + length - 1:#x} overlap "
                               f"{existing.device.name} at {existing.base:#x}-{existing.end - 1:#x}")
        claim = PortRange(base, length, device)
        self._ranges.append(claim)
        self._names.add(device.name)
        for port in range(base, base + length):
            self._registered[port] = claim
            self._refresh(port)

    def map_overlay(self, base: Optional[int], length: int, device: PortDevice) -> None:
        """Put `device` at [base, base + length), above the registered devices, where it answers
        alone, or take it away (base None): a PCI I/O BAR, which the guest maps, moves and unmaps,
        and which QEMU maps over the ISA devices (priority 1). A range past the port space is
        none (an I/O BAR the guest placed above 0xFFFF answers no IN or OUT)."""
        old = self._overlays.pop(device, None)
        self._names.add(device.name)
        if base is not None and 0 <= base and base + length <= PORT_SPACE:
            self._overlays[device] = PortRange(base, length, device)
        ports = set(range(old.base, old.end)) if old is not None else set()
        if device in self._overlays:
            ports.update(range(base, base + length))
        for port in ports:
            self._refresh(port)

    def _refresh(self, port: int) -> None:
        """What answers `port`: the overlay mapped last that covers it, else its registered device."""
        claim = next((c for c in reversed(self._overlays.values()) if c.base <= port < c.end),
                     self._registered.get(port))
        if claim is None:
            self._by_port.pop(port, None)
        else:
            self._by_port[port] = claim

    @property
    def ranges(self) -> list[PortRange]:
        return sorted(self._ranges + list(self._overlays.values()), key=lambda r: r.base)

    def _split(self, claim: Optional[PortRange], size: int) -> bool:
        return claim is not None and size > getattr(claim.device, "access_width", 4)

    def read(self, port: int, size: int) -> int:
        claim = self._by_port.get(port)
        if self._split(claim, size):
            return sum(self.read((port + i) & 0xFFFF, 1) << (8 * i) for i in range(size))
        if claim is None:
            self.reads["unassigned"] += 1
            if self.on_unassigned:
                self.on_unassigned("in", port, size, _ALL_ONES[size])
            return _ALL_ONES[size]
        self.reads[claim.device.name] += 1
        return claim.device.io_read(port - claim.base, size) & _ALL_ONES[size]

    def write(self, port: int, size: int, value: int) -> None:
        claim = self._by_port.get(port)
        if self._split(claim, size):
            for i in range(size):
                self.write((port + i) & 0xFFFF, 1, (value >> (8 * i)) & 0xFF)
            return
        if claim is None:
            self.writes["unassigned"] += 1
            if self.on_unassigned:
                self.on_unassigned("out", port, size, value)
            return
        self.writes[claim.device.name] += 1
        claim.device.io_write(port - claim.base, size, value & _ALL_ONES[size])

    def device_name(self, port: int) -> str:
        claim = self._by_port.get(port)
        return claim.device.name if claim is not None else "unassigned"

    def counters(self) -> dict[str, dict[str, int]]:
        """Reads and writes by device: every device on the bus and "unassigned", 0 or not."""
        names = sorted(self._names | {"unassigned"} | set(self.reads) | set(self.writes))
        return {name: {"reads": self.reads[name], "writes": self.writes[name]} for name in names}


# ------------------------------------------------------------------------- memory-mapped I/O
PHYSICAL_SPACE = 1 << 32                # the guest's physical address space (no PAE)
_MASK = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}


@dataclass(frozen=True)
class MmioRange:
    base: int
    length: int
    device: PortDevice          # the same two methods: io_read(offset, size), io_write(offset, size, value)

    @property
    def end(self) -> int:
        return self.base + self.length


class MmioBus:
    """Routes guest-physical accesses that no RAM answers: to the device whose range holds the
    address (offset from its base), else to QEMU's unassigned memory, which reads as 0 at every
    width and drops stores (measured on qemu-system-i386 -machine pc: above RAM, in the PCI hole
    and at 0xFF000000-0xFFFBFFFF alike; tests/test_unassigned.py). An access that runs across a
    range boundary is split into bytes, each going where its address goes, as QEMU splits one.

    `reserved` ranges (guest RAM) may hold no device. `on_unassigned(kind, address, size, value)`
    sees every unassigned access ("read" or "write"); it may raise to stop the guest (the
    monitor's --unassigned stop)."""

    def __init__(self, on_unassigned: Optional[Callable[[str, int, int, int], None]] = None) -> None:
        self._ranges: list[MmioRange] = []
        self._reserved: list[tuple[int, int, str]] = []
        self.on_unassigned = on_unassigned
        self.reads: Counter = Counter()     # by device name ("unassigned" for none)
        self.writes: Counter = Counter()

    def reserve(self, base: int, length: int, name: str) -> None:
        """A range of the physical space that is not the bus's (guest RAM)."""
        self._reserved.append((base, base + length, name))

    def register(self, base: int, length: int, device: PortDevice) -> None:
        if length <= 0 or base < 0 or base + length > PHYSICAL_SPACE:
            raise BusError(f"{device.name}: MMIO range {base:#x}+{length:#x} is outside the physical space")
        for start, end, name in self._reserved:
            if base < end and start < base + length:
                raise BusError(f"{device.name}: MMIO {base:#x}-{base + length - 1:#x} overlaps {name} "
                               f"at {start:#x}-{end - 1:#x}")
        for existing in self._ranges:
            if base < existing.end and existing.base < base + length:
                raise BusError(f"{device.name}: MMIO {base:#x}-{base + length - 1:#x} overlaps "
                               f"{existing.device.name} at {existing.base:#x}-{existing.end - 1:#x}")
        self._ranges.append(MmioRange(base, length, device))
        self._ranges.sort(key=lambda r: r.base)

    @property
    def ranges(self) -> list[MmioRange]:
        return list(self._ranges)

    def _claim(self, address: int) -> Optional[MmioRange]:
        for claim in self._ranges:
            if claim.base <= address < claim.end:
                return claim
        return None

    def _whole(self, address: int, size: int) -> tuple[bool, Optional[MmioRange]]:
        """(whether [address, address + size) goes to one place, that place's range or None)."""
        claim = self._claim(address)
        last = address + size - 1
        if claim is not None:
            return last < claim.end, claim
        return not any(r.base <= last and address < r.end for r in self._ranges), None

    def read(self, address: int, size: int) -> int:
        if not self._ranges:                # no device at all: every access is unassigned
            self.reads["unassigned"] += 1
            if self.on_unassigned:
                self.on_unassigned("read", address, size, 0)
            return 0
        whole, claim = self._whole(address, size)
        if not whole:
            return sum(self.read(address + i, 1) << (8 * i) for i in range(size))
        if claim is None:
            self.reads["unassigned"] += 1
            if self.on_unassigned:
                self.on_unassigned("read", address, size, 0)
            return 0
        self.reads[claim.device.name] += 1
        return claim.device.io_read(address - claim.base, size) & _MASK.get(size, (1 << 8 * size) - 1)

    def write(self, address: int, size: int, value: int) -> None:
        if not self._ranges:
            self.writes["unassigned"] += 1
            if self.on_unassigned:
                self.on_unassigned("write", address, size, value)
            return
        whole, claim = self._whole(address, size)
        if not whole:
            for i in range(size):
                self.write(address + i, 1, (value >> (8 * i)) & 0xFF)
            return
        if claim is None:
            self.writes["unassigned"] += 1
            if self.on_unassigned:
                self.on_unassigned("write", address, size, value)
            return
        self.writes[claim.device.name] += 1
        claim.device.io_write(address - claim.base, size, value & _MASK.get(size, (1 << 8 * size) - 1))

    def counters(self) -> dict[str, dict[str, int]]:
        """Reads and writes by device: every device on the bus and "unassigned", 0 or not."""
        names = sorted({claim.device.name for claim in self._ranges} | {"unassigned"} | set(self.reads) | set(self.writes))
        return {name: {"reads": self.reads[name], "writes": self.writes[name]} for name in names}
