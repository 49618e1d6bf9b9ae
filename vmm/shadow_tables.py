"""Shadow descriptor tables: the GDT and LDT the engine really uses while a deprivileged guest
kernel runs, copies of the guest's. Under binary translation one view, with the guest's ring-0
code and data descriptors moved to ring 1, where the kernel really runs. Under trap-and-emulate
one view per virtual ring (ring compression: the kernel and its processes all run at the real
ring 3), the engine's GDTR and LDTR following the guest's ring. In every view accessed bits are
preset (the tables are read-only to the engine, which must never need to write them) and system
descriptors are not present (the monitor emulates everything that uses them).

A ring's view lets the engine, at CPL 3, do natively exactly what the CPU would do at that ring,
and makes everything else fault into the monitor, which emulates it (`ring_view_descriptor`).
Ring 3's view is the guest's table as it is: at CPL 3 the engine checks it as the CPU does, and a
process that loads a kernel selector gets the CPU's own #GP. In the view of a ring c < 3, data
descriptors the ring may load (DPL >= c) have DPL 3, and so has the ring's own non-conforming
code; every other code descriptor is not present: the monitor's mark. So a return from the
kernel to ring 3 (iret, retf), which the engine would run as a same-ring return, and a far
jmp/call it would get wrong, fault (#NP) and are emulated, with the ring change, the stack
switch and the nulled segments of the CPU. The marks are the monitor's, not the guest's:
`hides(selector)` tells them apart from descriptors the guest itself made not present."""

from __future__ import annotations

import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Optional

from vmm.engine import PROT_READ
from vmm.errors import UnsupportedGuestFeature
from vmm.x86 import SegmentDescriptor

TABLE_SIZE = 0x10000            # 8192 descriptors: the architectural maximum
VIEW_SIZE = 2 * TABLE_SIZE      # a ring's view: its GDT, then its LDT
RINGS = 4

_PRESENT, _DPL3, _SEGMENT, _CODE, _CONFORMING, _ACCESSED = 0x80, 0x60, 0x10, 0x08, 0x04, 0x01


def _with_access(raw: bytes, access: int) -> bytes:
    low, high = struct.unpack("<II", raw)
    return struct.pack("<II", low, (high & ~0xFF00) | (access << 8))


def shadow_descriptor(raw: bytes, kernel_ring: int) -> bytes:
    """bt's view: code/data segments of DPL 0 get DPL `kernel_ring`, with the accessed bit
    preset; system descriptors are made not present."""
    access = raw[5]
    if access & _SEGMENT:                  # code or data
        access |= _ACCESSED
        if (access >> 5) & 3 == 0:
            access |= kernel_ring << 5
    else:
        access &= ~_PRESENT
    return _with_access(raw, access)


def ring_view_descriptor(raw: bytes, ring: int) -> tuple[bytes, bool]:
    """trap's view of virtual ring `ring` (the engine always at CPL 3): (the descriptor, whether
    the monitor marked it not present). Data of DPL >= ring and the ring's own non-conforming
    code get DPL 3; data of a more privileged ring keep their DPL (the engine's load is the
    CPU's #GP); other code is marked not present (DPL 3, so that the engine's privilege checks
    pass and the #NP comes), in ring 3's view nothing is."""
    access = raw[5]
    if not access & _SEGMENT:
        return _with_access(raw, access & ~_PRESENT), False
    access |= _ACCESSED
    if ring == 3:
        return _with_access(raw, access), False
    dpl = (access >> 5) & 3
    if access & _CODE:
        if access & _CONFORMING or dpl != ring:
            return _with_access(raw, (access | _DPL3) & ~_PRESENT), bool(access & _PRESENT)
        return _with_access(raw, access | _DPL3), False
    if dpl >= ring:
        access |= _DPL3
    return _with_access(raw, access), False


def loadable_descriptor(raw: bytes) -> bytes:
    """A guest descriptor as the engine at CPL 3 accepts it in a segment register load the
    monitor makes (after its own checks): present, DPL 3, accessed."""
    return _with_access(raw, raw[5] | _PRESENT | _DPL3 | _ACCESSED)


