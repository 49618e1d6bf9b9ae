"""Every I/O port and every register of the memory-mapped devices (local APIC, I/O APIC, HPET)
written with values of every shape by a guest, under every mode: the monitor survives it, the
guest's own report comes out (its COM1 set up again, then `OK`), and the guest ends through
isa-debug-exit, as the same guest does under qemu-system-i386 (the needs_qemu test). Left out:
the writes that end a PC by design (isa-debug-exit at 0xF4-0xF7, the resets at 0x64, 0x92 and
0xCF9, the PIIX4 PM block at 0x600-0x63F that powers off), which tests of their own cover, and
the local APIC's ICR (an INIT to itself); interrupts stay off (IF clear), an NMI is taken and
returned from."""

from __future__ import annotations


import pytest

from tests.guests import PUTC, idt_setup, needs_qemu, run_qemu_source, run_source
from vmm.exits import StopReason

MODES = ["bt", "direct", "trap", "vt"]

# Ports whose every register is also written at every width with each of VALUES.
DEVICE_PORTS = ([0x20, 0x21, 0xA0, 0xA1, 0x40, 0x41, 0x42, 0x43, 0x60, 0x61, 0x70, 0x71, 0x80, 0xB2, 0xB3,
                 0x3F6, 0x3D4, 0x3D5, 0x4D0, 0x4D1, 0x402, 0x510, 0x511, 0xCF8, 0xCFC, 0xCFD, 0xCFE, 0xCFF]
                + list(range(0x1F0, 0x1F8)) + list(range(0x3F8, 0x400)) + list(range(0x2F8, 0x300))
                + list(range(0x3C0, 0x3E0)) + list(range(0xC000, 0xC010)))
VALUES = (0, 0xFFFFFFFF, 0x55555555, 0xAAAAAAAA)
APIC, IOAPIC, HPET = 0xFEE00000, 0xFEC00000, 0xFED00000
APIC_ICR = (0x300, 0x310)


UARTS = set(range(0x3F8, 0x400)) | set(range(0x2F8, 0x300))


def _device_pass(wide_uart: bool = True) -> str:
    """wide_uart False: the UARTs' registers at byte width only (QEMU 7.2 aborts on a wider access:
    serial.c's assertion `size == 1 && addr < 8`, where the monitor splits it as the bus does)."""
    lines = []
    for port in DEVICE_PORTS:
        lines.append(f"    mov dx, {port:#x}")
        for value in VALUES:
            lines += [f"    mov eax, {value:#x}", "    out dx, al", "    in al, dx"]
            if wide_uart or port not in UARTS:
                lines += [f"    mov eax, {value:#x}", "    out dx, ax", "    in ax, dx",
                          f"    mov eax, {value:#x}", "    out dx, eax", "    in eax, dx"]
    return "\n".join(lines) + "\n"


def _mmio_pass() -> str:
    lines = []
    for offset in range(0x20, 0x400, 0x10):
        if offset in APIC_ICR:
            continue
        for value in VALUES:
            lines += [f"    mov dword ptr [{APIC + offset:#x}], {value:#x}", f"    mov eax, dword ptr [{APIC + offset:#x}]"]
    for offset in range(0, 0x400, 8):
        for value in VALUES:
            lines += [f"    mov dword ptr [{HPET + offset:#x}], {value:#x}", f"    mov eax, dword ptr [{HPET + offset:#x}]",
                      f"    mov dword ptr [{HPET + offset + 4:#x}], {value:#x}", f"    mov eax, dword ptr [{HPET + offset + 4:#x}]"]
    for select in range(0x40):
        for value in VALUES:
            lines += [f"    mov dword ptr [{IOAPIC:#x}], {select:#x}", f"    mov dword ptr [{IOAPIC + 0x10:#x}], {value:#x}",
                      f"    mov eax, dword ptr [{IOAPIC + 0x10:#x}]"]
    return "\n".join(lines) + "\n"


PORT_LOOP = ("    mov esp, 0x7000\n    cli\n" + idt_setup({2: "nmi"}) + """
    mov ebx, 0
port_loop:
    cmp bx, 0x64
    je skip
    cmp bx, 0x92
    je skip
    cmp bx, 0xcf9
    je skip
    mov ax, bx
    and ax, 0xfffc
    cmp ax, 0xf4
    je skip
    cmp bx, 0x600
    jb go
    cmp bx, 0x640
    jb skip
go:
    mov dx, bx
    mov eax, ebx
    imul eax, eax, 0x9e3779b1
    shr eax, 24
    out dx, al
    in al, dx
skip:
    inc ebx
    cmp ebx, 0x10000
    jne port_loop
""")

FUZZ_END = """
    mov dx, 0x3fb
    mov al, 3
    out dx, al
    mov dx, 0x3fc
    mov al, 0
    out dx, al
    mov dx, 0x3f9
    out dx, al
    mov al, 10
    call putc
    mov al, 'O'
    call putc
    mov al, 'K'
    call putc
    mov al, 10
    call putc
    mov eax, 0
    mov dx, 0xf4
    out dx, eax
    cli
    hlt
nmi:
    iretd
""" + PUTC


def fuzz_guest(wide_uart: bool = True) -> str:
    return PORT_LOOP + _device_pass(wide_uart) + _mmio_pass() + FUZZ_END


@pytest.mark.parametrize("mode", MODES)
def test_every_register_written_leaves_the_monitor_and_the_guest_running(tmp_path, mode):
    result, output, vm = run_source(tmp_path, fuzz_guest(), mode=mode)
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert output.endswith(b"\nOK\n"), output[-200:]


@needs_qemu
def test_the_fuzz_guest_under_qemu(tmp_path):
    proc = run_qemu_source(tmp_path, fuzz_guest(wide_uart=False))
    assert proc.returncode == 1 and proc.stdout.endswith(b"\nOK\n"), (proc.returncode, proc.stdout[-200:], proc.stderr[-300:])
