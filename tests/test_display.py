"""`vmm run --display` under a pseudo-terminal (issue 14): the VGA text screen is drawn live with its
colours and hardware cursor, COM1's output beneath it, the keys typed there reach the guest's PS/2
keyboard, Ctrl-] ends the run, and the terminal is given back as it was however the run ends."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time

from tests.samples import REPO_ROOT
from tests.test_keyboard import keyboard_guest
from vmm.display import ENTER, LEAVE, SerialPane, render_row, cell_glyphs

# The keyboard guest with a screen: "Hello, VGA" at row 5 in yellow on blue (attribute 0x1E), the
# hardware cursor moved behind it (row 5, column 10: 410 = 0x19A).
VGA_PRELUDE = "    mov esi, 0xb8320\n" + "".join(
    f"    mov word ptr [esi + {2 * index}], {0x1E00 | ord(char):#x}\n" for index, char in enumerate("Hello, VGA")) + """
    mov dx, 0x3d4
    mov al, 0x0e
    out dx, al
    inc dx
    mov al, 0x01
    out dx, al
    dec dx
    mov al, 0x0f
    out dx, al
    inc dx
    mov al, 0x9a
    out dx, al
"""


class Terminal:
    """Just enough of a VT100 to read back what --display drew: cursor moves (CSI row;col H),
    erase to the end of the line (K) and of the screen (2J); SGR and the private modes (?...h/l)
    are noted, not rendered."""

    def __init__(self, rows: int, columns: int) -> None:
        self.grid = [[" "] * columns for _ in range(rows)]
        self.row = self.column = 0
        self.modes: list[str] = []

    def feed(self, text: str) -> None:
        for token in re.finditer(r"\x1b\[([?0-9;]*)([A-Za-z])|([^\x1b])", text):
            params, final, char = token.groups()
            if char is not None:
                if char not in "\r\n" and self.row < len(self.grid) and self.column < len(self.grid[0]):
                    self.grid[self.row][self.column] = char
                self.column += 1
            elif final == "H":
                row, _, column = params.partition(";")
                self.row, self.column = int(row or 1) - 1, int(column or 1) - 1
            elif final == "K":
                self.grid[self.row][self.column:] = [" "] * (len(self.grid[0]) - self.column)
            elif final == "J":
                self.grid = [[" "] * len(self.grid[0]) for _ in self.grid]
            elif final in "hl" and params.startswith("?"):
                self.modes.append(params + final)

    def line(self, row: int) -> str:
        return "".join(self.grid[row]).rstrip()


READY = b"\x1b[27;1HR"       # COM1's `R` drawn beneath the screen: the guest waits for keys


def run_in_terminal(tmp_path, source: str, script=(), *options: str, rows: int = 40, wait: float = 60):
    """`vmm run --display` on the slave of a pty (rows x 100); `script`: (what the terminal
    must have shown, the keys then typed) in order. Returns (status, everything written to the
    terminal, the terminal's attributes before and after)."""
    script = list(script)
    guest = tmp_path / "guest.s"
    guest.write_text(source)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, 100, 0, 0))
    before = termios.tcgetattr(slave)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TERM="xterm", LANG="C.UTF-8")
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "run", str(guest), "--display", "--timeout", "60", *options],
                            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO_ROOT, start_new_session=True)
    output = b""
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.05)[0]:
                output += os.read(master, 65536)
            if script and script[0][0] in output:
                os.write(master, script.pop(0)[1])
            if proc.poll() is not None:
                while select.select([master], [], [], 0.2)[0]:
                    output += os.read(master, 65536)
                break
        status = proc.wait(timeout=10)
        return status, output.decode("utf-8", "replace"), before, termios.tcgetattr(slave)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


def test_the_screen_is_drawn_live_and_keys_typed_reach_the_guest(tmp_path):
    status, output, before, after = run_in_terminal(tmp_path, VGA_PRELUDE + keyboard_guest(), [(READY, b"a\x03\r")])
    assert status == 0, output[-500:]
    assert output.startswith(ENTER) and before == after          # the terminal given back as it was
    screen = output[:output.rindex(LEAVE)]
    terminal = Terminal(40, 100)
    terminal.feed(screen)
    assert terminal.line(0) == "SeaBIOS (version 1.16.2-debian-1.16.2-1)" and terminal.line(1) == "Booting from ROM..."
    assert terminal.line(5) == "Hello, VGA"
    assert "\x1b[0;33;44;1mHello, VGA\x1b[0;37;40m" in screen     # yellow (bold brown) on blue
    assert terminal.line(25).startswith("-- Ctrl-] ends the run")
    # COM1 beneath: a, then Ctrl-C as keys (the terminal in raw mode), Enter
    assert [terminal.line(26), terminal.line(27)] == ["R", "1e 9e 1d 2e ae 9d 1c 9c"]
    assert screen.endswith("\x1b[6;11H\x1b[?25h")                # the hardware cursor, last
    assert output.endswith(LEAVE), output[-200:]            # (isa-debug-exit's ending is quiet)


