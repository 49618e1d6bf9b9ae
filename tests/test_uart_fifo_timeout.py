"""The 16550A's receive FIFO character timeout, as Linux's console needs it: Linux sets the FIFO to
interrupt at 8 bytes, and fewer bytes typed (a keystroke, `ls /` and its newline) reach the
driver through the timeout interrupt (IIR 0xCC) that QEMU's serial.c raises four character
times after the last byte. vmm/devices/uart16550.py lacks it: the bytes wait in the FIFO until
more come (found by tests/test_linux.py's shell session, whose `ls /` never reached the shell
under the monitor; the device is another engineer's: recorded here, strictly expected to fail)."""

from __future__ import annotations

import pytest

from tests.guests import EXIT, MODES, idt_setup, needs_qemu, pic_pair, run_qemu_source, run_source

# COM1's IRQ 4 through the master PIC at vector 0x24, the FIFO on with its trigger at 8 bytes,
# the receive interrupt enabled; the guest waits in hlt and exits with the IIR its handler reads.
FIFO_TIMEOUT = "    mov esp, 0x90000\n" + idt_setup({0x24: "com1"}) + pic_pair(0xef, 0xff) + """
    mov dx, 0x3fa
    mov al, 0x81
    out dx, al
    mov dx, 0x3fc
    mov al, 0x08
    out dx, al
    mov dx, 0x3f9
    mov al, 0x01
    out dx, al
    sti
idle:
    hlt
    jmp idle
com1:
    mov dx, 0x3fa
    in al, dx
    movzx eax, al
""" + EXIT
TYPED = b"ls /\n"
CHARACTER_TIMEOUT = 0xCC        # FIFOs enabled (0xC0), character timeout pending (0x0C)


@needs_qemu
def test_qemu_raises_the_character_timeout(tmp_path):
    proc = run_qemu_source(tmp_path, FIFO_TIMEOUT, stdin=TYPED)
    assert proc.returncode == (CHARACTER_TIMEOUT << 1 | 1) & 0xFF


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.xfail(strict=True, reason="vmm/devices/uart16550.py has no FIFO character-timeout interrupt")
def test_character_timeout_under_the_monitor(tmp_path, mode):
    result, _output, _vm = run_source(tmp_path, FIFO_TIMEOUT, stdin=TYPED, mode=mode, timeout=20)
    assert result.guest_value == CHARACTER_TIMEOUT
