"""Privilege rules every mode applies the same way: the inner-ring stack taken from the guest's
TSS, the checks on the stack segment found there, and the I/O permission check (IOPL, then the
TSS I/O bitmap). They follow QEMU's seg_helper.c, the reference machine, where it differs in
detail from the SDM (error codes without the EXT bit, accessed bits left alone)."""

from __future__ import annotations

from vmm.guest_view import GuestFault, GuestView
from vmm.x86 import GP, SS, TS, IOPL_MASK, SegmentDescriptor

TSS32_MIN_LIMIT = 103          # a 32-bit TSS is at least 104 bytes; the I/O map base is at 0x66
TSS_IO_MAP_BASE = 0x66


def iopl(eflags: int) -> int:
    return (eflags & IOPL_MASK) >> 12


def inner_stack(cpu, view: GuestView, cpl: int) -> tuple[int, int, bytes]:
    """(SS, ESP, raw SS descriptor) for privilege level `cpl` from the guest's 32-bit TSS, with
    the checks the CPU makes before switching to it (#TS, or #SS for a stack not present)."""
    base, limit = cpu.table_register("tr")
    tr = cpu.table_selector("tr")
    index = 4 + cpl * 8                      # ESPn at 4 + 8n, SSn right after it
    if not tr & 0xFFFC or index + 7 > limit:
        raise GuestFault(TS, tr & 0xFFFC)
    esp = view.read_int((base + index) & 0xFFFFFFFF, 4)
    ss = view.read_int((base + index + 4) & 0xFFFFFFFF, 2)
    if not ss & 0xFFFC or ss & 3 != cpl:
        raise GuestFault(TS, ss & 0xFFFC)
    raw = view.raw_descriptor(ss)
    if raw is None:
        raise GuestFault(TS, ss & 0xFFFC)
    descriptor = SegmentDescriptor.decode(raw)
    if descriptor.dpl != cpl or not descriptor.is_writable_data:
        raise GuestFault(TS, ss & 0xFFFC)
    if not descriptor.present:
        raise GuestFault(SS, ss & 0xFFFC)
    return ss, esp, raw


def check_outer_stack(view: GuestView, ss: int, rpl: int) -> bytes:
    """The checks on the SS popped by a return to an outer ring (iret, far ret). Returns its
    raw descriptor."""
    if not ss & 0xFFFC:
        raise GuestFault(GP, 0)
    raw = view.raw_descriptor(ss)
    if ss & 3 != rpl or raw is None:
        raise GuestFault(GP, ss & 0xFFFC)
    descriptor = SegmentDescriptor.decode(raw)
    if descriptor.dpl != rpl or not descriptor.is_writable_data:
        raise GuestFault(GP, ss & 0xFFFC)
    if not descriptor.present:
        raise GuestFault(SS, ss & 0xFFFC)
    return raw


def io_permitted(cpu, view: GuestView, port: int, size: int) -> bool:
    """Whether an access of `size` bytes at `port` is allowed: always at CPL <= IOPL, otherwise
    only when every bit for those ports in the TSS I/O bitmap is clear (SDM vol. 1, 19.5.2)."""
    if cpu.cpl <= iopl(cpu.reg("eflags")):
        return True
    base, limit = cpu.table_register("tr")
    if not cpu.table_selector("tr") & 0xFFFC or limit < TSS32_MIN_LIMIT:
        return False
    offset = view.read_int((base + TSS_IO_MAP_BASE) & 0xFFFFFFFF, 2) + (port >> 3)
    if offset + 1 > limit:
        return False
    bits = view.read_int((base + offset) & 0xFFFFFFFF, 2) >> (port & 7)
    return not bits & ((1 << size) - 1)


def null_outer_data_segments(cpu, view: GuestView, new_cpl: int) -> None:
    """After a return to an outer ring, data segment registers the new CPL may not use are
    loaded with the null selector (QEMU's validate_seg)."""
    seen: dict = {}                          # (the four often share one selector: read it once)
    for name in ("es", "ds", "fs", "gs"):
        selector = cpu.reg(name)
        if not selector & 0xFFFC:
            continue
        if selector not in seen:
            seen[selector] = view.descriptor(selector)
        descriptor = seen[selector]
        if descriptor is None:
            continue
        conforming_code = descriptor.is_code and descriptor.type & 4
        if not conforming_code and descriptor.dpl < new_cpl:
            cpu.load_segment(name, 0, None)