def test_ctrl_right_bracket_ends_the_run_as_ctrl_c_and_restores_the_terminal(tmp_path):
    status, output, before, after = run_in_terminal(tmp_path, keyboard_guest(), [(READY, b"a"), (b"1e 9e", b"\x1d")])
    assert status == 130 and before == after
    assert LEAVE + "vmm: interrupted by the user (Ctrl-C)" in output
    assert "1e 9e" in output                                      # the key before it reached the guest


def test_a_guest_that_crashes_leaves_the_terminal_restored(tmp_path):
    status, output, before, after = run_in_terminal(tmp_path, "    mov esp, 0x10\n    lidt [0x7000]\n    int 0x30\n")
    assert status == 120 and before == after and output.startswith(ENTER)
    assert LEAVE + "vmm: " in output and "triple fault" in output[output.index(LEAVE):]


def test_display_needs_a_terminal_and_one_keyboard(tmp_path):
    guest = tmp_path / "guest.s"
    guest.write_text(keyboard_guest())
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    piped = subprocess.run([sys.executable, "-m", "vmm", "run", str(guest), "--display"],
                           capture_output=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert (piped.returncode, piped.stdout) == (2, b"")
    assert piped.stderr == b"vmm: --display needs a terminal on standard output\n"
    status, output, before, after = run_in_terminal(tmp_path, keyboard_guest(), [], "--keyboard-input", "-", wait=20)
    assert status == 2 and before == after and "--keyboard-input and --display" in output and ENTER not in output


def test_rows_are_drawn_with_colours_and_code_page_437():
    glyphs = cell_glyphs(unicode=True)
    row = bytes([ord("A"), 0x07, 0xC9, 0x4F, 0x01, 0x4F, 0x00, 0x07])
    assert render_row(row, glyphs, colour=True) == "\x1b[0;37;40mA\x1b[0;37;41;1m╔☺\x1b[0;37;40m \x1b[0m"
    assert render_row(row, cell_glyphs(unicode=False), colour=False) == "\x1b[0mA\x1b[0m??\x1b[0m \x1b[0m"
    pane = SerialPane()
    pane.write(b"one\r\ntwo\nthree!\b")
    assert pane.tail(2) == ["two", "three"] and pane.tail(0) == []


def test_the_screen_is_redrawn_only_when_it_changed_and_at_most_every_50_ms():
    """In process, on a pty: 200 stores to text memory within a few milliseconds are one redraw
    of the one row they touched; half a second with nothing changed draws nothing."""
    from vmm.devices.vga import TEXT_MEMORY, VgaText, boot_text_memory
    from vmm.display import Display
    memory = bytearray(0x100000)
    memory[TEXT_MEMORY:TEXT_MEMORY + 4000] = boot_text_memory()
    vga = VgaText(lambda address, size: bytes(memory[address:address + size]))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 80, 0, 0))
    display = Display(out_fd=slave, in_fd=slave)
    try:
        with display:
            display.start(vga)
            time.sleep(0.2)
            first = display.refreshes
            time.sleep(0.5)
            assert display.refreshes == first == 1
            os.read(master, 65536)
            for count in range(200):
                memory[TEXT_MEMORY + 2 * (80 * 7 + count % 80)] = ord("0") + count % 10
            time.sleep(0.3)
            assert display.refreshes == 2
            drawn = os.read(master, 65536).decode()
            assert drawn.count("\x1b[8;1H") == 1 and "\x1b[1;1H" not in drawn
    finally:
        os.close(master)
        os.close(slave)


def test_a_terminal_shorter_than_the_screen_shows_its_top_rows_and_no_pane(tmp_path):
    """24 rows: the screen's first 24 are drawn where they belong; nothing is written past the
    last row (the terminal would draw it over that row), neither row 25 nor COM1's pane."""
    status, output, before, after = run_in_terminal(tmp_path, VGA_PRELUDE + keyboard_guest(),
                                                    [(b"Hello, VGA", b"\r")], rows=24)
    assert status == 0 and before == after
    assert "\x1b[24;1H" in output and "\x1b[25;1H" not in output and "\x1b[26;1H" not in output
    assert "COM1 below" not in output
