"""`vmm run --display`: the VGA text screen live in the terminal (as `qemu -display curses`), with
COM1's output beneath it, and the keys typed there on the PS/2 keyboard; Ctrl-] ends the run.

Plain ANSI escape sequences, not curses: the monitor already reads the terminal in a thread of
its own (curses wants to own the input side, and is not thread-safe), the output is a few escape
sequences any xterm-like terminal knows (no terminfo entry needed, and a test under a pty can
read them), and restoring the terminal is one termios call and one string, done in a `finally`
whatever ended the run."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Optional

from vmm.console import Console, StdioConsole
from vmm.devices.vga import COLUMNS, ROWS, VgaText
from vmm.errors import ConfigError

ESCAPE_KEY = 0x1D            # Ctrl-]: ends the run (SIGINT, as Ctrl-C does without --display)
ESCAPE_NAME = "Ctrl-]"
REFRESH_INTERVAL = 0.05      # seconds: the screen is looked at (4000 bytes compared) this often
SERIAL_LINES_KEPT = 200

# VGA colour numbers (blue is 1, red 4) to ANSI's (red is 1, blue 4).
_ANSI = (0, 4, 2, 6, 1, 5, 3, 7)
# Code page 437's glyphs for 0x00-0x1F and 0x7F (Python's cp437 codec makes them controls).
_CP437_LOW = " ☺☻♥♦♣♠•◘○◙♂♀♪♫☼►◄↕‼¶§▬↨↑↓→←∟↔▲▼"

ENTER = "\x1b[?1049h\x1b[?7l\x1b[2J"           # alternate screen, no autowrap, cleared
LEAVE = "\x1b[0m\x1b[?25h\x1b[?7h\x1b[?1049l"   # attributes off, cursor shown, autowrap, main screen


def cell_glyphs(unicode: bool) -> list[str]:
    """The character each byte of text memory shows: code page 437 (QEMU's curses maps it the
    same way), or printable ASCII and '?' on a terminal that cannot show more."""
    if not unicode:
        return [chr(b) if 0x20 <= b < 0x7F else (" " if b == 0 else "?") for b in range(256)]
    glyphs = [bytes([b]).decode("cp437") for b in range(256)]
    glyphs[:0x20] = list(_CP437_LOW)
    glyphs[0x7F] = "⌂"
    glyphs[0xFF] = " "
    return glyphs


def sgr(attribute: int, colour: bool) -> str:
    """The SGR sequence of a VGA attribute as QEMU's curses shows it: foreground bits 0-2, bit 3
    as bold, background bits 4-6 (bit 7, blink, is dropped as QEMU's vga.c drops it)."""
    if not colour:
        return "\x1b[0;7m" if attribute & 0x70 and not attribute & 0x07 else "\x1b[0m"
    bold = ";1" if attribute & 0x08 else ""
    return f"\x1b[0;{30 + _ANSI[attribute & 7]};{40 + _ANSI[(attribute >> 4) & 7]}{bold}m"


def render_row(cells: bytes, glyphs: list[str], colour: bool) -> str:
    """One row of text memory (character, attribute pairs) as text with SGR changes."""
    out, current = [], None
    for at in range(0, len(cells), 2):
        attribute = cells[at + 1]
        if attribute != current:
            out.append(sgr(attribute, colour))
            current = attribute
        out.append(glyphs[cells[at]])
    return "".join(out) + "\x1b[0m"


class SerialPane(Console):
    """COM1 under --display: what the guest writes is kept as lines, the last of which show
    beneath the screen where the terminal has the rows; no input (the terminal types on the
    keyboard, as QEMU's curses display does)."""

    def __init__(self) -> None:
        self.lines: list[str] = [""]
        self.version = 0
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            for char in data.decode("latin-1"):
                if char == "\n":
                    self.lines.append("")
                elif char == "\b":
                    self.lines[-1] = self.lines[-1][:-1]
                elif char == "\r":
                    continue                  # "\r\n" is a line end; a lone "\r" rewrites nothing here
                elif char >= " " and char != "\x7f":
                    self.lines[-1] += char
            del self.lines[:-SERIAL_LINES_KEPT]
            self.version += 1

    def tail(self, count: int) -> list[str]:
        with self._lock:
            lines = self.lines[:-1] if self.lines[-1] == "" else self.lines
            return lines[-count:] if count > 0 else []


class TerminalKeyboard(StdioConsole):
    """The terminal's keys for the PS/2 keyboard: the terminal in raw mode (Ctrl-C, Ctrl-Z, Ctrl-S
    and Enter reach the guest as keys), read by the console's reader thread; the escape key
    ends the run as Ctrl-C would (SIGINT to the monitor: the run ends `interrupted`, 130)."""

    def __init__(self, in_fd: int) -> None:
        super().__init__(out_fd=-1, in_fd=in_fd)

    def start(self) -> None:
        self._start_reader()

    def _received(self, chunk: bytes) -> bytes:
        if ESCAPE_KEY in chunk:
            os.kill(os.getpid(), signal.SIGINT)
            chunk = chunk[:chunk.index(ESCAPE_KEY)]
        return chunk

    def _enter_character_mode(self) -> None:
        import termios
        import tty
        self._saved_tty = termios.tcgetattr(self._in_fd)
        tty.setraw(self._in_fd, termios.TCSANOW)


class Display:
    """The live screen: a thread looks at text memory, the cursor and COM1's pane every
    REFRESH_INTERVAL and redraws the rows that changed (nothing at all when nothing did), so a
    guest writing the screen a million times a second costs one 4000-byte comparison per 50 ms.
    `stop()` draws the last screen and gives the terminal back as it was; it runs however the
    run ends (a `with` block), and SIGTERM or SIGHUP on the way end the run as Ctrl-C does."""

    def __init__(self, out_fd: int = 1, in_fd: int = 0) -> None:
        if not os.isatty(out_fd):
            raise ConfigError("--display needs a terminal on standard output")
        self.out_fd, self.in_fd = out_fd, in_fd
        self.serial = SerialPane()
        self.keyboard = TerminalKeyboard(in_fd)
        self.screen: Optional[VgaText] = None
        self.refreshes = 0                      # redraws done (the report of a test, not the JSON's)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._saved_signals: dict = {}
        self._shown = None                      # (rows' cells, cursor, pane version, size) on the terminal
        self._rows: list[Optional[bytes]] = []
        term = os.environ.get("TERM", "")
        self.colour = term not in ("", "dumb") and "NO_COLOR" not in os.environ
        encoding = (os.environ.get("LC_ALL") or os.environ.get("LC_CTYPE") or os.environ.get("LANG") or "").upper()
        self.glyphs = cell_glyphs("UTF-8" in encoding or "UTF8" in encoding)

    def __enter__(self) -> "Display":
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def start(self, screen: VgaText) -> None:
        self.screen = screen
        for signum in (signal.SIGTERM, signal.SIGHUP):
            self._saved_signals[signum] = signal.signal(signum, lambda *_: os.kill(os.getpid(), signal.SIGINT))
        self.keyboard.start()                   # raw mode before the first byte is drawn
        self._write(ENTER)
        self._refresh()
        self._thread = threading.Thread(target=self._loop, name="display", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """The last screen drawn, the terminal restored; idempotent."""
        if self.screen is None:
            return
        try:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self._refresh()
        finally:
            self.screen = None
            self._write(LEAVE)
            self.keyboard.close()
            for signum, handler in self._saved_signals.items():
                signal.signal(signum, handler)
            self._saved_signals.clear()

    def _loop(self) -> None:
        while not self._stop.wait(REFRESH_INTERVAL):
            self._refresh()

    def _write(self, text: str) -> None:
        data = memoryview(text.encode("utf-8", "replace"))
        try:
            while data:
                data = data[os.write(self.out_fd, data):]
        except OSError:
            pass         # the terminal went away: the run goes on, its ending says why

    def _refresh(self) -> None:
        screen = self.screen
        if screen is None:
            return
        cells = screen.cells()
        cursor = screen.cursor_position()
        try:
            size = os.get_terminal_size(self.out_fd)
        except OSError:
            size = os.terminal_size((0, 0))
        if not size.columns or not size.lines:      # a terminal that does not say: the screen alone
            size = os.terminal_size((COLUMNS, ROWS + 1))
        state = (cells, cursor, self.serial.version, size)
        if state == self._shown:
            return                                 # nothing changed: nothing drawn
        if self._shown is None or self._shown[3] != size:
            self._rows = [None] * ROWS             # a new terminal size: everything again
            self._write("\x1b[2J")
        out = []
        for row in range(min(ROWS, size.lines)):   # a shorter terminal shows the top rows
            line = cells[2 * COLUMNS * row:2 * COLUMNS * (row + 1)]
            if line != self._rows[row]:
                out.append(f"\x1b[{row + 1};1H" + render_row(line, self.glyphs, self.colour))
                self._rows[row] = line
        if self._shown is None or self._shown[2:] != state[2:]:
            out.append(self._pane(size))
        if cursor is None or cursor[0] >= size.lines:
            out.append("\x1b[?25l")
        else:
            out.append(f"\x1b[{cursor[0] + 1};{cursor[1] + 1}H\x1b[?25h")
        self._write("".join(out))
        self._shown = state
        self.refreshes += 1

    def _pane(self, size: os.terminal_size) -> str:
        """Row 26: the escape key and what is below; then COM1's last lines, as many as fit."""
        if size.lines <= ROWS:
            return ""                              # no room beneath the screen
        width = max(1, min(size.columns, 200))
        status = f"-- {ESCAPE_NAME} ends the run -- COM1 below --"
        out = [f"\x1b[{ROWS + 1};1H\x1b[0;7m{status[:width]}\x1b[0m\x1b[K"]
        room = size.lines - ROWS - 1
        for index, line in enumerate(self.serial.tail(room)):
            out.append(f"\x1b[{ROWS + 2 + index};1H{line[:width]}\x1b[K")
        return "".join(out)