@dataclass(eq=False)
class _View:
    """One view: its GDT and LDT in the monitor's region, and what it holds now."""
    ring: Optional[int]                  # None: bt's one view
    gdt: memoryview
    ldt: memoryview
    gdt_address: int
    ldt_address: int
    gdt_stale: bool = True               # not a copy of the guest's current table: copy when chosen
    ldt_stale: bool = True
    marks: set = field(default_factory=set)     # selectors (index | TI) the monitor made not present


class ShadowTables:
    """The shadow GDT and LDT views in monitor areas (read-only to the engine), kept in step with
    the guest's tables by the CPU view at lgdt, lldt and every segment load it makes."""

    def __init__(self, engine, memory, gdt_offset: int, ldt_offset: int, kernel_ring: int,
                 read=None, linear_base: Optional[int] = None, monitor_descriptors: Optional[dict] = None,
                 views_offset: Optional[int] = None) -> None:
        """read(linear, size): the guest's linear memory (default: physical, paging off).
        linear_base: where the engine sees the monitor's region, if not at its physical address
        (MONITOR_LINEAR: bt, trap with nested paging). monitor_descriptors: {selector: raw descriptor} of the monitor's own, kept
        in the shadow GDT past any guest table (the engine's GDTR then spans the whole table).
        views_offset: one view per virtual ring (trap), ring r's GDT at views_offset + r *
        VIEW_SIZE and its LDT right after; else one view at gdt_offset and ldt_offset (bt)."""
        self.engine, self.memory, self.kernel_ring = engine, memory, kernel_ring
        self.read = read if read is not None else memory.read
        self.monitor_descriptors = monitor_descriptors or {}
        if views_offset is None:
            places = [(None, gdt_offset, ldt_offset)]
        else:
            places = [(ring, views_offset + ring * VIEW_SIZE, views_offset + ring * VIEW_SIZE + TABLE_SIZE)
                      for ring in range(RINGS)]
            memory.map_monitor_area(views_offset, RINGS * VIEW_SIZE, PROT_READ)
        self.views: list[_View] = []
        for ring, gdt, ldt in places:
            if views_offset is None:
                memory.map_monitor_area(gdt, TABLE_SIZE, PROT_READ)
                memory.map_monitor_area(ldt, TABLE_SIZE, PROT_READ)
            base = linear_base if linear_base is not None else memory.monitor.base
            self.views.append(_View(ring, memory.monitor_view(gdt, TABLE_SIZE), memory.monitor_view(ldt, TABLE_SIZE),
                                    base + gdt, base + ldt))
        self.active = self.views[0]
        self.gdtr = (0, 0)                               # the guest's GDT: base, limit
        self.ldt: Optional[tuple[int, int, int]] = None  # the guest's LDT: selector, base, size

    @property
    def gdt_address(self) -> int:
        return self.active.gdt_address

    @property
    def ldt_address(self) -> int:
        return self.active.ldt_address

    def linear_pages(self) -> list[int]:
        """The pages of every view (where the engine reads descriptors by linear address)."""
        pages = []
        for view in self.views:
            for start in (view.gdt_address, view.ldt_address):
                pages.extend(range(start, start + TABLE_SIZE, 0x1000))
        return pages

    # -- copies --------------------------------------------------------------------------------
    def _descriptor(self, view: _View, selector: int, raw: bytes) -> bytes:
        if view.ring is None:
            return shadow_descriptor(raw, self.kernel_ring)
        descriptor, marked = ring_view_descriptor(raw, view.ring)
        if marked:
            view.marks.add(selector & 0xFFFC)
        else:
            view.marks.discard(selector & 0xFFFC)
        return descriptor

    def _copy(self, view: _View, local: bool) -> None:
        table = view.ldt if local else view.gdt
        table[:] = bytes(TABLE_SIZE)
        view.marks = {mark for mark in view.marks if bool(mark & 4) != local}
        if local:
            if self.ldt is None:
                return
            _selector, base, size = self.ldt
            first = 0
        else:
            (base, limit), first = self.gdtr, 8
            size = min(limit + 1, TABLE_SIZE)
        raws = self._guest_table(base, size)
        for index in range(first, len(raws) - 7, 8):
            selector = index | (4 if local else 0)
            table[index:index + 8] = self._descriptor(view, selector, raws[index:index + 8])

    def _guest_table(self, base: int, size: int) -> bytes:
        """The guest's table, as far as guest memory holds it (the rest stays absent)."""
        size -= size % 8
        try:
            return self.read(base, size)
        except Exception:
            pass
        raws = b""
        for index in range(0, size, 8):
            try:
                raws += self.read(base + index, 8)
            except Exception:            # the table runs past guest memory
                break
        return raws

    def _install(self, view: _View) -> None:
        """Point the engine's GDTR and LDTR at a view, copied first if it is stale."""
        if view.gdt_stale:
            self._copy(view, local=False)
            for selector, raw in self.monitor_descriptors.items():
                view.gdt[selector & 0xFFF8:(selector & 0xFFF8) + 8] = raw
            view.gdt_stale = False
        if view.ldt_stale:
            self._copy(view, local=True)
            view.ldt_stale = False
        limit = self.gdtr[1]
        engine_limit = TABLE_SIZE - 1 if self.monitor_descriptors else max(limit, 7)
        self.engine.set_table_register("gdtr", view.gdt_address, engine_limit)
        if self.ldt is None:
            self.engine.set_table_register("ldtr", 0, 0, 0)
        else:
            selector, _base, size = self.ldt
            self.engine.set_table_register("ldtr", view.ldt_address, size - 1, selector)

    def load_gdt(self, base: int, limit: int) -> None:
        """lgdt: copy the guest's GDT and point the engine's GDTR at the copy (the other views
        are copied when their ring is next entered)."""
        if self.monitor_descriptors and limit + 1 > min(self.monitor_descriptors):
            raise UnsupportedGuestFeature(f"a GDT of {limit + 1} bytes: the shadow GDT keeps its last "
                                          f"descriptors from {min(self.monitor_descriptors):#x} for the monitor")
        self.gdtr = (base, limit)
        for view in self.views:
            view.gdt_stale = True
        self._install(self.active)

    def load_ldt(self, selector: int, raw: Optional[bytes]) -> None:
        """lldt: copy the guest's LDT (raw: its descriptor, None for a null selector)."""
        if raw is None:
            self.ldt = None
        else:
            descriptor = SegmentDescriptor.decode(raw)
            self.ldt = (selector, descriptor.base, min(descriptor.limit + 1, TABLE_SIZE))
        for view in self.views:
            view.ldt_stale = True
        self._install(self.active)

    def refresh(self, selector: int, raw: bytes) -> None:
        """A segment load: the guest may have edited the descriptor since lgdt/lldt."""
        index = selector & 0xFFF8
        if index + 8 > TABLE_SIZE:
            return
        for view in self.views:
            if not (view.ldt_stale if selector & 4 else view.gdt_stale):
                table = view.ldt if selector & 4 else view.gdt
                table[index:index + 8] = self._descriptor(view, selector, raw)

    # -- trap: the view of the guest's ring ----------------------------------------------------
    def select_ring(self, ring: int) -> None:
        """The guest is now at virtual ring `ring`: the engine uses that ring's view."""
        view = self.views[ring]
        if view is not self.active:
            self.active = view
            self._install(view)

    def hides(self, selector: int) -> bool:
        """Whether the running view marks the descriptor `selector` names not present where the
        guest's own is present (a fault on it is the monitor's doing, not the guest's)."""
        return (selector & 0xFFFC) in self.active.marks

    @contextmanager
    def loadable(self, selector: int, raw: bytes):
        """While the monitor loads a segment register of the engine's with a descriptor it has
        checked as the CPU would: the running view holds it in a form the engine at CPL 3
        accepts (the engine's load reads the view; its hidden part keeps what it read)."""
        index = selector & 0xFFF8
        table = self.active.ldt if selector & 4 else self.active.gdt
        if index + 8 > TABLE_SIZE:
            yield
            return
        kept = bytes(table[index:index + 8])
        table[index:index + 8] = loadable_descriptor(raw)
        try:
            yield
        finally:
            table[index:index + 8] = kept
