"""The 16550A's receive FIFO character timeout, as Linux's console needs it: Linux sets the FIFO to
interrupt at 8 bytes, and fewer bytes typed (a keystroke, `ls /` and its newline) reach the
driver through the timeout interrupt (IIR 0xCC) that QEMU's serial.c raises four character
times after the last byte (found by tests/test_linux.py's shell session, whose `ls /` never
reached the shell before the UART had it). The timeout is a deadline on guest time that the
UART tells the interrupt platform and the platform fires (vmm/devices/uart16550.py,
InterruptPlatform.deadline_moved): the guests here, in every mode, print what qemu-system-i386
7.2 printed for them, and the timeout comes at the first guest cycle at or after its deadline."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.cli import type_when_ready
from tests.guests import (EXIT, EXIT0, HEX, MODES, QEMU_PLATFORM, idt_setup, needs_qemu, pic_pair,
                          run_qemu_source, run_source)
from tests.samples import REPO_ROOT
from tests.samples import build_samples as bs
from vmm.clock import CPU_HZ
from vmm.console import BufferConsole
from vmm.devices.uart16550 import (IER_DLM, IIR_FCR, LCR, LSR, MCR, RBR_THR_DLL, RESET_CHARACTER_NS, Uart16550,
                                   character_time_ns)
from vmm.exits import StopReason
from vmm.interrupts import InterruptPlatform

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
def test_character_timeout_under_the_monitor(tmp_path, mode):
    result, _output, _vm = run_source(tmp_path, FIFO_TIMEOUT, stdin=TYPED, mode=mode, timeout=20)
    assert result.guest_value == CHARACTER_TIMEOUT


# -- guests whose output was recorded from qemu-system-i386 7.2 -----------------------------------
# QEMU's chardev hands COM1 a byte of stdin before the guest runs (the receiver has room with the
# FIFOs off), and the guest's FCR write that enables them flushes it; later bytes come when its
# main loop gets to them. The guests print what does not depend on that: IIR, LSR, the bytes of
# a loopback. Under the monitor a UART takes input when the guest looks at it (a register read,
# its receive interrupt enabled): a guest that waits with that interrupt off reads LSR first.

def uart_write(offset: int, value: int) -> str:
    return f"    mov dx, {0x3F8 + offset:#x}\n    mov al, {value:#04x}\n    out dx, al\n"


def uart_show(offset: int) -> str:
    """Read a COM1 register and print it in hex, then a space."""
    return f"    mov dx, {0x3F8 + offset:#x}\n    in al, dx\n    call hex8\n    call space\n"


def uart_keep(offset: int) -> str:
    """Read a COM1 register into the byte at EDI (printed later: a loopback hears its own output)."""
    return f"    mov dx, {0x3F8 + offset:#x}\n    in al, dx\n    mov byte ptr [edi], al\n    inc edi\n"


# The store behind the PIC's setup is where the run that brought time into use ends: under direct
# and vt that run resumes from its start when the stop lands in a later engine block (the EIP the
# engine leaves is stale), and an OUT before the store would run twice (the loopback's byte sent
# twice); the setup itself may run twice.
COM1_SETUP = ("    mov esp, 0x90000\n" + idt_setup({0x24: "com1"}) + pic_pair(0xef, 0xff)
              + "    mov dword ptr [0x7000], 0\n")
IDLE = "    sti\nidle:\n    hlt\n    jmp idle\n"
EOI_IRET = "    mov al, 0x20\n    out 0x20, al\n    iretd\n"
SECOND_INTERRUPT = "    inc dword ptr [0x7000]\n    cmp dword ptr [0x7000], 2\n    je second\n"
# Read the receiver while LSR says data ready, then print LSR and IIR.
DRAIN = """
drain:
    mov dx, 0x3fd
    in al, dx
    test al, 1
    jz drained
    mov dx, 0x3f8
    in al, dx
    jmp drain
drained:
    call hex8
    call space
""" + uart_show(2)
# Wait for two of the PIT's interrupts at its boot period (18.2 Hz: 110 ms, the timeout 4 ms).
TWO_TICKS = """
    mov dword ptr [0x7000], 0
    sti
ticks:
    hlt
    cmp dword ptr [0x7000], 2
    jb ticks
    cli
"""
TICK = "tick:\n    inc dword ptr [0x7000]\n    push eax\n    mov al, 0x20\n    out 0x20, al\n    pop eax\n    iretd\n"
PRINT_KEPT = """
    mov dx, 0x3fc
    mov al, 0x08
    out dx, al
    mov esi, 0x7100
