"""Execution tracing in QEMU's style: `-d in_asm,out_asm,exec,int,exits,io,disk,guest_errors` into a log (`-D FILE`)."""

from __future__ import annotations

import sys
from typing import Optional, TextIO

from vmm.errors import ConfigError
from vmm.x86 import ERROR_CODE_VECTORS, vector_name

TRACE_FLAGS = {
    "in_asm": "guest blocks as they are translated",
    "out_asm": "the translated code of each block",
    "exec": "every block execution (bt: chaining, inline caches and the lookup table are off)",
    "int": "interrupts and exceptions delivered to the guest",
    "exits": "every exit to the monitor",
    "io": "every port access",
    "disk": "every IDE command (drive, command, sector, count), software reset, DMA transfer and DMA refused",
    "guest_errors": "every access to unassigned guest-physical memory, in QEMU's words",
}


def parse_trace_flags(text: str) -> frozenset[str]:
    flags = frozenset(flag.strip() for flag in text.split(",") if flag.strip())
    unknown = sorted(flags - set(TRACE_FLAGS))
    if unknown:
        raise ConfigError(f"unknown -d flag {unknown[0]!r} (known: {', '.join(TRACE_FLAGS)})")
    return flags


class Tracer:
    """Writes one record per event for the enabled flags. A Tracer with no flags costs nothing
    beyond an attribute test at each call site."""

    def __init__(self, flags: frozenset[str] = frozenset(), stream: Optional[TextIO] = None) -> None:
        self.flags = flags
        self.stream = stream or sys.stderr
        for flag in TRACE_FLAGS:
            setattr(self, flag, flag in flags)

    def close(self) -> None:
        if self.stream not in (sys.stderr, sys.stdout):
            self.stream.close()

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")

    def translated(self, guest_block, translation, host: int) -> None:
        if self.in_asm:
            lines = [f"IN: block {guest_block.address:#010x} ({len(guest_block.instructions)} instructions, "
                     f"ends: {guest_block.end.value})"]
            lines += [f"0x{i.address:08x}:  {i.bytes.hex():<20} {i}" for i in guest_block.instructions]
            self._write("\n".join(lines) + "\n")
        if self.out_asm:
            from translator.x86decode import listing
            lines = [f"OUT: [size={len(translation.code)}] guest {guest_block.address:#010x} -> host {host:#010x}"]
            lines += [f"0x{address:08x}:  {mnemonic} {operands}".rstrip()
                      for address, _size, mnemonic, operands in listing(bytes(translation.code), host, 64)]
            self._write("\n".join(lines) + "\n")

    def executed(self, guest: int, host: Optional[int] = None) -> None:
        where = f"{host:#010x} " if host is not None else ""
        self._write(f"Trace: {where}[{guest:08x}]")

    def interrupt(self, vector: int, eip: int, error_code: Optional[int], software: bool) -> None:
        kind = "software" if software else "exception"
        code = f" error {error_code:#x}" if error_code is not None and not software and vector in ERROR_CODE_VECTORS else ""
        self._write(f"int: {vector:#04x} {vector_name(vector)} ({kind}) at eip {eip:#010x}{code}")

    def exit(self, vm_exit) -> None:
        extra = f" {vm_exit.instruction}" if vm_exit.instruction is not None else ""
        self._write(f"exit: {vm_exit.reason.value} eip {vm_exit.eip:#010x}{extra}")

    def disk_command(self, text: str) -> None:
        self._write(text)

    def port(self, direction: str, port: int, size: int, value: int, device: str) -> None:
        self._write(f"io: {direction} {port:#06x} size {size} value {value:#x} ({device})")

    def unassigned(self, kind: str, address: int, size: int) -> None:
        # QEMU's own line for it (memory.c, memory_region_access_valid, under -d guest_errors)
        self._write(f"Invalid {kind} at addr {address:#X}, size {size}, region '(null)', reason: rejected"
                    .replace("0X", "0x"))
