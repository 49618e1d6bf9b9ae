"""Shadow descriptor tables: the GDT and LDT the engine really uses while a deprivileged guest
kernel runs. Copies of the guest's, with its ring-0 code and data descriptors moved to the ring
the kernel really runs at (1 under binary translation, 3 under trap-and-emulate), accessed bits
preset (the tables are read-only to the engine, which must never need to write them), and
system descriptors marked not present (the monitor emulates everything that uses them)."""

from __future__ import annotations

import struct
from typing import Optional

from vmm.engine import PROT_READ
from vmm.errors import UnsupportedGuestFeature
from vmm.x86 import SegmentDescriptor

TABLE_SIZE = 0x10000            # 8192 descriptors: the architectural maximum


def shadow_descriptor(raw: bytes, kernel_ring: int) -> bytes:
    """The descriptor the engine uses for a guest descriptor: code/data segments of DPL 0 get DPL
    `kernel_ring`, with the accessed bit preset; system descriptors are made not present."""
    low, high = struct.unpack("<II", raw)
    access = (high >> 8) & 0xFF
    if access & 0x10:                      # code or data
        access |= 0x01
        if (access >> 5) & 3 == 0:
            access |= kernel_ring << 5
    else:
        access &= 0x7F
    return struct.pack("<II", low, (high & ~0xFF00) | (access << 8))


class ShadowTables:
    """The shadow GDT and LDT in two monitor areas (read-only to the engine), kept in step with
    the guest's tables by the CPU view at lgdt, lldt and every segment load."""

    def __init__(self, engine, memory, gdt_offset: int, ldt_offset: int, kernel_ring: int,
                 read=None, linear_base: Optional[int] = None, monitor_descriptors: Optional[dict] = None) -> None:
        """read(linear, size): the guest's linear memory (default: physical, paging off).
        linear_base: where the engine sees the monitor's region, if not at its physical address
        (long mode). monitor_descriptors: {selector: raw descriptor} of the monitor's own, kept
        in the shadow GDT past any guest table (the engine's GDTR then spans the whole table)."""
        self.engine, self.memory, self.kernel_ring = engine, memory, kernel_ring
        self.read = read if read is not None else memory.read
        self.gdt_address = memory.map_monitor_area(gdt_offset, TABLE_SIZE, PROT_READ)
        self.ldt_address = memory.map_monitor_area(ldt_offset, TABLE_SIZE, PROT_READ)
        if linear_base is not None:
            self.gdt_address = linear_base + gdt_offset
            self.ldt_address = linear_base + ldt_offset
        self.monitor_descriptors = monitor_descriptors or {}
        self.gdt = memory.monitor_view(gdt_offset, TABLE_SIZE)
        self.ldt = memory.monitor_view(ldt_offset, TABLE_SIZE)

    def _copy(self, view: memoryview, base: int, size: int, first: int) -> None:
        view[:] = bytes(TABLE_SIZE)
        for index in range(first, size - 7, 8):
            try:
                raw = self.read(base + index, 8)
            except Exception:            # the table runs past guest memory: the rest stays absent
                break
            view[index:index + 8] = shadow_descriptor(raw, self.kernel_ring)

    def load_gdt(self, base: int, limit: int) -> None:
        """lgdt: copy the guest's GDT and point the engine's GDTR at the copy."""
        if self.monitor_descriptors and limit + 1 > min(self.monitor_descriptors):
            raise UnsupportedGuestFeature(f"a GDT of {limit + 1} bytes: the shadow GDT keeps its last "
                                          f"descriptors from {min(self.monitor_descriptors):#x} for the monitor")
        self._copy(self.gdt, base, min(limit + 1, TABLE_SIZE), 8)
        for selector, raw in self.monitor_descriptors.items():
            self.gdt[selector & 0xFFF8:(selector & 0xFFF8) + 8] = raw
        engine_limit = TABLE_SIZE - 1 if self.monitor_descriptors else max(limit, 7)
        self.engine.set_table_register("gdtr", self.gdt_address, engine_limit)

    def refresh(self, selector: int, raw: bytes) -> None:
        """A segment load: the guest may have edited the descriptor since lgdt/lldt."""
        view = self.ldt if selector & 4 else self.gdt
        index = selector & 0xFFF8
        if index + 8 <= len(view):
            view[index:index + 8] = shadow_descriptor(raw, self.kernel_ring)

    def load_ldt(self, selector: int, raw: Optional[bytes]) -> None:
        """lldt: copy the guest's LDT (raw: its descriptor, None for a null selector)."""
        if raw is None:
            self.engine.set_table_register("ldtr", 0, 0, 0)
            return
        descriptor = SegmentDescriptor.decode(raw)
        size = min(descriptor.limit + 1, TABLE_SIZE)
        self._copy(self.ldt, descriptor.base, size, 0)
        self.engine.set_table_register("ldtr", self.ldt_address, size - 1, selector)
