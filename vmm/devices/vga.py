"""VGA text mode as QEMU's hw/display/vga.c presents it to a text-mode guest: the CRT controller
(0x3D4/0x3D5: cursor position and start address read back), the miscellaneous output and input
status registers, and the 80x25 screen read from text memory at 0xB8000 for the report."""

from __future__ import annotations

from typing import Callable

VGA_BASE = 0x3C0            # ports 0x3C0-0x3DF, as QEMU's VGA claims them
VGA_PORTS = 0x20
TEXT_MEMORY = 0xB8000
COLUMNS, ROWS = 80, 25

CRTC_INDEX, CRTC_DATA = 0x3D4, 0x3D5
CRTC_INDEX_MONO, CRTC_DATA_MONO = 0x3B4, 0x3B5
MISC_WRITE, MISC_READ, INPUT_STATUS_1 = 0x3C2, 0x3CC, 0x3DA
CR_START_HIGH, CR_START_LOW, CR_CURSOR_HIGH, CR_CURSOR_LOW = 0x0C, 0x0D, 0x0E, 0x0F
CR_CURSOR_START = 0x0A
CURSOR_DISABLE = 0x20       # CR0A bit 5: the cursor is off
CR_VSYNC_END = 0x11
ST01_V_RETRACE, ST01_DISP_ENABLE = 0x08, 0x01

# The CRT controller's registers 0x00-0x18 as SeaBIOS leaves them in mode 3 (measured under
# qemu-system-i386 7.2 -vga std): the cursor at row 2 after SeaBIOS's two lines.
BOOT_CRTC = bytes.fromhex("5f4f50825581bf1f004f0d0e000000a09c8e8f281f96b9a3ff")
BOOT_MISC = 0x67
# What SeaBIOS has printed when the kernel starts (QEMU 7.2's, white on black, attribute 0x07).
BOOT_SCREEN = ("SeaBIOS (version 1.16.2-debian-1.16.2-1)", "Booting from ROM...")
BLANK_ATTRIBUTE = 0x07


def boot_text_memory() -> bytes:
    """The 80x25 text page as QEMU's screen shows it at the Multiboot entry."""
    cells = bytearray()
    for row in range(ROWS):
        line = BOOT_SCREEN[row] if row < len(BOOT_SCREEN) else ""
        for character in line.ljust(COLUMNS).encode("latin-1"):
            cells += bytes([character, BLANK_ATTRIBUTE])
    return bytes(cells)


class VgaText:
    """The registers a text-mode guest touches; other VGA registers read 0 and take writes, as
    QEMU's do for a guest that does not program them. Text memory is guest RAM (read through
    `read_memory`), where QEMU maps its VGA window: a text guest sees the same bytes."""

    name = "vga"
    access_width = 1

    def __init__(self, read_memory: Callable[[int, int], bytes]) -> None:
        self.read_memory = read_memory
        self.crtc = bytearray(256)
        self.crtc[:len(BOOT_CRTC)] = BOOT_CRTC
        self.crtc_index = 0
        self.misc = BOOT_MISC
        self.st01 = 0
        self.other: dict[int, int] = {}        # registers stored for read-back only

    def _color(self) -> bool:
        return bool(self.misc & 0x01)          # I/O address select: 0x3Dx (color) or 0x3Bx

    def io_read(self, offset: int, size: int) -> int:
        port = VGA_BASE + offset
        if port in (CRTC_INDEX, CRTC_INDEX_MONO):
            return self.crtc_index if self._answers(port) else 0xFF
        if port in (CRTC_DATA, CRTC_DATA_MONO):
            return self.crtc[self.crtc_index] if self._answers(port) else 0xFF
        if port == MISC_READ:
            return self.misc
        if port == INPUT_STATUS_1:
            # Each read toggles retrace and display-enable, so guests that wait for a
            # retrace edge see one (QEMU: st01 ^= ST01_V_RETRACE | ST01_DISP_ENABLE).
            self.st01 ^= ST01_V_RETRACE | ST01_DISP_ENABLE
            return self.st01
        return self.other.get(port, 0)

    def _answers(self, port: int) -> bool:
        return (port & 0xF0 == 0xD0) == self._color()

    def io_write(self, offset: int, size: int, value: int) -> None:
        port, value = VGA_BASE + offset, value & 0xFF
        if port in (CRTC_INDEX, CRTC_INDEX_MONO):
            if self._answers(port):
                self.crtc_index = value
        elif port in (CRTC_DATA, CRTC_DATA_MONO):
            if not self._answers(port):
                return
            index = self.crtc_index
            # Registers 0-7 are write-protected while CR11 bit 7 is set, except CR7's bit 4.
            if self.crtc[CR_VSYNC_END] & 0x80 and index <= 7:
                if index == 7:
                    self.crtc[7] = (self.crtc[7] & ~0x10) | (value & 0x10)
                return
            self.crtc[index] = value
        elif port == MISC_WRITE:
            self.misc = value
        else:
            self.other[port] = value

    # -- the screen ----------------------------------------------------------------------------
    @property
    def start_address(self) -> int:
        return (self.crtc[CR_START_HIGH] << 8) | self.crtc[CR_START_LOW]

    @property
    def cursor(self) -> int:
        return (self.crtc[CR_CURSOR_HIGH] << 8) | self.crtc[CR_CURSOR_LOW]

    def cells(self) -> bytes:
        """The 80x25 (character, attribute) pairs the screen shows, from the start address."""
        return self.read_memory(TEXT_MEMORY + 2 * self.start_address, 2 * COLUMNS * ROWS)

    def cursor_position(self):
        """(row, column) of the hardware cursor, or None while it is off or off the screen."""
        cursor = self.cursor - self.start_address
        if self.crtc[CR_CURSOR_START] & CURSOR_DISABLE or not 0 <= cursor < COLUMNS * ROWS:
            return None
        return divmod(cursor, COLUMNS)

    def text(self) -> list[str]:
        """The 25 rows of 80 characters the screen shows (from the start address), code page
        437's printable ASCII as is, other bytes as '.' except 0 (blank)."""
        cells = self.cells()
        rows = []
        for row in range(ROWS):
            chars = cells[2 * COLUMNS * row:2 * COLUMNS * (row + 1):2]
            rows.append("".join(chr(c) if 0x20 <= c < 0x7F else (" " if c == 0 else ".") for c in chars).rstrip())
        return rows

    def screen(self) -> dict:
        """The report's view: the rows (trailing blanks dropped), cursor row and column."""
        cursor = self.cursor - self.start_address
        return {"rows": self.text(), "cursor": [cursor // COLUMNS, cursor % COLUMNS],
                "start_address": self.start_address}

    def render(self) -> str:
        """The screen for a terminal: framed 80x25, as --screen prints it."""
        border = "+" + "-" * COLUMNS + "+"
        return "\n".join([border] + [f"|{row.ljust(COLUMNS)}|" for row in self.text()] + [border]) + "\n"

    def state(self) -> dict:
        return {"crtc": bytes(self.crtc).hex(), "crtc_index": self.crtc_index, "misc": self.misc,
                "st01": self.st01, "other": dict(self.other)}
