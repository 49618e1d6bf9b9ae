"""IDE bus-master DMA (vmm/devices/bmdma.py, vmm/devices/ide.py) through the DMA remapping
(vmm/dma.py): guests that find the PIIX3 IDE function by scanning PCI configuration space, move
its bus-master registers, build PRD tables and read and write sectors by DMA under every mode,
their output compared with what qemu-system-i386 7.2 printed for the same guest with the same
-drive (recorded below, re-checked by the needs_qemu tests), and the image files compared after.
Bad PRD tables and buffers: refused where QEMU would write somewhere it must not (each difference
listed with QEMU's line), QEMU's own errors where it has them; code loaded by DMA runs."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guests import CFG_READ, identity_paging, idt_setup, needs_qemu
from tests.samples import REPO_ROOT, build_samples as bs
from tests.test_ide import LIB, disk_image
from vmm.builder import MachineConfig, build_machine
from vmm.console import BufferConsole
from vmm.disks import MemoryDisk, parse_drive
from vmm.dma import DmaRefused, DmaRemapper
from vmm.engine import Engine
from vmm.frames import Extent, FramePool
from vmm.memory import PhysicalMemory

MODES = ["bt", "direct", "trap", "vt"]
LOAD = 0x100000
SECTORS = 300
EOT = 1 << 31

VARS = 0x7E00        # the bus master's base, the PRD table's address, the first canary
TABLE = 0x20000
BUF1, BUF2, BUF64, SRC, CODE, ROUTINE = 0x30000, 0x40000, 0x50000, 0x60000, 0x70000, 0x71000
RAM_END = 32 << 20


def routine(char: str) -> bytes:
    """mov dx, 0xd000; mov al, 1; out dx, al (the bus master's start); mov al, char; ret"""
    return bytes([0x66, 0xBA, 0x00, 0xD0, 0xB0, 0x01, 0xEE, 0xB0, ord(char), 0xC3])


def image() -> bytes:
    """disk_image's sectors, with code in sector 50 (mov al, 'B'; ret) and 51 (routine 'Y')."""
    data = bytearray(disk_image(SECTORS))
    data[50 * 512:50 * 512 + 3] = bytes([0xB0, 0x42, 0xC3])
    data[51 * 512:51 * 512 + 10] = routine("Y")
    return bytes(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the guests' library (Keystone), beside tests/test_ide.py's hex/lba/command/irq14 -----------
DMA_LIB = CFG_READ + f"""
cfg_write:
    push edx
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    mov eax, ecx
    out dx, eax
    pop edx
    ret
bm_in:
    push edx
    add dx, word ptr [{VARS:#x}]
    in al, dx
    pop edx
    ret
bm_out:
    push edx
    add dx, word ptr [{VARS:#x}]
    out dx, al
    pop edx
    ret
lba48:
    push edx
    push eax
    mov dx, 0x1f2
    xor al, al
    out dx, al
    mov al, cl
    out dx, al
    mov dx, 0x1f3
    xor al, al
    out dx, al
    mov dx, 0x1f4
    out dx, al
    mov dx, 0x1f5
    out dx, al
    pop eax
    push eax
    mov dx, 0x1f3
    out dx, al
    shr eax, 8
    mov dx, 0x1f4
    out dx, al
    shr eax, 8
    mov dx, 0x1f5
    out dx, al
    mov dx, 0x1f6
    mov al, 0x40
    out dx, al
    pop eax
    pop edx
    ret
prd:
    mov dword ptr [edi], eax
    mov dword ptr [edi + 4], ecx
    add edi, 8
    ret
dma_setup:
    push eax
    push edx
    xor al, al
    xor dx, dx
    call bm_out
    mov dx, 2
    mov al, 6
    call bm_out
    mov dx, word ptr [{VARS:#x}]
    add dx, 4
    mov eax, dword ptr [{VARS + 4:#x}]
    out dx, eax
    pop edx
    pop eax
    ret
dma_go:
    push eax
    push edx
    push ecx
    mov al, bl
    call command
    mov al, bh
    xor dx, dx
    call bm_out
    or al, 1
    call bm_out
    call dma_wait
    pop ecx
    pop edx
    pop eax
    ret
dma_wait:
    push ecx
    push edx
    mov ecx, 20000000
dwl:
    mov dx, 2
    call bm_in
    test al, 4
    jnz dw_done
    test al, 1
    jz dw_done
    loop dwl
    mov al, 0x54
    call putc_
dw_done:
    pop edx
    pop ecx
    ret
putc_:
    push edx
    mov dx, 0x3f8
    out dx, al
    pop edx
    ret
report:
    push eax
    push edx
    mov dx, 2
    call bm_in
    call hex8
    call space
    mov dx, 0x1f7
    in al, dx
    call hex8
    call space
    mov dx, 0x1f1
    in al, dx
    call hex8
    call space
    mov dx, 0x1f5
    in al, dx
    call hex8
    mov dx, 0x1f4
    in al, dx
    call hex8
    mov dx, 0x1f3
    in al, dx
    call hex8
    call space
    xor dx, dx
    xor al, al
    call bm_out
    mov dx, 2
    call bm_in
    call hex8
    call space
    pop edx
    pop eax
    ret
checksum:
    push esi
    push ecx
    xor eax, eax
csl:
    rol eax, 1
    add eax, dword ptr [esi]
    add eax, ecx
    add esi, 4
    loop csl
    pop ecx
    pop esi
    ret
csum:
    call checksum
    call hex32
    call space
    ret
canary:
    push eax
    push esi
    push ecx
    xor esi, esi
    mov ecx, 128
    call checksum
    cmp eax, dword ptr [{VARS + 8:#x}]
    mov al, 0x3d
    je canary_same
    mov al, 0x21
canary_same:
    call putc_
    call space
    pop ecx
    pop esi
    pop eax
    ret
enable:
    mov dword ptr [{VARS:#x}], 0xd000
    mov eax, 0x80000920
    mov ecx, 0xd001
    call cfg_write
    mov eax, 0x80000904
    mov ecx, 0x0107
    call cfg_write
    ret
"""


def dma(lba: int, count: int, command: int = 0xC8, direction: int = 0, table: int = TABLE) -> str:
    """Program the bus master (stopped, status cleared, the PRD table), issue the command, set
    the start bit, wait for the interrupt bit or Active going off, and report: bus-master status,
    IDE status, error, LBA 23-0, bus-master status once stopped."""
    return f"""    mov dword ptr [{VARS + 4:#x}], {table:#x}
    call dma_setup
    mov eax, {lba}
    mov ecx, {count}
    call {"lba48" if command in (0x25, 0x35) else "lba"}
    mov bl, {command:#x}
    mov bh, {direction:#x}
    call dma_go
    call report
"""


def prds(*entries, table: int = TABLE) -> str:
    lines = [f"    mov edi, {table:#x}"]
    for address, count in entries:
        lines += [f"    mov eax, {address:#x}", f"    mov ecx, {count:#x}", "    call prd"]
    return "\n".join(lines) + "\n"


def checks(*ranges) -> str:
    return "".join(f"    mov esi, {a:#x}\n    mov ecx, {n // 4}\n    call csum\n" for a, n in ranges) + "    call nl\n"


def source(body: str) -> str:
    return ("    mov esp, 0x90000\n" + idt_setup({0x76: "irq14"}) + "    jmp start\n" + LIB + DMA_LIB + "start:\n"
            + "    xor esi, esi\n    mov ecx, 128\n    call checksum\n"
            + f"    mov dword ptr [{VARS + 8:#x}], eax\n"
            + body + "\nthe_end:\n    mov al, 0\n    mov dx, 0xf4\n    out dx, al\n    cli\n    hlt\n")


# -- the guest of the good paths ------------------------------------------------------------------
# 1. Scan bus 0 for class 01.01 (looking at functions 1-7 only behind a multi-function header),
#    print its address, IDs, class, command/status, BAR4, interrupt line/pin.
# 2. Size BAR4 (all ones), BAR0 (not there), move BAR4 to 0xD000; the old ports and the new
#    with I/O decoding on, off; turn on I/O, memory and bus mastering.
# 3. IDENTIFY: words 49 (DMA), 53, 63 (multiword DMA), 88 (UDMA) as QEMU advertises them.
# Then READ DMA (0xC8) of 3 sectors over two PRDs; the start bit set before the command; PRDs
# longer than the transfer (Active stays set); too short (nothing moves, no interrupt); one PRD
# of count 0 (64 KiB, 128 sectors); a count with bit 0 set (ignored); a sector split across two
# PRDs; WRITE DMA (0xCA) of 2 sectors and READ DMA of them back; READ and WRITE DMA past the end
# of the disk (ABRT); READ DMA EXT (0x25); a PIO command also sets the bus master's interrupt
# bit, a DMA under nIEN does not; code loaded by DMA over code that ran (A, then B); and IRQ 14
# through the PIC for a DMA, the guest in hlt (the first interrupt is the latched edge of an
# earlier command, delivered at sti; the PIC's IRQ 0 masked first: SeaBIOS leaves the PIT ticking
# on it at 18.2 Hz, and under QEMU on a loaded host a tick came in at the sti, through a vector
# the IDT does not hold, and QEMU's run ended in a triple fault half way).
MAIN_BODY = f"""
    mov ebx, 0x80000000
find:
    mov eax, ebx
    call cfg_read
    cmp ax, 0xffff
    je find_next
    mov eax, ebx
    or eax, 8
    call cfg_read
    shr eax, 16
    cmp ax, 0x0101
    je found
    test ebx, 0x700
    jnz find_next
    mov eax, ebx
    or eax, 0xc
    call cfg_read
    test eax, 0x800000
    jnz find_next
    add ebx, 0x700
find_next:
    add ebx, 0x100
    cmp ebx, 0x80010000
    jne find
    mov al, 0x3f
    call putc_
    jmp the_end
found:
    mov eax, ebx
    shr eax, 8
    call hex16
    call space
""" + "".join(f"""    mov eax, ebx
    or eax, {register:#x}
    call cfg_read
    call hex32
    call space
""" for register in (0x00, 0x08, 0x04, 0x20, 0x3C)) + f"""    call nl
    mov eax, ebx
    or eax, 0x20
    mov ecx, 0xffffffff
    call cfg_write
    mov eax, ebx
    or eax, 0x20
    call cfg_read
    call hex32
    call space
    mov eax, ebx
    or eax, 0x10
    mov ecx, 0xffffffff
    call cfg_write
    mov eax, ebx
    or eax, 0x10
    call cfg_read
    call hex32
    call space
    mov eax, ebx
    or eax, 0x20
    mov ecx, 0xd000
    call cfg_write
    mov eax, ebx
    or eax, 0x20
    call cfg_read
    call hex32
    call space
    and eax, 0xfffc
    mov dword ptr [{VARS:#x}], eax
    mov dx, 0xc002
    in al, dx
    call hex8
    call space
    mov dx, 2
    call bm_in
    call hex8
    call space
    mov eax, ebx
    or eax, 4
    mov ecx, 0x0102
    call cfg_write
    mov dx, 2
    call bm_in
    call hex8
    call space
    mov eax, ebx
    or eax, 4
    mov ecx, 0xffff0107
    call cfg_write
    mov eax, ebx
    or eax, 4
    call cfg_read
    call hex32
    call nl
    mov dx, 0x1f6
    mov al, 0xa0
    out dx, al
    mov al, 0xec
    call command
    call wait_drq
    mov edi, {BUF1:#x}
    mov ecx, 256
    mov dx, 0x1f0
    rep insw
""" + "".join(f"    mov ax, word ptr [{BUF1 + 2 * word:#x}]\n    call hex16\n    call space\n"
              for word in (49, 53, 63, 88)) + "    call nl\n" \
    + prds((BUF1, 512), (BUF2, 1024 | EOT)) + dma(3, 3) + checks((BUF1, 512), (BUF2, 1024)) + f"""
    mov dword ptr [{VARS + 4:#x}], {TABLE:#x}
    call dma_setup
""" + prds((BUF1, 512 | EOT)) + f"""
    mov al, 1
    xor dx, dx
    call bm_out
    mov dx, 2
    call bm_in
    call hex8
    call space
    mov eax, 10
    mov ecx, 1
    call lba
    mov al, 0xc8
    call command
    call dma_wait
    call report
""" + checks((BUF1, 512)) \
    + prds((BUF1, 4096 | EOT)) + dma(11, 1) + checks((BUF1, 512)) \
    + prds((BUF2, 512 | EOT)) + dma(12, 2) + checks((BUF2, 512)) \
    + prds((BUF64, EOT)) + dma(0, 128) + checks((BUF64, 0x10000)) \
    + prds((BUF1, 513 | EOT)) + dma(13, 1) + checks((BUF1, 512)) \
    + prds((BUF1, 256), (BUF2 + 0x100, 256 | EOT)) + dma(14, 1) + checks((BUF1, 256), (BUF2 + 0x100, 256)) + f"""
    mov edi, {SRC:#x}
    mov ecx, 256
    mov eax, 0xa5a5a5a5
fill:
    mov dword ptr [edi], eax
    add edi, 4
    add eax, 0x01030507
    loop fill
""" + checks((SRC, 1024)) + prds((SRC, 1024 | EOT)) + dma(20, 2, 0xCA, 8) + "    call nl\n" \
    + prds((BUF1, 1024 | EOT)) + dma(20, 2) + checks((BUF1, 1024)) \
    + prds((BUF1, 1024 | EOT)) + dma(SECTORS - 1, 2) + "    call nl\n" \
    + dma(SECTORS, 1, 0xCA, 8) + "    call nl\n" \
    + prds((BUF1, 0x10000 | EOT)) + dma(0x15, 1, 0x25) + checks((BUF1, 512)) + f"""
    mov dx, 2
    mov al, 6
    call bm_out
    mov eax, 1
    mov ecx, 1
    call lba
    mov al, 0x20
    call command
    call wait_drq
    mov dx, 2
    call bm_in
    call hex8
    call space
    mov edi, {BUF1:#x}
    mov ecx, 256
    mov dx, 0x1f0
    rep insw
    mov dx, 0x1f7
    in al, dx
    call hex8
    call space
    mov dx, 0x3f6
    mov al, 2
    out dx, al
""" + prds((BUF1, 512 | EOT)) + dma(2, 1) + f"""
    mov dx, 0x3f6
    mov al, 0
    out dx, al
    call nl
    mov byte ptr [{CODE:#x}], 0xb0
    mov byte ptr [{CODE + 1:#x}], 0x41
    mov byte ptr [{CODE + 2:#x}], 0xc3
    mov eax, {CODE:#x}
    call eax
    call putc_
""" + prds((CODE, 512 | EOT)) + dma(50, 1) + f"""
    mov eax, {CODE:#x}
    call eax
    call putc_
    call nl
    mov dword ptr [irqs], 0
    in al, 0x21
    or al, 1
    out 0x21, al
    sti
    nop
    cli
    mov eax, dword ptr [irqs]
    call hex8
    call space
    mov dword ptr [irqs], 0
    mov dword ptr [flag], 0
    call dma_setup
""" + prds((BUF2, 512 | EOT)) + """
    mov eax, 4
    mov ecx, 1
    call lba
    mov al, 0xc8
    call command
    mov al, 1
    xor dx, dx
    call bm_out
    call wait_irq
    call report
""" + checks((BUF2, 512))

QEMU_MAIN = """0009 70108086 01018000 02800103 0000C001 00000000 
FFFFFFF1 00000000 0000D001 FF 00 FF 02800107
0B00 0007 0007 203F 
04 50 00 000006 04 A0C14083 9A74C0DF 
01 04 50 00 00000B 04 140004A9 
05 50 00 00000C 04 77FFE16E 
00 50 00 00000C 00 71AE608F 
04 50 00 000080 04 D5924BB7 
04 50 00 00000E 04 3FEEF82F 
04 50 00 00000F 04 AD2F4FF6 AD2F4FF6 
779263CD 
04 50 00 000016 04 
04 50 00 000016 04 779263CD 
04 41 04 00012B 04 
04 41 04 00012C 04 
05 50 00 000016 04 8D0F945C 
04 50 00 50 00 000003 00 
A04 50 00 000033 04 B
01 01 50 04 50 00 000005 04 71AE608F 
"""


# -- code loaded by DMA behind paging: the page runs at linear 0x400000 (physical CODE). nIEN is
# set: no interrupt, so nothing else (direct mode's interrupt-window watch, which translates
# everything again when it starts) drops the stale translation in the DMA's place.
PAGED_BODY = f"""
    call enable
    mov dx, 0x3f6
    mov al, 2
    out dx, al
    mov dword ptr [0x82000], {CODE | 3:#x}
    mov dword ptr [0x80004], {0x82000 | 3:#x}
""" + identity_paging() + """
    mov byte ptr [0x400000], 0xb0
    mov byte ptr [0x400001], 0x41
    mov byte ptr [0x400002], 0xc3
    mov eax, 0x400000
    call eax
    call putc_
""" + prds((CODE, 512 | EOT)) + dma(50, 1) + """
    mov eax, 0x400000
    call eax
    call putc_
    call nl
"""
QEMU_PAGED = "A00 50 00 000033 00 B\n"


# -- bad PRD tables and buffers --------------------------------------------------------------------
def fill_table(table: int, entries) -> str:
    return "".join(f"    mov dword ptr [{table + 8 * i:#x}], {a:#x}\n    mov dword ptr [{table + 8 * i + 4:#x}], {n:#x}\n"
                   for i, (a, n) in enumerate(entries))


def canary() -> str:
    """'=' while physical 0-511 holds what it held at the start, '!' once something wrote there;
    then BUF1's checksum."""
    return "    call canary\n" + checks((BUF1, 512))


BAD_BODY = "    call enable\n" + f"""
    mov edi, {BUF1:#x}
    mov ecx, 128
    mov eax, 0x11223344
    rep stosd
""" + canary() \
    + dma(30, 1, table=RAM_END * 2) + canary() \
    + dma(30, 1, table=0xFF000000) + canary() \
    + dma(30, 1, table=0xFEE00000) + canary() \
    + dma(30, 1, table=0xFEC00000) + canary() \
    + prds((RAM_END * 2, 512 | EOT)) + dma(30, 1) + canary() \
    + prds((RAM_END - 256, 512 | EOT)) + dma(30, 1) + checks((RAM_END - 256, 256)) + canary() \
    + prds((0xFEE00000, 512 | EOT)) + dma(30, 1) + canary() \
    + prds((RAM_END * 2, 512 | EOT)) + dma(40, 1, 0xCA, 8) + "    call nl\n" \
    + prds((BUF1, 512)) + f"""
    mov edi, {TABLE + 8:#x}
    mov ecx, 1024
    xor eax, eax
    rep stosd
""" + dma(31, 1) + canary() \
    + fill_table(RAM_END - 8, [(BUF1, 512)]) + dma(32, 1, table=RAM_END - 8) + canary() \
    + fill_table(RAM_END - 8, [(BUF1, 512)]) + dma(33, 2, table=RAM_END - 8) + canary() + f"""
    mov edi, {TABLE:#x}
    mov ecx, 512
pl:
    mov dword ptr [edi], {BUF2:#x}
    mov dword ptr [edi + 4], 2
    add edi, 8
    loop pl
""" + dma(34, 4) + canary() + """
    mov eax, 0x80000904
    mov ecx, 0x0103
    call cfg_write
""" + prds((BUF1, 512 | EOT)) + dma(35, 1) + canary() \
    + prds((SRC, 512 | EOT)) + dma(41, 1, 0xCA, 8) + "    call nl\n    call enable\n" \
    + prds((BUF1, 512 | EOT)) + dma(36, 1) + canary()

# QEMU's output for BAD_BODY, line by line, beside the monitor's where they differ and why. QEMU
# has no check: a PRD table outside RAM reads as zeros (an entry of 64 KiB at address 0, no EOT),
# so the sector lands at physical 0 ('!'); a buffer outside RAM is dropped, a buffer running past
# the end of RAM is half written, both "succeed"; a WRITE DMA from outside RAM, or with bus
# mastering off, writes what unassigned memory reads to the disk (sectors 40 and 41 of QEMU's
# image change); with bus mastering off a READ DMA "succeeds" and moves nothing. The monitor
# refuses each before a byte moves: bus-master status 06 (error, interrupt), IDE status 41 and
# ABRT (QEMU's own DMA error, ide_dma_error), the LBA where it was. A table that runs off the
# end of RAM is refused too, even where the transfer had all it needed before it (QEMU reads the
# rest of the table as zeros and leaves Active set). The PRDs too short for the count and the
# table without EOT inside RAM are QEMU's exactly.
BAD_LINES = [
    # (QEMU, monitor or None when the same)
    ("= EED7FFFF ", None),
    ("05 50 00 00001F 04 ! EED7FFFF ", "06 41 04 00001E 06 = EED7FFFF "),     # table past RAM
    ("05 50 00 00001F 04 ! EED7FFFF ", "06 41 04 00001E 06 = EED7FFFF "),     # table in the monitor's region
    ("05 50 00 00001F 04 ! EED7FFFF ", "06 41 04 00001E 06 = EED7FFFF "),     # table in the local APIC
    ("05 50 00 00001F 04 ! EED7FFFF ", "06 41 04 00001E 06 = EED7FFFF "),     # table in the I/O APIC
    ("04 50 00 00001F 04 ! EED7FFFF ", "06 41 04 00001E 06 = EED7FFFF "),     # buffer past RAM
    ("04 50 00 00001F 04 384E705B ", "06 41 04 00001E 06 0000003F "),         # buffer across the end of RAM
    ("! EED7FFFF ", "= EED7FFFF "),
    ("04 50 00 00001F 04 ! EED7FFFF ", "06 41 04 00001E 06 = EED7FFFF "),     # buffer in the local APIC
    ("04 50 00 000029 04 ", "06 41 04 000028 06 "),                           # WRITE DMA from past RAM
    ("05 50 00 000020 04 ! 70109923 ", "05 50 00 000020 04 = 70109923 "),     # no EOT: the table goes on
    ("05 50 00 000021 04 ! 080FACA1 ", "06 41 04 000020 06 = 70109923 "),     # ... off the end of RAM
    ("05 50 00 000023 04 ! 00018C09 ", "06 41 04 000021 06 = 70109923 "),     # ... and needed there
    ("00 50 00 000022 00 ! 00018C09 ", "00 50 00 000022 00 = 70109923 "),     # 512 PRDs of 2 bytes: too short
    ("05 50 00 000024 04 ! 00018C09 ", "06 41 04 000023 06 = 70109923 "),     # bus mastering off
    ("05 50 00 00002A 04 ", "06 41 04 000029 06 "),                           # ... WRITE DMA
    ("04 50 00 000025 04 ! 00352E08 ", "04 50 00 000025 04 = 00352E08 "),     # bus mastering on again
]
QEMU_BAD = "".join(qemu + "\n" for qemu, _ in BAD_LINES)
MONITOR_BAD = "".join((ours if ours is not None else qemu) + "\n" for qemu, ours in BAD_LINES)
QEMU_BAD_CHANGED_SECTORS = [40, 41]


# -- running ----------------------------------------------------------------------------------------
def run_guest(tmp_path: Path, body: str, mode: str, *, drive_options: str = "", paging=None, data: bytes = None):
    guest = tmp_path / "dma.s"
    guest.write_text(source(body))
    disk = tmp_path / "disk.img"
    disk.write_bytes(image() if data is None else data)
    console = BufferConsole(b"")
    vm, _image = build_machine(MachineConfig(image=str(guest), mode=mode, paging=paging,
                                             drives=[parse_drive(f"file={disk},if=ide,index=0{drive_options}")]),
                               console)
    result = vm.run()
    return result, bytes(console.output).decode(), vm, disk.read_bytes()


def run_qemu(tmp_path: Path, body: str) -> tuple[str, bytes]:
    from vmm.loaders.assembly import assemble
    code = assemble(source(body), LOAD)
    kernel = tmp_path / "dma.elf"
    kernel.write_bytes(bs.wrap_multiboot(LOAD, [(LOAD, code, len(code))]))
    disk = tmp_path / "qemu-disk.img"
    disk.write_bytes(image())
    command = bs.qemu_command(str(kernel)) + ["-drive", f"file={disk},if=ide,index=0,format=raw"]
    proc = subprocess.run(command, capture_output=True, timeout=120)
    assert proc.returncode == bs.qemu_status(0), (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout.decode(), disk.read_bytes()


def written_image() -> bytes:
    """The image after MAIN_BODY: its WRITE DMA put the guest's pattern at sectors 20-21."""
    data = bytearray(image())
    pattern, value = bytearray(), 0xA5A5A5A5
    for _ in range(256):
        pattern += value.to_bytes(4, "little")
        value = (value + 0x01030507) & 0xFFFFFFFF
    data[20 * 512:22 * 512] = pattern
    return bytes(data)


@pytest.mark.parametrize("mode", MODES)
def test_dma_guest_matches_qemu(tmp_path, mode):
    result, output, vm, disk = run_guest(tmp_path, MAIN_BODY, mode)
    assert result.reason.value == "debug_exit", result.message
    assert output == QEMU_MAIN
    assert disk == written_image()
    counters = vm.ide.counters()["ide0"]
    # DMA: 3 + 1 (start first) + 1 (long PRD) + 128 + 1 (odd count) + 1 (split) + 2 (back)
    # + 1 (EXT) + 1 (nIEN) + 1 (code) + 1 (IRQ) read in 12 transfers with the write of 2; PIO:
    # 1 read (IDENTIFY is no sector)
    assert counters["sectors_read"] == 141 + 1 and counters["sectors_written"] == 2
    assert counters["dma_transfers"] == 12 and counters["dma_refused"] == 0
    assert counters["errors"] == 2                   # the two commands past the end of the disk


@needs_qemu
def test_dma_guest_under_qemu(tmp_path):
    output, disk = run_qemu(tmp_path, MAIN_BODY)
    assert output == QEMU_MAIN
    assert disk == written_image()


@pytest.mark.parametrize("mode, paging", [("bt", None), ("bt", "nested"), ("direct", None), ("trap", None),
                                          ("trap", "nested"), ("vt", None), ("vt", "shadow")])
def test_code_loaded_by_dma_behind_paging_runs(tmp_path, mode, paging):
    """The page is reached through a second linear address: the untranslated modes drop the
    engine's translations by the frame written (Engine.invalidate_host_code), whatever maps it;
    bt's cache by the physical page index."""
    result, output, _vm, _disk = run_guest(tmp_path, PAGED_BODY, mode, paging=paging)
    assert result.reason.value == "debug_exit", result.message
    assert output == QEMU_PAGED


@needs_qemu
def test_paged_guest_under_qemu(tmp_path):
    assert run_qemu(tmp_path, PAGED_BODY)[0] == QEMU_PAGED


@pytest.mark.parametrize("mode", MODES)
def test_bad_prd_tables_and_buffers_are_refused_and_nothing_is_written(tmp_path, mode):
    result, output, vm, disk = run_guest(tmp_path, BAD_BODY, mode)
    assert result.reason.value == "debug_exit", result.message
    assert output == MONITOR_BAD
    assert disk == image()                          # sectors 40 and 41 as they were
    counters = vm.ide.counters()["ide0"]
    assert counters["dma_refused"] == 12
    assert vm.devices["bmdma"].remapper.counters["refused"] == 10     # the other two: bus mastering off


@needs_qemu
def test_bad_guest_under_qemu(tmp_path):
    output, disk = run_qemu(tmp_path, BAD_BODY)
    assert output == QEMU_BAD
    original = image()
    changed = [n for n in range(SECTORS) if disk[n * 512:(n + 1) * 512] != original[n * 512:(n + 1) * 512]]
    assert changed == QEMU_BAD_CHANGED_SECTORS


# A DMA started by the OUT of a routine over that very routine. QEMU's block layer completes a
# DMA on its own thread, so QEMU's output depends on when it does: the rest of the routine runs
# as it was (X), and the next call runs the new bytes (Y) or, the DMA still going, the old ones
# (measured: "XY04 50 ...", and "XX01 58 ..." or "XX01 50 ..." with Active still set). Here a
# transfer completes at its start: the untranslated modes finish the engine's block as it was
# translated (X, as QEMU's block would) and run the new bytes next; under bt the run ends right
# after the OUT and the block it was in goes (BinaryTranslationMode._monitor_wrote), so the
# rest of the routine already runs the new bytes (Y).
SELF_BODY = "    call enable\n" + "".join(f"    mov byte ptr [{ROUTINE + i:#x}], {b:#x}\n"
                                         for i, b in enumerate(routine("X"))) + """
    mov dx, 0x3f6
    mov al, {nien}
    out dx, al
""" + f"""    mov dword ptr [{VARS + 4:#x}], {TABLE:#x}
    call dma_setup
""" + prds((ROUTINE, 512 | EOT)) + f"""
    mov eax, 51
    mov ecx, 1
    call lba
    mov al, 0xc8
    call command
    mov eax, {ROUTINE:#x}
    call eax
    call putc_
    mov eax, {ROUTINE:#x}
    call eax
    call putc_
    call report
    call nl
"""
SELF_OUTPUT = {0: "XY04 50 00 000034 04 \n", 2: "XY00 50 00 000034 00 \n"}     # QEMU's, when its DMA is quick


@pytest.mark.parametrize("nien", [0, 2])
@pytest.mark.parametrize("mode", MODES)
def test_a_dma_over_the_code_that_started_it(tmp_path, mode, nien):
    """(Before the fix, bt removed the running block from inside the OUT's hook: the stop after
    the OUT found no block to resume from, and with nIEN set the block's next exit was 'outside
    translated code', a monitor bug.)"""
    result, output, _vm, _disk = run_guest(tmp_path, SELF_BODY.format(nien=nien), mode)
    assert result.reason.value == "debug_exit", result.message
    expected = SELF_OUTPUT[nien]
    assert output == ("Y" + expected[1:] if mode == "bt" else expected)


READ_ONLY_BODY = "    call enable\n" + prds((SRC, 512 | EOT)) + dma(7, 1, 0xCA, 8) + "    call nl\n" \
    + prds((BUF1, 512 | EOT)) + dma(7, 1) + checks((BUF1, 512))


@pytest.mark.parametrize("mode", ["bt", "vt"])
def test_write_dma_to_a_read_only_drive(tmp_path, mode):
    """QEMU refuses a read-only IDE disk at start-up ("Can't use a read-only drive"): the guest
    sees what the monitor's PIO writes get there, QEMU's DMA error for a failed write (ABRT, the
    interrupt, no bus-master error: the memory side was fine); reads work; the file stays."""
    result, output, vm, disk = run_guest(tmp_path, READ_ONLY_BODY, mode, drive_options=",readonly")
    assert result.reason.value == "debug_exit", result.message
    assert output.splitlines() == ["04 41 04 000007 04 ", "04 50 00 000008 04 EC0FFFCC "]
    assert disk == image()
    assert vm.ide.counters()["ide0"]["errors"] == 1


def test_refusals_are_counted_in_the_report_and_traced(tmp_path):
    guest = tmp_path / "bad.s"
    guest.write_text(source(BAD_BODY))
    disk = tmp_path / "disk.img"
    disk.write_bytes(image())
    trace, report = tmp_path / "trace.log", tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", str(guest), "--drive", f"file={disk},if=ide,index=0",
                           "--report", str(report), "-d", "disk", "-D", str(trace)], capture_output=True,
                          timeout=120, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr
    import json
    data = json.loads(report.read_text())
    assert data["counters"]["disks"]["ide0"]["dma_refused"] == 12
    assert data["devices"]["bmdma"]["remapper"]["refused"] == 10
    log = trace.read_text()
    assert "ide: unit 0 DMA refused: PRD table entry at 0x4000000 (+0x8): outside guest RAM (unassigned)" in log
    assert "ide: unit 0 DMA refused: PRD table entry at 0xff000000 (+0x8): the monitor's memory" in log
    assert "ide: unit 0 DMA refused: DMA buffer at 0xfee00000 (+0x200): MMIO (apic)" in log
    assert "ide: unit 0 DMA refused: DMA buffer at 0x1ffff00 (+0x200): runs past the end of guest RAM" in log
    assert "DMA refused: PRD table entry at 0x20000 (+0x8): bus mastering is off (PCI command bit 2)" in log
    assert "ide: unit 0 DMA stopped: the PRDs describe 1024 bytes, the command needs 2048" in log
    assert "ide: unit 0 DMA read of 1 sectors at 36: 1 buffers, 0x30000+0x200" in log


# -- the remapping alone -----------------------------------------------------------------------------
def fragmented_memory():
    """Guest RAM over three extents of a pool whose frames are out of guest order."""
    pool = FramePool(4096, arena_frames=1024)
    hole = pool.allocate(1536)                   # frames 0-1535 taken, to be given back in pieces
    pool.release([Extent(512, 512)])             # a hole of 512 frames inside the first arena
    memory = PhysicalMemory(Engine(), 4, pool)   # 1024 pages: 512 in the hole, then from 1536 on
    return memory


def test_the_remapper_goes_through_the_p2m_map_of_a_fragmented_pool():
    memory = fragmented_memory()
    assert len(memory.p2m.extents) >= 2
    remapper = DmaRemapper(memory)
    boundary = memory.p2m.extents[1][0] * 4096       # where the second extent starts, guest-physical
    data = bytes(range(256)) * 32                    # 8 KiB across the boundary
    views = remapper.map(boundary - 4096, len(data))
    assert len(views) == 2
    remapper.write(boundary - 4096, data)
    assert memory.read(boundary - 4096, len(data)) == data
    machine = memory.p2m.lookup(boundary // 4096)
    assert bytes(memory.pool.view(machine, 1)[:16]) == data[4096:4096 + 16]
    assert remapper.read(boundary - 16, 32) == data[4096 - 16:4096 + 16]


def test_the_remapper_refuses_everything_but_ram_and_tells_the_observers():
    memory = fragmented_memory()
    seen = []
    memory.write_observers.append(lambda address, size: seen.append((address, size)))
    remapper = DmaRemapper(memory)
    for address, size, where in ((memory.ram.end, 8, "outside guest RAM (unassigned)"),
                                 (memory.ram.end - 4, 8, "runs past the end of guest RAM"),
                                 (memory.monitor.base, 8, "the monitor's memory"),
                                 (-8, 8, "not guest RAM"), (0xFFFFFFFC, 8, "the monitor's memory")):
        with pytest.raises(DmaRefused, match=re.escape(where)):
            remapper.write(address, bytes(size))
    assert seen == [] and remapper.counters["refused"] == 5
    remapper.write(0x1000, b"abcd")
    assert seen == [(0x1000, 4)]
    memory.release()
    with pytest.raises(DmaRefused):
        remapper.read(0x1000, 4)


def test_the_channel_without_a_bus_master_aborts_dma_commands():
    from vmm.devices.ide import IdeChannel
    levels = []
    ide = IdeChannel({0: MemoryDisk(100)}, levels.append)
    ide.io_write(6, 1, 0xE0)
    ide.io_write(7, 1, 0xC8)
    assert levels == [1]
    assert ide.io_read(7, 1) == 0x41 and ide.io_read(1, 1) == 0x04


def test_every_bus_master_register_written_with_every_value_keeps_the_machine_sane(tmp_path):
    """A fuzz of the bus master on a built machine, through its port bus: every value at every
    offset of BAR4 and every width, with READ and WRITE DMA commands waiting and bus mastering
    on, so that the start bit runs transfers with whatever PRD pointer the values left. Nothing
    raises; transfers ran (in guest RAM: the monitor's region is untouched) and were refused;
    the disk is whole; the register block ends in a state its own rules allow."""
    guest = tmp_path / "idle.s"
    guest.write_text("    cli\n    hlt\n")
    disk = tmp_path / "disk.img"
    disk.write_bytes(image())
    vm, _image = build_machine(MachineConfig(image=str(guest), drives=[parse_drive(f"file={disk},if=ide,index=0")]),
                               BufferConsole(b""))
    bus, memory = vm.bus, vm.memory
    bus.write(0xCF8, 4, 0x80000904)
    bus.write(0xCFC, 2, 0x0105)                       # I/O decoding and bus mastering on
    monitor_before = bytes(memory.monitor_view(0, 0x10000))
    for offset in range(16):
        for size in (1, 2, 4):
            for value in range(256):
                wide = value * 0x01010101 & ((1 << 8 * size) - 1)
                bus.write(0x1F6, 1, 0xE0)
                bus.write(0x1F2, 1, 1 + value % 3)
                bus.write(0x1F3, 1, value)
                bus.write(0x1F7, 1, 0xCA if value & 1 else 0xC8)
                bus.write(0xC000 + offset, size, wide)
                bus.read(0xC000 + offset, size)
                bus.read(0x1F7, 1)
                bus.write(0xC000, 1, 0)               # stop, ready for the next command
    channel = vm.devices["bmdma"].channels[0]
    assert channel.status & ~0x67 == 0 and channel.addr & 3 == 0
    assert bytes(memory.monitor_view(0, 0x10000)) == monitor_before
    counters = vm.ide.counters()["ide0"]
    assert counters["dma_transfers"] > 0 and counters["dma_refused"] > 0
    vm.ide.close()
    assert len(disk.read_bytes()) == len(image())
    memory.release()
