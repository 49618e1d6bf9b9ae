"""The PC's two reset registers outside the keyboard controller: port 0x92 (System Control Port A,
QEMU's hw/i386/port92.c: A20 gate and fast reset) and 0xCF9 (the PIIX reset control register,
QEMU's hw/isa/piix.c). A reset ends the run, as QEMU's -no-reboot turns it into a shutdown."""

from __future__ import annotations

from typing import Callable

PORT92 = 0x92
PORT92_RESET, PORT92_A20 = 0x01, 0x02
RESET_CONTROL = 0xCF9
RCR_SYS_RST, RCR_RST_CPU = 0x02, 0x04


class Port92:
    """Bit 1 gates A20 (it reads back; A20 stays enabled: the engine has no address wrap at
    1 MiB, and QEMU's SeaBIOS leaves it on, 0x02), a rising bit 0 resets the machine."""

    name = "port92"
    access_width = 1

    def __init__(self, on_reset: Callable[[str], None]) -> None:
        self.on_reset = on_reset
        self.outport = PORT92_A20           # as SeaBIOS leaves it (measured under QEMU 7.2)

    def io_read(self, offset: int, size: int) -> int:
        return self.outport

    def io_write(self, offset: int, size: int, value: int) -> None:
        old, self.outport = self.outport, value
        if value & PORT92_RESET and not old & PORT92_RESET:
            self.on_reset(f"port 0x92 fast reset (wrote {value:#04x})")

    def state(self) -> dict:
        return {"outport": self.outport}


class ResetControl:
    """0xCF9: bit 2 set resets (bit 1 chooses hard or soft, the same here); bit 1 reads back."""

    name = "reset-control"
    access_width = 1

    def __init__(self, on_reset: Callable[[str], None]) -> None:
        self.on_reset = on_reset
        self.rcr = 0

    def io_read(self, offset: int, size: int) -> int:
        return self.rcr

    def io_write(self, offset: int, size: int, value: int) -> None:
        if value & RCR_RST_CPU:
            self.on_reset(f"reset control register 0xcf9 (wrote {value:#04x})")
        self.rcr = value & RCR_SYS_RST

    def state(self) -> dict:
        return {"rcr": self.rcr}
