"""QEMU's isa-debug-exit: a guest write of v ends the run; the monitor exits with status v & 0xFF."""

from __future__ import annotations

from typing import Callable

DEBUG_EXIT_PORT = 0xF4      # -device isa-debug-exit,iobase=0xf4,iosize=0x04
DEBUG_EXIT_PORTS = 4


class DebugExit:
    name = "isa-debug-exit"

    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self._on_exit = on_exit

    def io_read(self, offset: int, size: int) -> int:
        return 0

    def io_write(self, offset: int, size: int, value: int) -> None:
        # QEMU itself exits with (value << 1) | 1; this monitor reports the value the guest wrote.
        self._on_exit(value)
