"""The I/O port bus: devices claim non-overlapping port ranges and see offsets, not absolute ports."""

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
        self._by_port: dict[int, PortRange] = {}
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
        for port in range(base, base + length):
            self._by_port[port] = claim

    @property
    def ranges(self) -> list[PortRange]:
        return sorted(self._ranges, key=lambda r: r.base)

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
        names = sorted({claim.device.name for claim in self._ranges} | {"unassigned"} | set(self.reads) | set(self.writes))
        return {name: {"reads": self.reads[name], "writes": self.writes[name]} for name in names}
