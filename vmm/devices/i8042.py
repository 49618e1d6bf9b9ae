"""The PS/2 controller (i8042 at 0x60/0x64) and its keyboard, as QEMU's hw/input/pckbd.c and
hw/input/ps2.c model them: status, command byte, self-tests, output port, keyboard commands;
the pulse-reset command (0xFE) resets the machine; host keystrokes become the keyboard's scan codes."""

from __future__ import annotations

import collections
from typing import Callable, Optional

from vmm.keyboard import StrokeDecoder, key_events, scan_codes, translate

I8042_DATA, I8042_COMMAND = 0x60, 0x64
KEYBOARD_IRQ, MOUSE_IRQ = 1, 12

# Status register (0x64 read)
STAT_OBF, STAT_SELFTEST, STAT_CMD, STAT_UNLOCKED, STAT_MOUSE_OBF = 0x01, 0x04, 0x08, 0x10, 0x20
# Command byte ("mode")
MODE_KBD_INT, MODE_MOUSE_INT, MODE_SYS, MODE_DISABLE_KBD, MODE_DISABLE_MOUSE, MODE_KCC = \
    0x01, 0x02, 0x04, 0x10, 0x20, 0x40
# Output port
OUT_RESET, OUT_A20 = 0x01, 0x02

# What SeaBIOS leaves under QEMU 7.2 (measured): command byte 0x61 (keyboard interrupt, mouse
# disabled, scan-code translation), status 0x1c (unlocked, last write a command, system flag).
BOOT_MODE = MODE_KCC | MODE_DISABLE_MOUSE | MODE_KBD_INT
BOOT_STATUS = STAT_UNLOCKED | STAT_SELFTEST | STAT_CMD

KBD_ACK, KBD_RESEND, KBD_SELFTEST_OK, KBD_ECHO = 0xFA, 0xFE, 0xAA, 0xEE


class Keyboard:
    """The PS/2 keyboard's side: commands written to port 0x60 get their replies queued."""

    def __init__(self) -> None:
        self.pending_command: Optional[int] = None     # a command waiting for its argument byte
        self.scanning = True
        self.scancode_set = 2
        self.leds = 0
        self.translate = False       # the controller's command byte asks for set 1 (KCC): ps2.c's
        self._translation = {}       # translate flag, and its state (a break code's 0xF0 seen)

    def key_event(self, key: str, down: bool) -> list[int]:
        """The bytes one key event puts in the output buffer: the scan code in the keyboard's set,
        translated to set 1 by the controller when its command byte says so (QEMU does both in
        ps2_keyboard_event and ps2_put_keycode; SeaBIOS leaves set 2 with translation on)."""
        codes = scan_codes(key, down, self.scancode_set)
        return translate(codes, self._translation) if self.translate else codes

    def write(self, value: int) -> list[int]:
        if self.pending_command is not None:
            command, self.pending_command = self.pending_command, None
            if command == 0xED:
                self.leds = value & 0x07
            elif command == 0xF0:
                if value == 0:
                    return [KBD_ACK, self.scancode_set]
                if value in (1, 2, 3):
                    self.scancode_set = value
            return [KBD_ACK]
        if value in (0xED, 0xF0, 0xF3):       # set LEDs, scan-code set, typematic: one argument
            self.pending_command = value
            return [KBD_ACK]
        if value == 0xEE:
            return [KBD_ECHO]
        if value == 0xF2:                      # identify: an MF2 keyboard, as QEMU answers it
            return [KBD_ACK, 0xAB, 0x41 if self.translate else 0x83]
        if value == 0xF4:
            self.scanning = True
            return [KBD_ACK]
        if value in (0xF5, 0xF6):
            self.scanning = value == 0xF6
            return [KBD_ACK]
        if value == 0xFF:                      # reset and self-test
            self.scanning, self.scancode_set, self.leds = True, 2, 0
            return [KBD_ACK, KBD_SELFTEST_OK]
        return [KBD_ACK]                       # QEMU acknowledges what it does not model

    def state(self) -> dict:
        return {"pending_command": self.pending_command, "scanning": self.scanning,
                "scancode_set": self.scancode_set, "leds": self.leds, "translate": self.translate}


