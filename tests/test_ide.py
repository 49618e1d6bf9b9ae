"""The IDE channel and the disk back ends: unit tests against QEMU's hw/ide model, and a guest
that IDENTIFYs, reads, writes, flushes and reads back through the real path under every mode,
with polling and with IRQ 14 through the PIC, compared with qemu-system-i386 running the same
guest with the same -drive (its output and the disk it leaves, recorded below)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.guests import idt_setup, needs_qemu
from tests.samples import REPO_ROOT, build_samples as bs
from vmm.builder import MachineConfig, build_machine
from vmm.console import BufferConsole
from vmm.devices.ide import IdeChannel, geometry
from vmm.disks import (SECTOR_SIZE, DiskError, DriveSpec, MemoryDisk, Overlay, RawImage, open_drives,
                       parse_drive)
from vmm.errors import ConfigError

MODES = ["bt", "direct", "trap", "vt"]
LOAD = 0x100000


def disk_image(sectors: int = 100) -> bytes:
    """Sector n holds the bytes (7n + i) & 0xFF: every sector different."""
    return b"".join(bytes(((n * 7 + i) & 0xFF) for i in range(SECTOR_SIZE)) for n in range(sectors))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# The guest. Phase 1 polls with nIEN set: the registers at entry (as SeaBIOS leaves them),
# IDENTIFY, READ SECTORS of 2 (LBA28, rep insw), WRITE SECTORS (rep outsw), FLUSH CACHE, a CHS
# READ of the sector written (rep insd), SET MULTIPLE MODE 4 and 3 (refused), READ MULTIPLE of
# 8, a read running past the end of the disk, a NOP (unknown to a disk: aborted), SRST and the
# signature, the absent slave. Phase 2 unmasks IRQ 14 and clears nIEN: IDENTIFY, a 2-sector READ
# (its second IRQ raised by the IN of the first sector's last word), a 2-sector WRITE, FLUSH,
# READ MULTIPLE after the reset (16 sectors a block), a read past the end; each wait is
# cli / flag / sti; hlt, the handler reads the status and sends EOIs.
LIB = """
hex8:
    push eax
    push ecx
    push edx
    mov ecx, 2
    mov ah, al
h8n:
    rol ah, 4
    mov al, ah
    and al, 15
    add al, 0x30
    cmp al, 0x39
    jbe h8o
    add al, 7
h8o:
    mov dx, 0x3f8
    out dx, al
    loop h8n
    pop edx
    pop ecx
    pop eax
    ret
hex16:
    xchg al, ah
    call hex8
    xchg al, ah
    call hex8
    ret
hex32:
    ror eax, 16
    call hex16
    ror eax, 16
    call hex16
    ret
space:
    push eax
    push edx
    mov al, 0x20
    mov dx, 0x3f8
    out dx, al
    pop edx
    pop eax
    ret
nl:
    push eax
    push edx
    mov al, 10
    mov dx, 0x3f8
    out dx, al
    pop edx
    pop eax
    ret
status:
    push eax
    push edx
    mov dx, 0x1f1
    in al, dx
    call hex8
    call space
    mov dx, 0x1f7
    in al, dx
    call hex8
    call nl
    pop edx
    pop eax
    ret
regs:
    push eax
    push edx
    mov dx, 0x1f1
rl:
    in al, dx
    call hex8
    call space
    inc dx
    cmp dx, 0x1f8
    jne rl
    call nl
    pop edx
    pop eax
    ret
not_busy:
    push eax
    push edx
    mov dx, 0x3f6
nb:
    in al, dx
    test al, 0x80
    jnz nb
    pop edx
    pop eax
    ret
wait_drq:
    push eax
    push edx
    mov dx, 0x1f7
wd:
    in al, dx
    test al, 0x80
    jnz wd
    test al, 0x09
    jz wd
    pop edx
    pop eax
    ret
lba:
    push edx
    push eax
    mov dx, 0x1f2
    mov al, cl
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
    shr eax, 8
    and al, 0x0f
    or al, 0xe0
    mov dx, 0x1f6
    out dx, al
    pop eax
    pop edx
    ret
