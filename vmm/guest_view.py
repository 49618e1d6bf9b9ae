"""The guest's own view of memory: linear addresses through its page tables, code as the CPU
fetches it, and descriptors through its GDT/LDT, as the CPU resolves them. Used by exception
delivery, emulation and every decoder of guest code."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Optional

from vmm.memory import PageFault, PhysicalMemory, UnbackedAccess, linear_to_physical
from vmm.x86 import CR0_PG, PAGE_SIZE, PF_VEC, SegmentDescriptor


class GuestFault(Exception):
    """An exception the guest takes because of what the monitor did on its behalf."""

    def __init__(self, vector: int, error_code: int = 0) -> None:
        super().__init__(f"vector {vector} error {error_code:#x}")
        self.vector, self.error_code = vector, error_code


class GuestView:
    """cpu_access: the accesses are the CPU's own on the guest's behalf (exception delivery,
    emulated instructions): with paging on they set the accessed and dirty bits in the guest's
    page tables, and a fault sets CR2, as on the CPU. False for a look that must leave the guest
    as it was (a debugger's): no bits set, CR2 kept. Accesses are supervisor accesses.

    code_address(linear) -> physical: where code fetches go when the monitor's own TLB serves
    them (bt's translator: GuestPaging.code_address, which reaches guest RAM only). Without it
    fetch_code walks the guest's tables as the other accesses do and reads whatever memory the
    engine itself would fetch from."""

    def __init__(self, cpu, memory: PhysicalMemory, *, cpu_access: bool = True,
                 code_address: Optional[Callable[[int], int]] = None) -> None:
        self.cpu = cpu
        self.memory = memory
        self.cpu_access = cpu_access
        self.code_address = code_address

    # -- linear memory -------------------------------------------------------------------------
    def _walk(self, linear: int, write: bool) -> int:
        """The physical address of `linear` through the guest's tables (PageFault if they refuse)."""
        cr0 = self.cpu.reg("cr0")
        if not cr0 & CR0_PG:
            return linear & 0xFFFFFFFF
        return linear_to_physical(self.memory, cr0, self.cpu.reg("cr3"), linear, write,
                                  cr4=self.cpu.reg("cr4"), mark=self.cpu_access)

    def _physical(self, linear: int, write: bool) -> int:
        try:
            return self._walk(linear, write)
        except PageFault as fault:
            if self.cpu_access:
                self._set_cr2(fault.linear)
            raise GuestFault(PF_VEC, fault.error_code) from None

    def fetch_code(self, linear: int, size: int) -> bytes:
        """Up to `size` bytes of guest code at a linear address (an EIP), as the CPU fetches
        them: fewer where what can be fetched ends (a page the guest's tables refuse, memory
        the guest does not have), b"" when not even the first byte can be. The one way every
        decoder of guest code reads it (bt's translator, the untranslated modes' look-aheads)."""
        code = b""
        for piece, length in self._page_chunks(linear & 0xFFFFFFFF, size):
            try:
                if self.code_address is not None:
                    chunk = self.memory.read_code(self.code_address(piece), length)
                else:
                    chunk = self.memory.read(self._walk(piece, False), length)
            except (PageFault, UnbackedAccess):
                break
            code += chunk
            if len(chunk) < length:
                break
        return code

    def _set_cr2(self, linear: int) -> None:
        """CR2 for a fault the monitor raises (Engine.set_reg keeps CR3 when it writes CR2)."""
        self.cpu.set_reg("cr2", linear)

    @staticmethod
    def _page_chunks(linear: int, size: int):
        """(linear, length) pieces of an access, none crossing a page boundary."""
        while size:
            length = min(size, PAGE_SIZE - (linear & (PAGE_SIZE - 1)))
            yield linear, length
            linear, size = (linear + length) & 0xFFFFFFFF, size - length

    def read(self, linear: int, size: int) -> bytes:
        if (linear & (PAGE_SIZE - 1)) + size <= PAGE_SIZE:     # one page (descriptors, frames)
            return self.memory.read(self._physical(linear, False), size)
        return b"".join(self.memory.read(self._physical(piece, False), length)
                        for piece, length in self._page_chunks(linear, size))

    def write(self, linear: int, data: bytes) -> None:
        if (linear & (PAGE_SIZE - 1)) + len(data) <= PAGE_SIZE:
            self.memory.write(self._physical(linear, True), data)
            return
        pieces = [(self._physical(piece, True), length) for piece, length in self._page_chunks(linear, len(data))]
        done = 0
        for physical, length in pieces:      # every translation succeeds before any byte is stored
            self.memory.write(physical, data[done:done + length])
            done += length

    def read_int(self, linear: int, size: int) -> int:
        return int.from_bytes(self.read(linear, size), "little")

    def write_int(self, linear: int, size: int, value: int) -> None:
        self.write(linear, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    # -- descriptor tables ---------------------------------------------------------------------
    def descriptor_address(self, selector: int) -> Optional[int]:
        """Linear address of the descriptor a selector names, or None beyond its table's limit."""
        # The LDT is found through LDTR's cached base and limit, as the CPU does (after reset
        # they are 0 and 0xFFFF, before any lldt).
        base, limit = self.cpu.table_register("ldtr" if selector & 4 else "gdtr")
        index = selector & 0xFFF8
        if index + 7 > limit:
            return None
        return (base + index) & 0xFFFFFFFF

    def raw_descriptor(self, selector: int) -> Optional[bytes]:
        address = self.descriptor_address(selector)
        return None if address is None else self.read(address, 8)

    def descriptor(self, selector: int) -> Optional[SegmentDescriptor]:
        raw = self.raw_descriptor(selector)
        return None if raw is None else SegmentDescriptor.decode(raw)

    def segment_base(self, selector: int) -> int:
        if not selector & 0xFFFC:
            return 0
        descriptor = self.descriptor(selector)
        return descriptor.base if descriptor else 0


@contextmanager
def accessed_bits_kept(view: GuestView, *selectors: int):
    """QEMU loads CS and SS for interrupt delivery, and every segment register for a task
    switch, without marking the descriptors accessed; the engine's own segment loads (direct and
    vt, which read the guest's tables) would set the bit. So the monitor sets it for the load,
    through the physical address (the engine then writes nothing: no page-table bit moves, and
    no write can fault inside the engine's register write), and puts back what was there.
    Nothing to do where the engine loads the monitor's shadows of the descriptors, never the
    guest's (bt: GuestCpu.loads_guest_descriptors): the guest's bytes stay as they are anyway,
    and the four stores a delivery from ring 3 made cost a fifth of it."""
    if not view.cpu.loads_guest_descriptors:
        yield
        return
    quiet = GuestView(view.cpu, view.memory, cpu_access=False)
    places = []
    for selector in selectors:
        address = view.descriptor_address(selector) if selector & 0xFFFC else None
        if address is None:
            continue
        physical = quiet._physical((address + 5) & 0xFFFFFFFF, False)
        byte = view.memory.read(physical, 1)
        if not byte[0] & 1 and physical not in (place for place, _byte in places):
            view.memory.write(physical, bytes([byte[0] | 1]))
            places.append((physical, byte))
    try:
        yield
    finally:
        for physical, byte in places:
            view.memory.write(physical, byte)