print_kept:
    cmp esi, edi
    je printed
    mov al, byte ptr [esi]
    call hex8
    call space
    inc esi
    jmp print_kept
printed:
"""


def receive_interrupt_off(fcr: int) -> str:
    """FCR written, the receive interrupt off: the bytes looked at (LSR), two PIT ticks (the
    timeout would have come 25 times over), IIR; then the receive interrupt enabled with IRQ 4
    masked: IIR again."""
    return ("    mov esp, 0x90000\n" + idt_setup({0x20: "tick"}) + pic_pair(0xfe, 0xff) + uart_write(2, fcr)
            + "    mov dx, 0x3fd\n    in al, dx\n" + TWO_TICKS + uart_show(2) + uart_write(1, 0x01) + uart_show(2)
            + "    call nl\n" + EXIT0 + TICK + HEX)


RECORDED = {
    # Trigger 8, bytes typed below it: the timeout (CC); one byte read clears it (C1) and sets
    # the timer again for the bytes left: the next interrupt is the timeout again (CC); drained,
    # LSR has no data ready (60) and IIR nothing pending (C1).
    "cleared_by_reading_the_receiver": (
        COM1_SETUP + uart_write(2, 0x81) + uart_write(1, 0x01) + IDLE + "com1:\n" + SECOND_INTERRUPT
        + uart_show(2) + "    mov dx, 0x3f8\n    in al, dx\n" + uart_show(2) + EOI_IRET
        + "second:\n" + uart_show(2) + DRAIN + "    call nl\n" + EXIT0 + HEX,
        TYPED, b"cc c1 cc 60 c1 \n"),
    # Loopback, trigger 8: a byte sent comes back, and its timeout (CC, the byte 61, IIR C1 and
    # LSR 60 once it is read); a new byte sets the timer again: CC, the byte 62, LSR 60, IIR C1.
    "set_again_by_a_new_byte": (
        COM1_SETUP + uart_write(2, 0x81) + uart_write(4, 0x18) + uart_write(1, 0x01)
        + "    mov edi, 0x7100\n" + uart_write(0, 0x61) + IDLE + "com1:\n" + SECOND_INTERRUPT
        + uart_keep(2) + uart_keep(0) + uart_keep(2) + uart_keep(5) + uart_write(0, 0x62) + EOI_IRET
        + "second:\n" + uart_keep(2) + uart_keep(0) + uart_keep(5) + uart_keep(2) + PRINT_KEPT
        + "    call nl\n" + EXIT0 + HEX,
        b"", b"cc 61 c1 60 cc 62 60 c1 \n"),
    # The receive interrupt off: the timeout comes all the same but IIR shows nothing (C1) until
    # the interrupt is enabled, which shows it at once (CC: QEMU keeps it pending meanwhile).
    "receive_interrupt_off": (receive_interrupt_off(0x81), TYPED, b"c1 cc \n"),
    # The FIFOs off: no timeout, ever: nothing pending (01), then the received data (04).
    "fifo_off": (receive_interrupt_off(0x00), TYPED, b"01 04 \n"),
    # No PIC touched, no interrupt: the guest polls IIR until it changes from C1 (the timeout
    # brings guest time into use as a chip access would: it hung under direct, trap and vt).
    "polled_without_interrupts": (
        "    mov esp, 0x90000\n" + uart_write(2, 0x81) + uart_write(1, 0x01)
        + "poll:\n    mov dx, 0x3fa\n    in al, dx\n    cmp al, 0xc1\n    je poll\n    call hex8\n    call nl\n"
        + EXIT0 + HEX,
        TYPED, b"cc\n"),
    # Trigger 4, four bytes (QEMU's first of "abcde" flushed): the trigger level's interrupt
    # (C4), not the timeout; drained: LSR 60, IIR C1.
    "at_the_trigger_level": (
        COM1_SETUP + uart_write(2, 0x41) + uart_write(1, 0x01) + IDLE + "com1:\n" + uart_show(2) + DRAIN
        + "    call nl\n" + EXIT0 + HEX,
        b"abcde", b"c4 60 c1 \n"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(RECORDED))
def test_recorded_guest_under_the_monitor(tmp_path, case, mode):
    source, stdin, expected = RECORDED[case]
    result, output, _vm = run_source(tmp_path, source, stdin=stdin, mode=mode, timeout=30)
    assert (result.reason, output) == (StopReason.DEBUG_EXIT, expected), result.message


@needs_qemu
@pytest.mark.parametrize("case", sorted(RECORDED))
def test_recorded_guest_under_qemu(tmp_path, case):
    source, stdin, expected = RECORDED[case]
    assert run_qemu_source(tmp_path, source, stdin=stdin).stdout == expected


# -- typed while the guest idles: the console's input, below the trigger level ----------------------
# Trigger 8, the receive interrupt on; `R` printed, then hlt until the handler has run. The line is
# typed after the `R` (QEMU's receiver then has the FIFO on: nothing flushed): the timeout, every
# byte of it, LSR and IIR once drained, and E at the exit.
TYPED_LATER = COM1_SETUP + uart_write(2, 0x81) + uart_write(1, 0x01) + """
    mov al, 0x52
    call putc
    mov dword ptr [0x7000], 0
    sti