command:
    push edx
    mov dx, 0x1f7
    out dx, al
    pop edx
    ret
sum:
    push esi
    push ecx
    xor eax, eax
sl:
    add eax, dword ptr [esi]
    add esi, 4
    loop sl
    pop ecx
    pop esi
    call hex32
    call space
    mov eax, dword ptr [esi]
    call hex32
    call nl
    ret
wait_irq:
    cli
wi:
    cmp dword ptr [flag], 0
    jne wi_done
    sti
    hlt
    cli
    jmp wi
wi_done:
    mov dword ptr [flag], 0
    mov eax, dword ptr [irqs]
    call hex8
    call space
    mov al, byte ptr [irq_status]
    call hex8
    call space
    sti
    ret
irq14:
    push eax
    push edx
    inc dword ptr [irqs]
    mov dword ptr [flag], 1
    mov dx, 0x1f7
    in al, dx
    mov byte ptr [irq_status], al
    mov al, 0x20
    out 0xa0, al
    out 0x20, al
    pop edx
    pop eax
    iretd
flag:
    .long 0
irqs:
    .long 0
irq_status:
    .long 0
"""

BUFFER = 0x200000
BODY = f"""
    mov dx, 0x3f6
    mov al, 2
    out dx, al
    call regs
    mov dx, 0x1f6
    mov al, 0xa0
    out dx, al
    mov al, 0xec
    call command
    call wait_drq
    mov edi, {BUFFER:#x}
    mov ecx, 256
    mov dx, 0x1f0
    rep insw
    call status
    mov esi, {BUFFER:#x}
    mov ecx, 128
    call sum
    mov eax, 3
    mov ecx, 2
    call lba
    mov al, 0x20
    call command
    call wait_drq
    mov edi, {BUFFER:#x}
    mov ecx, 256
    mov dx, 0x1f0
    rep insw
    call wait_drq
    call regs
    mov ecx, 256
    rep insw
    call not_busy
    call regs
    mov esi, {BUFFER:#x}
    mov ecx, 256
    call sum
    mov edi, {BUFFER:#x}
    mov ecx, 128
    mov eax, 0x01020304
fillw:
    mov dword ptr [edi], eax
    add edi, 4
    add eax, 0x11111111
    loop fillw
    mov eax, 7
    mov ecx, 1
    call lba
    mov al, 0x30
    call command
    call wait_drq
    mov esi, {BUFFER:#x}
    mov ecx, 256
    mov dx, 0x1f0
    rep outsw
    call not_busy
    call regs
    mov al, 0xe7
    call command
    call not_busy
    call status
    mov dx, 0x1f2
    mov al, 1
    out dx, al
    mov dx, 0x1f3
    mov al, 8
    out dx, al
    mov dx, 0x1f4
    mov al, 0
    out dx, al
    mov dx, 0x1f5
    out dx, al
    mov dx, 0x1f6
    mov al, 0xa0
    out dx, al
    mov al, 0x20
    call command
    call wait_drq
    mov edi, {BUFFER + 0x1000:#x}
    mov ecx, 128
    mov dx, 0x1f0
    rep insd
    call not_busy
    call regs
    mov esi, {BUFFER + 0x1000:#x}
    mov ecx, 128
    call sum
    mov dx, 0x1f2
    mov al, 4
    out dx, al
    mov al, 0xc6
    call command
    call not_busy
    call status
    mov dx, 0x1f2
    mov al, 3
    out dx, al
    mov al, 0xc6
    call command
    call not_busy
    call status
    mov eax, 0
    mov ecx, 8
    call lba
    mov al, 0xc4
    call command
    call wait_drq
    mov edi, {BUFFER:#x}
    mov ecx, 512
    mov dx, 0x1f0
    rep insd
    call wait_drq
    mov ecx, 512
    rep insd
    call not_busy
    call regs
    mov esi, {BUFFER:#x}
    mov ecx, 1024
    call sum
    mov eax, 99
    mov ecx, 2
    call lba
    mov al, 0x20
    call command
    call wait_drq
    call regs
    mov edi, {BUFFER:#x}
    mov ecx, 256
    mov dx, 0x1f0
    rep insw
    call not_busy
    call regs
    mov al, 0x00
    call command
    call not_busy
    call regs
    mov dx, 0x3f6
    mov al, 6
    out dx, al
    mov al, 2
    out dx, al
    call not_busy
    call regs
    mov dx, 0x1f6
    mov al, 0xb0
    out dx, al
    mov al, 0xec
    call command
    call regs
    mov dx, 0x1f6
    mov al, 0xa0
    out dx, al
    mov al, 0xff
    out 0x21, al
    mov al, 0xfb
    out 0x21, al
    mov al, 0xbf
    out 0xa1, al
    mov dx, 0x3f6
    mov al, 0
    out dx, al
    sti
    mov al, 0xec
    call command
    call wait_irq
    mov edi, {BUFFER:#x}
    mov ecx, 256
    mov dx, 0x1f0
    rep insw
    call nl
    mov eax, 20
    mov ecx, 2
    call lba
    mov al, 0x20
    call command
    call wait_irq
    mov edi, {BUFFER:#x}
    mov ecx, 256
    mov dx, 0x1f0
    rep insw
    call wait_irq
    mov ecx, 256
    rep insw
    mov esi, {BUFFER:#x}
    mov ecx, 256
    call sum
    mov eax, 30
    mov ecx, 2
    call lba
    mov al, 0x30
    call command
    call wait_drq
    mov esi, {BUFFER:#x}
    mov ecx, 256
    mov dx, 0x1f0
    rep outsw
    call wait_irq
    mov ecx, 256
    rep outsw
    call wait_irq
    call nl
    mov al, 0xe7
    call command
    call wait_irq
    call nl
    mov eax, 28
    mov ecx, 8
    call lba
    mov al, 0xc4
    call command
    call wait_irq
    mov edi, {BUFFER:#x}
    mov ecx, 2048
    mov dx, 0x1f0
    rep insw
    mov esi, {BUFFER:#x}
    mov ecx, 1024
    call sum
    mov eax, 200
    mov ecx, 1
    call lba
    mov al, 0x20
    call command
    call wait_irq
    call regs
"""


def source() -> str:
    return ("    mov esp, 0x90000\n" + idt_setup({0x76: "irq14"}) + "    jmp start\n" + LIB + "start:\n" + BODY
            + "    mov al, 0\n    mov dx, 0xf4\n    out dx, al\n    cli\n    hlt\n")


# What qemu-system-i386 7.2 prints for the guest with -drive file=IMG,if=ide,index=0,format=raw
# over disk_image() (tools/build_samples.qemu_command; recorded, re-checked by
# test_ide_guest_under_qemu), and the SHA-256 of the image it leaves.
QEMU_OUTPUT = """00 00 00 00 00 B0 00 
00 50
050CA7DC 00020040
00 00 05 00 00 E0 58 
00 00 05 00 00 E0 50 
00FFFE80 18171615
00 00 08 00 00 E0 50 
00 50
00 00 09 00 00 A0 50 
5EDF5DC0 01020304
00 50
04 41
00 00 08 00 00 E0 50 
1E1F1C40 03020100
00 01 64 00 00 E0 58 
04 01 64 00 00 E0 41 
04 01 64 00 00 E0 41 
01 01 01 00 00 A0 50 
00 01 01 FF FF B0 00 
01 58 
02 58 03 58 FFFEFF80 8F8E8D8C
04 58 05 50 
06 50 
07 58 FFFDFE00 C7C6C5C4
08 41 04 01 C8 00 00 E0 41 
"""
QEMU_IMAGE_SHA256 = "d34d558bbab3b301f4236e5af2419bf4c7984ce41d119f814d59469077b36aac"


def run_guest(tmp_path: Path, mode: str, drive: str, **config):
    guest = tmp_path / "ide.s"
    guest.write_text(source())
    console = BufferConsole(b"")
    vm, _image = build_machine(MachineConfig(image=str(guest), mode=mode, drives=[parse_drive(drive)], **config),
                               console)
    result = vm.run()
    return result, bytes(console.output).decode(), vm


@pytest.mark.parametrize("mode", MODES)
def test_ide_guest_matches_qemu(tmp_path, mode):
    image = tmp_path / "disk.img"
    image.write_bytes(disk_image())
    result, output, vm = run_guest(tmp_path, mode, f"file={image},if=ide,index=0,format=raw")
    assert result.reason.value == "debug_exit", result.message
    assert output == QEMU_OUTPUT
    assert sha(image.read_bytes()) == QEMU_IMAGE_SHA256       # the writes are in the file at the end
    counters = vm.ide.counters()["ide0"]
    # 2 + 1 + 8 + 1 (past the end: none) in phase 1; 2 + 8 in phase 2; IDENTIFY is no sector
    assert counters["sectors_read"] == 2 + 1 + 8 + 1 + 2 + 8
    assert counters["sectors_written"] == 1 + 2
    assert counters["flushes"] == 2
    assert counters["errors"] == 2                              # the two reads past the end


@pytest.mark.parametrize("mode", ["bt", "vt"])
def test_ide_guest_on_an_overlay_leaves_the_base_alone(tmp_path, mode):
    base = tmp_path / "base.img"
    base.write_bytes(disk_image())
    before = sha(base.read_bytes())
    overlay = tmp_path / "writes.cow"
    result, output, _vm = run_guest(tmp_path, mode, f"file={base},if=ide,index=0,format=overlay,overlay={overlay}")
    assert output == QEMU_OUTPUT
    assert sha(base.read_bytes()) == before
    # the overlay holds what QEMU's raw image holds after the same guest
    disk = Overlay(str(base), str(overlay))
    assert sha(disk.read(0, disk.sectors)) == QEMU_IMAGE_SHA256
    disk.close()
    # an overlay in memory: the same guest-visible result, nothing on disk
    result, output, _vm = run_guest(tmp_path, mode, f"file={base},format=overlay")
    assert output == QEMU_OUTPUT and sha(base.read_bytes()) == before


@needs_qemu
def test_ide_guest_under_qemu(tmp_path):
    from vmm.loaders.assembly import assemble
    code = assemble(source(), LOAD)
    kernel = tmp_path / "ide.elf"
    kernel.write_bytes(bs.wrap_multiboot(LOAD, [(LOAD, code, len(code))]))
    image = tmp_path / "disk.img"
    image.write_bytes(disk_image())
    command = bs.qemu_command(str(kernel)) + ["-drive", f"file={image},if=ide,index=0,format=raw"]
    proc = subprocess.run(command, input=b"", capture_output=True, timeout=60)
    assert proc.stdout.decode() == QEMU_OUTPUT
    assert proc.returncode == bs.qemu_status(0)
    assert sha(image.read_bytes()) == QEMU_IMAGE_SHA256


# ---------------------------------------------------------------------------------------------
# The controller alone
QEMU_IDENTIFY_100_SECTORS = (
    "0040 0002 0000 0010 7E00 0200 003F 0000 0000 0000 514D 3030 3030 3120 2020 2020 "
    "2020 2020 2020 2020 0003 0200 0004 322E 352B 2020 2020 5145 4D55 2048 4152 4444 "
    "4953 4B20 2020 2020 2020 2020 2020 2020 2020 2020 2020 2020 2020 2020 2020 8010 "
    "0001 0B00 0000 0200 0200 0007 0002 0010 003F 07E0 0000 0110 0064 0000 0007 0007 "
    "0003 0078 0078 0078 0078 4000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 "
    "00F0 0016 4021 7400 4000 4021 3400 4000 203F 0000 0000 0000 0000 6001 0000 0000 "
    "0000 0000 0000 0000 0064 0000 0000 0000 0000 0000 6000 0000 0000 0000 0000 0000 "
    "0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 "
    "0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 "
    "0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 "
    "0000 0000 0000 0000 0000 0000 0000 0000 0000 0001 0000 0000 0000 0000 0000 0000 "
    "0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 "
    "0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 "
    "0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 "
    "0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 "
    "0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000 0000")   # IDENTIFY of a 100-sector raw disk at index 0, QEMU 7.2


def channel(*disks, irqs=None):
    levels = irqs if irqs is not None else []
    return IdeChannel({i: d for i, d in enumerate(disks) if d is not None}, levels.append), levels


def identify(ide) -> list[int]:
    ide.io_write(7, 1, 0xEC)
    return [ide.io_read(0, 2) for _ in range(256)]


def test_identify_is_qemus():
    ide, _ = channel(MemoryDisk(100, disk_image()))
    ide.io_write(6, 1, 0xA0)
    words = identify(ide)
    assert " ".join(f"{w:04X}" for w in words) == " ".join(QEMU_IDENTIFY_100_SECTORS.split())
    assert ide.io_read(7, 1) == 0x50


def test_geometry_as_qemu_guesses_it():
    assert geometry(MemoryDisk(100)) == (2, 16, 63)
    assert geometry(MemoryDisk(16 * 63 * 100)) == (100, 16, 63)
    assert geometry(MemoryDisk(16 * 63 * 20000)) == (16383, 16, 63)
    mbr = bytearray(SECTOR_SIZE * 4000)                 # a partition ending at head 7, sector 32
    mbr[0x1BE + 5], mbr[0x1BE + 6], mbr[0x1BE + 12] = 7, 32, 100
    mbr[510:512] = b"\x55\xaa"
    assert geometry(MemoryDisk(4000, bytes(mbr))) == (4000 // (8 * 32), 8, 32)


def test_chs_and_lba28_address_the_same_sector():
    ide, _ = channel(MemoryDisk(4000, disk_image(4000)))
    # CHS (16 heads, 63 sectors): cylinder 2, head 3, sector 5 is LBA (2*16 + 3)*63 + 4
    for reg, value in ((2, 1), (3, 5), (4, 2), (5, 0), (6, 0xA3)):
        ide.io_write(reg, 1, value)
    ide.io_write(7, 1, 0x20)
    first = ide.io_read(0, 4)
    lba = (2 * 16 + 3) * 63 + 4
    assert first == int.from_bytes(disk_image(4000)[lba * 512:lba * 512 + 4], "little")
    [ide.io_read(0, 4) for _ in range(127)]
    assert [ide.io_read(r, 1) for r in (3, 4, 5, 6)] == [6, 2, 0, 0xA3]     # the next sector, in CHS


def test_past_the_end_and_read_only_get_qemus_error_bits():
    ide, irqs = channel(MemoryDisk(10, read_only=True))
    for reg, value in ((2, 1), (3, 10), (4, 0), (5, 0), (6, 0xE0)):
        ide.io_write(reg, 1, value)
    ide.io_write(7, 1, 0x20)                                 # sector 10 of 10: ide_rw_error
    assert (ide.io_read(1, 1), ide.io_read(7, 1)) == (0x04, 0x41) and irqs == [1, 0]
    ide.io_write(3, 1, 2)
    ide.io_write(7, 1, 0x30)
    [ide.io_write(0, 2, 0x1234) for _ in range(256)]         # a failed write: the same bits
    assert (ide.io_read(1, 1), ide.io_read(0x7, 1)) == (0x04, 0x41)


def test_nien_masks_the_irq_and_status_read_lowers_it():
    ide, irqs = channel(MemoryDisk(10))
    ide.control.io_write(0, 1, 0x02)
    ide.io_write(6, 1, 0xA0)
    ide.io_write(7, 1, 0xEC)
    assert irqs == [] and ide.control.io_read(0, 1) == 0x58
    ide.control.io_write(0, 1, 0x00)
    ide.io_write(7, 1, 0xE7)                                 # DRQ set: a new command is ignored
    assert irqs == []
    [ide.io_read(0, 2) for _ in range(256)]
    ide.io_write(7, 1, 0xE7)
    assert irqs == [1] and ide.control.io_read(0, 1) == 0x50 and irqs == [1]   # alternate status: no ack
    assert ide.io_read(7, 1) == 0x50 and irqs == [1, 0]


def test_software_reset_leaves_the_signature():
    ide, _ = channel(MemoryDisk(10), MemoryDisk(10))
    ide.io_write(2, 1, 0x33)
    ide.control.io_write(0, 1, 0x04)
    ide.control.io_write(0, 1, 0x00)
    assert [ide.io_read(r, 1) for r in range(1, 8)] == [0x01, 0x01, 0x01, 0x00, 0x00, 0xA0, 0x50]


def test_read_multiple_after_set_multiple_mode_interrupts_per_block():
    ide, irqs = channel(MemoryDisk(64, disk_image(64)))
    ide.io_write(6, 1, 0xE0)
    ide.io_write(2, 1, 2)
    ide.io_write(7, 1, 0xC6)
    ide.io_read(7, 1)
    for reg, value in ((2, 6), (3, 0), (4, 0), (5, 0)):
        ide.io_write(reg, 1, value)
    ide.io_write(7, 1, 0xC4)
    data = b""
    for block in range(3):
        assert ide.io_read(7, 1) == 0x58
        data += b"".join(ide.io_read(0, 2).to_bytes(2, "little") for _ in range(512))
    assert data == disk_image(64)[:6 * 512]
    assert irqs.count(1) == 1 + 3 and ide.io_read(7, 1) == 0x50      # SET MULTIPLE MODE, then one per block


def test_every_register_written_with_every_value_keeps_the_channel_sane():
    ide, _ = channel(MemoryDisk(8))
    for reg in range(8):
        for value in range(256):
            ide.io_write(reg, 1, value)
            ide.io_read(reg, 1)
            ide.control.io_write(0, 1, value & 0x7B)
            ide.io_read(0, 2)
    assert isinstance(ide.state(), dict)


# ---------------------------------------------------------------------------------------------
# The back ends
def test_raw_image_reads_and_writes_in_place(tmp_path):
    path = tmp_path / "raw.img"
    path.write_bytes(disk_image(8))
    disk = RawImage(str(path))
    assert disk.sectors == 8 and disk.read(3, 1) == disk_image(8)[3 * 512:4 * 512]
    disk.write(2, b"\xAA" * 1024)
    disk.flush()
    assert path.read_bytes()[1024:2048] == b"\xAA" * 1024
    with pytest.raises(DiskError):
        disk.read(7, 2)
    disk.close()
    read_only = RawImage(str(path), read_only=True)
    with pytest.raises(DiskError):
        read_only.write(0, bytes(512))
    read_only.close()


def test_overlay_never_writes_the_base_and_keeps_its_writes(tmp_path):
    base = tmp_path / "base.img"
    base.write_bytes(disk_image(8))
    cow = tmp_path / "base.cow"
    disk = Overlay(str(base), str(cow))
    disk.write(5, b"\x55" * 512)
    disk.close()
    assert base.read_bytes() == disk_image(8)
    again = Overlay(str(base), str(cow))
    assert again.read(4, 2) == disk_image(8)[4 * 512:5 * 512] + b"\x55" * 512
    again.close()
    in_memory = Overlay(str(base))
    in_memory.write(0, b"\x01" * 512)
    assert in_memory.read(0, 1) == b"\x01" * 512 and base.read_bytes() == disk_image(8)
    in_memory.close()


def test_a_killed_run_never_corrupts_the_base(tmp_path):
    base = tmp_path / "base.img"
    base.write_bytes(disk_image(64))
    cow = tmp_path / "base.cow"
    script = (f"import os, signal\nfrom vmm.disks import Overlay\nd = Overlay({str(base)!r}, {str(cow)!r})\n"
              f"for n in range(64):\n    d.write(n, bytes([n]) * 512)\n    if n == 40: os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == -9
    assert base.read_bytes() == disk_image(64)
    disk = Overlay(str(base), str(cow))
    assert disk.read(0, 41) == b"".join(bytes([n]) * 512 for n in range(41))
    assert disk.read(41, 23) == disk_image(64)[41 * 512:]
    disk.close()


# ---------------------------------------------------------------------------------------------
# --drive
@pytest.mark.parametrize("text, message", [
    ("file=/no/such.img,if=ide,index=0", "No such file"),
    ("file={img},if=ide,index=0,cache=none", "unknown key 'cache'"),
    ("file={img},if=ide,index=2", "secondary IDE channel"),
    ("file={img},if=virtio", "only if=ide"),
    ("file={img},format=qcow2", "format=qcow2"),
    ("file={short},if=ide,index=0", "not a whole number of 512-byte sectors"),
    ("if=ide,index=0", "file=PATH is required"),
])
def test_bad_drive_options_are_one_line_errors(tmp_path, text, message):
    img, short = tmp_path / "ok.img", tmp_path / "short.img"
    img.write_bytes(bytes(1024))
    short.write_bytes(bytes(1000))
    guest = tmp_path / "g.s"
    guest.write_text("    mov al, 0\n    out 0xf4, al\n")
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", str(guest), "--drive",
                           text.format(img=img, short=short)], capture_output=True, timeout=60,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    stderr = proc.stderr.decode()
    assert proc.returncode == 2 and message in stderr and len(stderr.splitlines()) == 1, stderr


def test_two_drives_on_one_file_and_one_index_are_refused(tmp_path):
    img = tmp_path / "a.img"
    img.write_bytes(bytes(1024))
    link = tmp_path / "b.img"
    link.symlink_to(img)
    with pytest.raises(ConfigError, match="same file"):
        open_drives([DriveSpec(str(img), 0), DriveSpec(str(link), 1)])
    other = tmp_path / "c.img"
    other.write_bytes(bytes(1024))
    with pytest.raises(ConfigError, match="already"):
        open_drives([DriveSpec(str(img), 0), DriveSpec(str(other), 0)])
    with pytest.raises(ConfigError, match="same file"):
        open_drives([DriveSpec(str(img), 0, "overlay", overlay=str(img))])


def test_an_unwritable_image_asks_for_readonly(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes any file")
    img = tmp_path / "ro.img"
    img.write_bytes(bytes(1024))
    img.chmod(0o444)
    with pytest.raises(ConfigError, match="readonly"):
        open_drives([parse_drive(f"file={img},index=0")])


def test_report_counts_per_drive_and_trace_names_commands(tmp_path):
    image = tmp_path / "disk.img"
    image.write_bytes(disk_image())
    trace = tmp_path / "trace.log"
    guest = tmp_path / "ide.s"
    guest.write_text(source())
    report = tmp_path / "run.json"
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", str(guest), "--drive", f"file={image},index=0",
                           "--report", str(report), "-d", "disk", "-D", str(trace)], capture_output=True,
                          timeout=120, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr
    import json
    disks = json.loads(report.read_text())["counters"]["disks"]
    assert disks["ide0"]["sectors_written"] == 3 and disks["ide0"]["commands"] > 10
    log = trace.read_text()
    assert "ide: unit 0 command 0x20 READ SECTORS lba sector 3 count 2" in log
    assert "ide: software reset" in log


def test_xv6s_probe_of_disk_1_with_no_master():
    """xv6's ideinit with fs.img at index 1 alone: idewait(0) on the unit SeaBIOS left selected,
    the slave's status non-zero, then idewait(0) on the absent master, which shows SeaBIOS's
    aborted probe (QEMU 7.2, recorded with a probe guest: 04 00 00 00 00 A0 41 41 for
    0x1F1-0x1F7 and 0x3F6 once the master is selected)."""
    ide, _ = channel(None, MemoryDisk(100))
    assert ide.io_read(7, 1) & 0xC0 == 0x40
    ide.io_write(6, 1, 0xF0)
    assert ide.io_read(7, 1) != 0
    ide.io_write(6, 1, 0xE0)
    assert [ide.io_read(r, 1) for r in range(1, 8)] + [ide.control.io_read(0, 1)] == \
        [0x04, 0, 0, 0, 0, 0xE0, 0x41, 0x41]
    ide.io_write(6, 1, 0xF0)                                    # xv6's idestart for block 1 on dev 1
    for reg, value in ((2, 1), (3, 1), (4, 0), (5, 0)):
        ide.io_write(reg, 1, value)
    ide.io_write(7, 1, 0x20)
    assert ide.io_read(7, 1) == 0x58
    assert b"".join(ide.io_read(0, 4).to_bytes(4, "little") for _ in range(128)) == bytes(512)