class I8042:
    """Two ports: this device at 0x60 (data), command_port() at 0x64 (status and commands); the
    three between them are not the controller's (0x61 is the speaker's port B). Bytes from the controller and from
    the keyboard share one output queue; the keyboard's raise IRQ1 while the command byte asks.

    Host keystrokes (`host_input`, a Console's input side: a terminal under --display, or
    --keyboard-input) make it an input source of the interrupt platform, as a UART is: armed
    while the command byte enables the keyboard's interrupt and interface and the keyboard scans;
    the next stroke's scan codes enter the output queue once it is empty (at a sync, a read of
    the status or the last byte, the interrupt enabled), so strokes reach the guest at the pace
    it reads them and none is dropped (QEMU's 16-byte queue drops what overflows it)."""

    name = "i8042"
    access_width = 1

    def __init__(self, on_reset: Callable[[str], None], set_irq: Optional[Callable[[int, bool], None]] = None,
                 host_input=None) -> None:
        self.on_reset, self.set_irq = on_reset, set_irq
        self.keyboard = Keyboard()
        self.mode = BOOT_MODE
        self.keyboard.translate = bool(self.mode & MODE_KCC)
        self.host_input = host_input                # vmm.console.Console (input side), or None
        self._decoder = StrokeDecoder()
        self._strokes: collections.deque = collections.deque()     # decoded, not yet sent
        self.status = BOOT_STATUS
        self.outport = OUT_A20 | OUT_RESET
        self.write_command: Optional[int] = None    # a controller command waiting for its data byte
        self.queue: collections.deque = collections.deque()      # (byte, from_mouse)
        self.irq_levels = {KEYBOARD_IRQ: False, MOUSE_IRQ: False}
        self.last_read = 0

    def command_port(self) -> "CommandPort":
        """The device to register at 0x64 (the bus hands each range offsets from its own base)."""
        return CommandPort(self)

    # -- guest side ----------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        if offset == I8042_COMMAND - I8042_DATA:
            if not self.queue:
                self._pull_input()
            return self.status | (STAT_OBF if self.queue else 0) | \
                (STAT_MOUSE_OBF if self.queue and self.queue[0][1] else 0)
        if not self.queue:
            return self.last_read
        value, _mouse = self.queue.popleft()
        self.last_read = value            # an empty buffer reads the last byte again (QEMU)
        # Reading deasserts the IRQ and more data asserts it again (QEMU's ps2_read_data): an
        # edge per byte, so a handler that reads one byte per interrupt gets the next one too.
        self._lower_irqs()
        if not self.queue:
            self._pull_input()
        self._update_irq()
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == I8042_COMMAND - I8042_DATA:
            self.status |= STAT_CMD
            self._command(value)
            return
        self.status &= ~STAT_CMD
        command, self.write_command = self.write_command, None
        if command is None:
            self.mode &= ~MODE_DISABLE_KBD    # writing to the keyboard enables its interface
            self._queue(self.keyboard.write(value))
        elif command == 0x60:
            self.mode = value
            self.keyboard.translate = bool(value & MODE_KCC)
            self.status = (self.status & ~STAT_SELFTEST) | (STAT_SELFTEST if value & MODE_SYS else 0)
            self._pull_input()
            self._update_irq()
        elif command == 0xD1:
            self._write_outport(value)
        elif command == 0xD2:
            self._queue([value])
        elif command == 0xD3:
            self._queue([value], mouse=True)
        elif command == 0xD4:
            self._queue([KBD_RESEND], mouse=True)      # no mouse behind the aux port here: QEMU's
            # ps2 mouse would answer; a guest that probes it sees a resend (documented gap)

    def _command(self, command: int) -> None:
        if command == 0x20:
            self._queue([self.mode], controller=True)
        elif command in (0x60, 0xD1, 0xD2, 0xD3, 0xD4):
            self.write_command = command
        elif command == 0xA7:
            self.mode |= MODE_DISABLE_MOUSE
        elif command == 0xA8:
            self.mode &= ~MODE_DISABLE_MOUSE
        elif command in (0xA9, 0xAB):          # interface tests: 0 = no error
            self._queue([0x00], controller=True)
        elif command == 0xAA:                  # controller self-test
            self.status |= STAT_SELFTEST
            self._queue([0x55], controller=True)
        elif command == 0xAD:
            self.mode |= MODE_DISABLE_KBD
            self._update_irq()
        elif command == 0xAE:
            self.mode &= ~MODE_DISABLE_KBD
            self._pull_input()
            self._update_irq()
        elif command == 0xC0:                  # input port: keyboard not locked
            self._queue([0x80], controller=True)
        elif command == 0xD0:
            self._queue([self.outport | (0x10 if self.queue else 0)], controller=True)
        elif command & 0xF0 == 0xF0:           # pulse output lines low: bit 0 is the reset line
            if not command & OUT_RESET:
                self.on_reset(f"keyboard controller pulse-reset command {command:#04x}")
        # other commands are ignored, as QEMU ignores them

    def _write_outport(self, value: int) -> None:
        self.outport = value
        if not value & OUT_RESET:
            self.on_reset(f"keyboard controller output port reset line (wrote {value:#04x})")

    def _queue(self, data: list[int], controller: bool = False, mouse: bool = False) -> None:
        for byte in data:
            self.queue.append((byte, mouse))
        self._update_irq()

    def _lower_irqs(self) -> None:
        for irq, level in self.irq_levels.items():
            if level:
                self.irq_levels[irq] = False
                if self.set_irq:
                    self.set_irq(irq, False)

    def _update_irq(self) -> None:
        # A disabled keyboard interface raises no IRQ 1 (QEMU's kbd_update_irq_lines).
        kbd = bool(self.queue) and not self.queue[0][1] and bool(self.mode & MODE_KBD_INT) \
            and not self.mode & MODE_DISABLE_KBD
        mouse = bool(self.queue) and self.queue[0][1] and bool(self.mode & MODE_MOUSE_INT)
        for irq, level in ((KEYBOARD_IRQ, kbd), (MOUSE_IRQ, mouse)):
            if level != self.irq_levels[irq]:
                self.irq_levels[irq] = level
                if self.set_irq:
                    self.set_irq(irq, level)

    # -- host keystrokes (the interrupt platform's input-source interface) ----------------------
    def _keys_flow(self) -> bool:
        return not self.mode & MODE_DISABLE_KBD and self.keyboard.scanning

    def armed(self) -> bool:
        return self.host_input is not None and bool(self.mode & MODE_KBD_INT) and self._keys_flow() \
            and self.input_may_arrive()

    def poll(self) -> None:
        self._pull_input()

    def input_may_arrive(self) -> bool:
        return bool(self._strokes) or (self.host_input is not None and self.host_input.input_may_arrive())

    def wait_input(self, timeout: float) -> None:
        self.host_input.wait_input(timeout)

    def on_input(self, callback: Callable[[], None]) -> None:
        if self.host_input is not None:
            self.host_input.on_input(callback)

    def _pull_input(self) -> None:
        """The next stroke's scan codes into the empty output queue (one IRQ edge for them)."""
        if self.host_input is None or self.queue or not self._keys_flow():
            return
        if not self._strokes:
            data = bytearray()
            while (byte := self.host_input.read_byte()) is not None:
                data.append(byte)
            if data:
                self._strokes.extend(self._decoder.feed(bytes(data)))
        if self._strokes:
            codes = []
            for key, down in key_events(self._strokes.popleft()):
                codes += self.keyboard.key_event(key, down)
            self._queue(codes)

    def state(self) -> dict:
        return {"last_read": self.last_read, "mode": self.mode, "status": self.status, "outport": self.outport,
                "write_command": self.write_command, "queue": [list(item) for item in self.queue],
                "keyboard": self.keyboard.state()}


class CommandPort:
    """Port 0x64 of the controller: status on read, controller commands on write."""

    name = I8042.name
    access_width = 1

    def __init__(self, controller: I8042) -> None:
        self.controller = controller

    def io_read(self, offset: int, size: int) -> int:
        return self.controller.io_read(I8042_COMMAND - I8042_DATA, size)

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.controller.io_write(I8042_COMMAND - I8042_DATA, size, value)
