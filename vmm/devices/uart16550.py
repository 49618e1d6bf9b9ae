"""A 16550A UART as QEMU's hw/char/serial.c models it: registers, divisor latch, FIFOs, loopback,
the interrupt line (raised whatever MCR's OUT2 says, as QEMU does), and the receive FIFO's
character timeout: a clocked device whose one deadline (`next_event_ns`, said moved through
`deadline_moved`) the interrupt platform fires (`advance`)."""

from __future__ import annotations

import collections
import struct
from typing import Callable, Optional

from vmm.console import Console

COM1_BASE = 0x3F8           # COM1 ports 0x3F8-0x3FF, IRQ 4
COM1_IRQ = 4
COM2_BASE = 0x2F8           # COM2 ports 0x2F8-0x2FF, IRQ 3
COM2_IRQ = 3
UART_PORTS = 8

# Register offsets (DLAB = LCR bit 7 selects the divisor latch at offsets 0 and 1)
RBR_THR_DLL, IER_DLM, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)

LCR_DLAB = 0x80
IER_RDI, IER_THRI, IER_RLSI, IER_MSI = 0x01, 0x02, 0x04, 0x08
IIR_NO_INT, IIR_MSI, IIR_THRI, IIR_RDI, IIR_RLSI, IIR_FIFO_ENABLED = 0x01, 0x00, 0x02, 0x04, 0x06, 0xC0
IIR_CHARACTER_TIMEOUT = 0x0C
IIR_ID_MASK = 0x06
FCR_FIFO_ENABLE, FCR_CLEAR_RECEIVE, FCR_CLEAR_TRANSMIT = 0x01, 0x02, 0x04
MCR_LOOPBACK = 0x10
LSR_DR, LSR_OE, LSR_BI, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x10, 0x20, 0x40
LSR_INT_ANY = 0x1E
MSR_CTS, MSR_DSR, MSR_DCD = 0x10, 0x20, 0x80
FIFO_DEPTH = 16
_TRIGGER_LEVELS = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}
LCR_PARITY, LCR_TWO_STOP_BITS, LCR_WORD_LENGTH = 0x08, 0x04, 0x03
NS_PER_SECOND = 10 ** 9
BAUD_BASE = 115200                  # the ISA serial's 1.8432 MHz crystal over 16
ZERO_DIVISOR_BAUD = 3500            # what QEMU takes a divisor of 0 for
# QEMU's serial_reset: 9600 baud, ten bits a character, in integer arithmetic (LCR and the
# divisor are not looked at until the guest writes one of them).
RESET_CHARACTER_NS = (NS_PER_SECOND // 9600) * 10
TIMEOUT_CHARACTERS = 4              # the character timeout: four character times of silence


def _single(value: float) -> float:
    """`value` rounded to IEEE single precision: QEMU computes the speed and the character time
    in C floats (one double operation rounded once to single is the single operation's result)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def character_time_ns(divisor: int, lcr: int) -> int:
    """QEMU's serial_update_parameters: one character's time on the line (start bit, 5-8 data
    bits, parity, 1 or 2 stop bits) at the divisor's speed, truncated to whole nanoseconds."""
    bits = 1 + (lcr & LCR_WORD_LENGTH) + 5 + (1 if lcr & LCR_PARITY else 0) + (2 if lcr & LCR_TWO_STOP_BITS else 1)
    speed = float(ZERO_DIVISOR_BAUD) if divisor == 0 else _single(BAUD_BASE / divisor)
    return int(_single(_single(NS_PER_SECOND / speed) * bits))


class Uart16550:
    """Transmit goes to the console at once (the transmitter is always empty again by the next
    register read); receive pulls console bytes whenever the receiver has room, as QEMU does:
    on a register read, after a read of the receiver buffer, when the guest enables the receive
    interrupt (QEMU's receiver would hold the byte already: the IRQ rises at once), and, while
    that interrupt is enabled, whenever the platform polls host input (an `input source`:
    armed, poll, input_may_arrive, wait_input, on_input), which it does when input arrives,
    so typed input raises the IRQ whatever the guest is doing, in hlt or spinning.

    With the FIFOs on, each received byte and each read of the receiver buffer that leaves bytes
    behind sets the character timeout four character times ahead (on `now_ns`, guest time);
    when it comes with bytes still in the FIFO, IIR reads 0xCC (while the receive interrupt is
    enabled, ranked above the trigger level's 0xC4) until the receiver buffer is read or the
    receive FIFO cleared. The platform learns the deadline from `next_event_ns` (told by
    `deadline_moved` whenever it is set or dropped) and fires it with `advance(ns)`: runs are
    bounded by it, so no register access comes after it before it fired."""

    access_width = 1        # byte registers: a word or dword access reaches consecutive ports

    def __init__(self, console: Console, set_irq: Optional[Callable[[bool], None]] = None,
                 name: str = "com1", now_ns: Callable[[], int] = lambda: 0,
                 deadline_moved: Callable[[Optional[int]], None] = lambda at_ns: None) -> None:
        """`now_ns` and `deadline_moved` come from the interrupt platform (precise_now_ns,
        deadline_moved); without them (a UART on its own) time stands at 0 and the timeout
        comes only when `advance` is called."""
        self.console = console
        self.set_irq = set_irq
        self.name = name
        self.now_ns = now_ns
        self.deadline_moved = deadline_moved
        self.reset()

    def reset(self) -> None:
        self.divisor = 0x0C
        self.ier = 0
        self.iir = IIR_NO_INT
        self.fcr = 0
        self.lcr = 0
        self.mcr = 0x08          # OUT2
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.scr = 0
        self.rbr = 0
        self.thr_pending = False
        self.receive_fifo: collections.deque = collections.deque()
        self.trigger_level = 1
        self.irq_level = False
        self.character_ns = RESET_CHARACTER_NS
        self.timeout_at: Optional[int] = None      # the character timeout's deadline (guest ns)
        self.timeout_pending = False

    # -- guest side -----------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        if offset in (RBR_THR_DLL, IIR_FCR, LSR):
            self._pull_input()     # the receiver takes console input whenever it has room
        if offset == RBR_THR_DLL:
            if self.lcr & LCR_DLAB:
                return self.divisor & 0xFF
            return self._read_receiver()
        if offset == IER_DLM:
            return (self.divisor >> 8) & 0xFF if self.lcr & LCR_DLAB else self.ier
        if offset == IIR_FCR:
            value = self.iir
            if value & IIR_ID_MASK == IIR_THRI:
                self.thr_pending = False      # reading IIR acknowledges the THR-empty interrupt
                self._update_irq()
            return value
        if offset == LCR:
            return self.lcr
        if offset == MCR:
            return self.mcr
        if offset == LSR:
            value = self.lsr
            if self.lsr & (LSR_BI | LSR_OE):
                self.lsr &= ~(LSR_BI | LSR_OE)
                self._update_irq()
            return value
        if offset == MSR:
            if self.mcr & MCR_LOOPBACK:     # modem outputs wired back to the inputs
                return ((self.mcr & 0x0C) << 4) | ((self.mcr & 0x02) << 3) | ((self.mcr & 0x01) << 5)
            return self.msr
        return self.scr

    def io_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == RBR_THR_DLL:
            if self.lcr & LCR_DLAB:
                self.divisor = (self.divisor & 0xFF00) | value
                self.character_ns = character_time_ns(self.divisor, self.lcr)
            else:
                self._transmit(value)
        elif offset == IER_DLM:
            if self.lcr & LCR_DLAB:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
                self.character_ns = character_time_ns(self.divisor, self.lcr)
            else:
                changed = (self.ier ^ value) & 0x0F
                self.ier = value & 0x0F
                if changed & IER_RDI and self.ier & IER_RDI:
                    self._pull_input()        # (raises the IRQ through _update_irq below)
                if changed & IER_THRI:
                    # Enabling THRI while THR is empty raises it at once (Windows relies on this).
                    self.thr_pending = bool(self.ier & IER_THRI and self.lsr & LSR_THRE)
                if changed:
                    self._update_irq()
        elif offset == IIR_FCR:
            self._write_fcr(value)
        elif offset == LCR:
            self.lcr = value
            self.character_ns = character_time_ns(self.divisor, self.lcr)
        elif offset == MCR:
            self.mcr = value & 0x1F
        elif offset == SCR:
            self.scr = value
        # LSR and MSR are read-only

    # -- host input -----------------------------------------------------------------------------
    def armed(self) -> bool:
        """Input must reach the guest as it arrives: the receive interrupt is enabled and input
        is waiting or may still come."""
        return bool(self.ier & IER_RDI) and not self.mcr & MCR_LOOPBACK and self.console.input_may_arrive()

    def poll(self) -> None:
        self._pull_input()

    def input_may_arrive(self) -> bool:
        return self.console.input_may_arrive()

    def wait_input(self, timeout: float) -> None:
        self.console.wait_input(timeout)

    def on_input(self, callback: Callable[[], None]) -> None:
        self.console.on_input(callback)

    # -- the character timeout on guest time (a platform timer) ---------------------------------
    def next_event_ns(self) -> Optional[int]:
        """When the character timeout comes (guest ns), None if it is not set or would find the
        FIFO empty (QEMU's fifo_timeout_int then does nothing: no event to stop a run for)."""
        return self.timeout_at if self.receive_fifo else None

    def advance(self, ns: int) -> None:
        """Guest time is `ns`: the character timeout, if due, becomes pending while the FIFO
        holds bytes (QEMU's fifo_timeout_int)."""
        if self.timeout_at is not None and ns >= self.timeout_at:
            self.timeout_at = None
            if self.receive_fifo:
                self.timeout_pending = True
                self._update_irq()

    def _set_timeout(self, at: Optional[int]) -> None:
        self.timeout_at = at
        self.deadline_moved(at)

    def _restart_timeout(self) -> None:
        """QEMU's timer_mod(fifo_timeout_timer, now + 4 character times)."""
        self._set_timeout(self.now_ns() + TIMEOUT_CHARACTERS * self.character_ns)

    def state(self) -> dict:
        return {"divisor": self.divisor, "ier": self.ier, "iir": self.iir, "fcr": self.fcr, "lcr": self.lcr,
                "mcr": self.mcr, "lsr": self.lsr, "msr": self.msr, "scr": self.scr, "rbr": self.rbr,
                "thr_pending": self.thr_pending, "receive_fifo": list(self.receive_fifo),
                "trigger_level": self.trigger_level, "irq": self.irq_level,
                "character_ns": self.character_ns, "timeout_at_ns": self.timeout_at,
                "timeout_pending": self.timeout_pending}

    # -- internals ------------------------------------------------------------------------------
    @property
    def fifo_enabled(self) -> bool:
        return bool(self.fcr & FCR_FIFO_ENABLE)

    def _transmit(self, byte: int) -> None:
        if self.mcr & MCR_LOOPBACK:
            self._receive(byte)
        else:
            self.console.write(bytes([byte]))
        # The byte is gone by the time the guest looks again: THR and the shifter are empty.
        self.lsr |= LSR_THRE | LSR_TEMT
        self.thr_pending = True
        self._update_irq()

    def _write_fcr(self, value: int) -> None:
        if (value ^ self.fcr) & FCR_FIFO_ENABLE:
            value |= FCR_CLEAR_RECEIVE | FCR_CLEAR_TRANSMIT   # toggling FIFOs flushes them
        if value & FCR_CLEAR_RECEIVE:
            self.lsr &= ~(LSR_DR | LSR_BI)
            self.receive_fifo.clear()
            self.timeout_pending = False
            if self.timeout_at is not None:
                self._set_timeout(None)
        if value & FCR_CLEAR_TRANSMIT:
            self.lsr |= LSR_THRE
            self.thr_pending = True
        self.fcr = value & 0xC9
        if self.fifo_enabled:
            self.iir |= IIR_FIFO_ENABLED
            self.trigger_level = _TRIGGER_LEVELS[value & 0xC0]
        else:
            self.iir &= ~IIR_FIFO_ENABLED
        self._update_irq()

    def _room(self) -> int:
        if self.fifo_enabled:
            return FIFO_DEPTH - len(self.receive_fifo)
        return 0 if self.lsr & LSR_DR else 1

    def _pull_input(self) -> None:
        if self.mcr & MCR_LOOPBACK:
            return               # in loopback the receiver hears only the transmitter
        received = False
        while self._room() > 0:
            byte = self.console.read_byte()
            if byte is None:
                break
            self._store(byte)
            received = True
        if received:
            self._received()

    def _receive(self, byte: int) -> None:
        self._store(byte)
        self._received()

    def _store(self, byte: int) -> None:
        if self.fifo_enabled:
            if len(self.receive_fifo) >= FIFO_DEPTH:
                self.lsr |= LSR_OE
            else:
                self.receive_fifo.append(byte)
        else:
            if self.lsr & LSR_DR:
                self.lsr |= LSR_OE
            self.rbr = byte
        self.lsr |= LSR_DR

    def _received(self) -> None:
        """What QEMU's serial_receive1 does once for the bytes its chardev hands over together:
        the character timeout set from now, the interrupt line updated."""
        if self.fifo_enabled:
            self._restart_timeout()
        self._update_irq()

    def _read_receiver(self) -> int:
        if self.fifo_enabled:
            value = self.receive_fifo.popleft() if self.receive_fifo else 0
            if not self.receive_fifo:
                self.lsr &= ~(LSR_DR | LSR_BI)
            else:
                self._restart_timeout()     # bytes left: four more character times for them
            self.timeout_pending = False
        else:
            value = self.rbr
            self.lsr &= ~(LSR_DR | LSR_BI)
        self._update_irq()
        if self.ier & IER_RDI:
            self._pull_input()        # room again: the next byte, and the IRQ for it, come now
        return value

    def _update_irq(self) -> None:
        if self.ier & IER_RLSI and self.lsr & LSR_INT_ANY:
            pending = IIR_RLSI
        elif self.ier & IER_RDI and self.timeout_pending:
            # (the receive interrupt's enable masks the timeout too: QEMU's note says real
            # chips do, whatever the data sheet says)
            pending = IIR_CHARACTER_TIMEOUT
        elif (self.ier & IER_RDI and self.lsr & LSR_DR
              and (not self.fifo_enabled or len(self.receive_fifo) >= self.trigger_level)):
            pending = IIR_RDI
        elif self.ier & IER_THRI and self.thr_pending:
            pending = IIR_THRI
        elif self.ier & IER_MSI and self.msr & 0x0F:
            pending = IIR_MSI
        else:
            pending = IIR_NO_INT
        self.iir = pending | (self.iir & 0xF0)
        level = pending != IIR_NO_INT
        # QEMU's serial_update_irq raises the line on every update with an interrupt pending, not
        # only on a change: an edge-triggered I/O APIC pin unmasked while the line was already
        # high (xv6 unmasks COM1's after reading the receiver) requests at the next update.
        if level != self.irq_level or level:
            self.irq_level = level
            if self.set_irq:
                self.set_irq(level)