wait_line:
    hlt
    cmp dword ptr [0x7000], 0
    je wait_line
    mov al, 0x45
    call putc
    call nl
""" + EXIT0 + "com1:\n    inc dword ptr [0x7000]\n" + uart_show(2) + """
bytes:
    mov dx, 0x3fd
    in al, dx
    test al, 1
    jz bytes_done
    mov dx, 0x3f8
    in al, dx
    call hex8
    call space
    jmp bytes
bytes_done:
    call hex8
    call space
""" + uart_show(2) + EOI_IRET + HEX
TYPED_LATER_EXPECTED = b"Rcc 6c 73 20 2f 0a 60 c1 E\n"       # qemu-system-i386 7.2


def type_after_r(command: list[str]) -> bytes:
    """Run `command`, write TYPED to its stdin half a second after it printed `R` (the guest is
    in hlt by then, idle until input comes), return all it printed."""
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    output, _latency = type_when_ready(proc, TYPED, 20, settle=0.5)
    rest, _err = proc.communicate(timeout=60)
    return output + rest


@pytest.mark.parametrize("mode", MODES)
def test_a_line_typed_while_the_guest_idles_comes_by_the_timeout(tmp_path, mode):
    # hlt waits for the input; the bytes it brings set the timeout, and hlt idles on to it (it
    # used to wait for more input, and with none coming the guest halted).
    guest = tmp_path / "typed.s"
    guest.write_text(TYPED_LATER)
    command = [sys.executable, "-m", "vmm", "run", str(guest), "--mode", mode, "--timeout", "60"]
    assert type_after_r(command) == TYPED_LATER_EXPECTED


@needs_qemu
def test_a_line_typed_while_the_guest_idles_under_qemu(tmp_path):
    guest = tmp_path / "typed.s"
    guest.write_text(TYPED_LATER)
    wrapped = tmp_path / "typed.mb.elf"
    wrapped.write_bytes(bs.multiboot_wrapped_image(guest))
    assert type_after_r(bs.qemu_command(str(wrapped)) + QEMU_PLATFORM) == TYPED_LATER_EXPECTED


# -- the timeout on guest time --------------------------------------------------------------------
# The FIFO on, the receive interrupt enabled (the typed bytes come in then, inside a run), and the
# guest waits with IF set, spinning or in hlt; the PIT at its boot period (its next edge 55 ms
# away, IRQ 0 masked) bounds a run that does not know of the timeout.
def waiting(how: str) -> str:
    return (COM1_SETUP + uart_write(2, 0x81) + uart_write(1, 0x01) + f"    sti\nwait:\n    {how}\n    jmp wait\n"
            + "com1:\n    mov dx, 0x3fa\n    in al, dx\n    movzx eax, al\n" + EXIT)


def ns_at_cycle(cycle: int) -> int:
    return cycle * 10 ** 9 // CPU_HZ


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("how", ("nop", "hlt"))
def test_the_timeout_fires_at_the_first_cycle_of_its_deadline(tmp_path, mode, how, monkeypatch):
    # Its deadline is four character times (9600 baud, QEMU's reset value: 4 x 1,041,660 ns)
    # after the bytes came; the platform fires it (advance) with the clock at the first cycle at
    # or after it: the run that set it ended at once, and the next was bounded by it.
    set_at, fired = [], []
    restart, advance = Uart16550._restart_timeout, Uart16550.advance

    def restart_noting(uart):
        set_at.append(uart.now_ns())
        restart(uart)

    def advance_noting(uart, ns):
        deadline = uart.timeout_at
        advance(uart, ns)
        if deadline is not None and uart.timeout_at is None:
            fired.append((deadline, ns))

    monkeypatch.setattr(Uart16550, "_restart_timeout", restart_noting)
    monkeypatch.setattr(Uart16550, "advance", advance_noting)
    result, _output, vm = run_source(tmp_path, waiting(how), stdin=TYPED, mode=mode, timeout=20)
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, CHARACTER_TIMEOUT), result.message
    assert len(set_at) == 1                             # the five bytes at once, as one chunk
    assert len(fired) == 1
    deadline, ns = fired[0]
    assert deadline == set_at[0] + 4 * RESET_CHARACTER_NS
    assert ns == ns_at_cycle(InterruptPlatform._cycles_at(deadline))


# -- the device -----------------------------------------------------------------------------------
def test_the_character_time_is_qemus_float_arithmetic():
    # serial_update_parameters in C floats, truncated: the same expression compiled with gcc gave
    # these (8N1 at 115200, 5N1, 7E2 at 57600, divisor 0 as 3500 baud, 8N1 at 9600) ...
    assert [character_time_ns(1, 0x03), character_time_ns(1, 0x00), character_time_ns(2, 0x1E),
            character_time_ns(0, 0x03), character_time_ns(12, 0x03)] == [86805, 60763, 190972, 2857142, 1041666]
    # ... while the reset value is integer arithmetic (QEMU's serial_reset), LCR and divisor unread
    assert Uart16550(BufferConsole()).character_ns == RESET_CHARACTER_NS == 1041660


class FakeTime:
    def __init__(self):
        self.ns, self.moves = 0, []


def clocked_uart(data: bytes):
    time_ = FakeTime()
    uart = Uart16550(BufferConsole(data), now_ns=lambda: time_.ns, deadline_moved=time_.moves.append)
    return uart, time_


def test_the_uart_tells_the_platform_each_move_of_its_deadline():
    uart, clock = clocked_uart(b"ab")
    uart.io_write(LCR, 1, 0x83)
    uart.io_write(RBR_THR_DLL, 1, 0x01)                 # 115200 baud, 8N1: 86,805 ns a character
    uart.io_write(LCR, 1, 0x03)
    uart.io_write(IIR_FCR, 1, 0x81)
    clock.ns = 1000
    assert uart.io_read(LSR, 1) == 0x61                 # both bytes in: the deadline set once
    assert clock.moves == [1000 + 4 * 86805] and uart.next_event_ns() == 1000 + 4 * 86805
    clock.ns = 2000
    assert uart.io_read(RBR_THR_DLL, 1) == ord("a")     # a byte left: set again from now
    assert clock.moves[-1] == 2000 + 4 * 86805
    assert uart.io_read(RBR_THR_DLL, 1) == ord("b")     # empty: the timer stays, but fires on nothing
    assert uart.next_event_ns() is None and uart.timeout_at == 2000 + 4 * 86805
    uart.advance(10 ** 6)
    assert not uart.timeout_pending and uart.io_read(IIR_FCR, 1) == 0xC1


def test_clearing_the_receive_fifo_drops_the_deadline_and_the_pending_timeout():
    uart, clock = clocked_uart(b"xyz")
    uart.io_write(IIR_FCR, 1, 0x81)
    uart.io_write(IER_DLM, 1, 0x01)
    deadline = uart.next_event_ns()
    uart.advance(deadline - 1)
    assert not uart.timeout_pending and uart.io_read(IIR_FCR, 1) == 0xC1
    uart.advance(deadline)
    assert uart.timeout_pending and uart.irq_level and uart.io_read(IIR_FCR, 1) == 0xCC
    uart.io_write(IIR_FCR, 1, 0x83)                     # receive FIFO reset: the timeout gone
    assert not uart.timeout_pending and not uart.irq_level and uart.io_read(IIR_FCR, 1) == 0xC1
    uart.io_write(MCR, 1, 0x18)                         # a byte again (loopback), reset before
    uart.io_write(RBR_THR_DLL, 1, 0x21)                 # its deadline: dropped, and said so
    assert uart.next_event_ns() is not None
    uart.io_write(IIR_FCR, 1, 0x83)
    assert clock.moves[-1] is None and uart.timeout_at is None


def test_bytes_at_the_trigger_level_rank_below_a_pending_timeout():
    # QEMU's serial_update_irq: the timeout (with the receive interrupt on) before the trigger
    # level's received-data interrupt.
    uart, _clock = clocked_uart(b"abcd")
    uart.io_write(IIR_FCR, 1, 0x41)                     # trigger at 4
    uart.io_write(IER_DLM, 1, 0x01)
    assert uart.io_read(IIR_FCR, 1) == 0xC4
    uart.advance(uart.next_event_ns())
    assert uart.io_read(IIR_FCR, 1) == 0xCC
