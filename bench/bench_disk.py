"""Sectors per second a guest reads through IDE PIO and through bus-master DMA, under each mode and QEMU, measured in one run.

    python bench/bench_disk.py [--modes bt,direct,trap,vt,qemu] [--pio-sectors 4096]
                               [--dma-sectors 262144] [--repeat 3]

One guest, built twice: it reads `--pio-sectors` sectors of a raw image on the IDE master by PIO
(READ SECTORS of 256, each sector `rep insd` of 128 dwords after DRQ, as xv6's and Linux's PIO
loops do), or `--dma-sectors` by DMA (finding the PIIX3 IDE function on PCI bus 0, bus
mastering on, READ DMA of 256 sectors into 128 KiB through two 64 KiB PRDs, polling the
bus-master status), over an 8 MiB image again and again, then writes 0 to isa-debug-exit.
Each configuration also runs the guest reading nothing: the transfer's time is the difference
(the monitor's: the reports' wall_time_s; QEMU's: the process's wall time, its start-up and
SeaBIOS included in both). Printed: sectors per second by PIO and by DMA, DMA's ratio to PIO's,
and each mode's ratio to QEMU's (the fastest of --repeat runs each). Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.samples import build_samples                    # noqa: E402  (Multiboot wrapper, QEMU's command)
from vmm.loaders.assembly import assemble                 # noqa: E402

LOAD = 0x100000
DISK_SECTORS = 16384                  # 8 MiB
CHUNK = 256                           # sectors a command
BUFFER, TABLE = 0x200000, 0x1F0000    # 128 KiB of buffer; the PRD table
MODES = ["bt", "direct", "trap", "vt"]


def ata_command(command: int) -> str:
    """Drive 0, LBA28 sector EBX, a count of 256 (0), then `command`: the task file both guests write."""
    return """
    mov dx, 0x1f6
    mov eax, ebx
    shr eax, 24
    and al, 0x0f
    or al, 0xe0
    out dx, al
    mov dx, 0x1f2
    xor al, al
    out dx, al
    mov eax, ebx
    mov dx, 0x1f3
    out dx, al
    shr eax, 8
    mov dx, 0x1f4
    out dx, al
    shr eax, 8
    mov dx, 0x1f5
    out dx, al
    mov dx, 0x1f7
    mov al, """ + f"{command:#x}" + """
    out dx, al
"""


COMMON = """
    mov esp, 0x90000
    mov esi, {sectors}
    xor ebx, ebx
    test esi, esi
    jz done
"""

PIO = """
next:
""" + ata_command(0x20) + """    mov ebp, 256
sector:
    mov dx, 0x1f7
drq:
    in al, dx
    test al, 0x80
    jnz drq
    test al, 0x08
    jz drq
    mov edi, {buffer:#x}
    mov ecx, 128
    mov dx, 0x1f0
    rep insd
    dec ebp
    jnz sector
    add ebx, 256
    and ebx, {mask:#x}
    sub esi, 256
    jnz next
"""

DMA = """
    mov ebp, 0x80000000
find:
    mov eax, ebp
    or eax, 8
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    shr eax, 16
    cmp ax, 0x0101
    je found
    add ebp, 0x100
    cmp ebp, 0x80010000
    jne find
    mov al, 1
    jmp fail
found:
    mov eax, ebp
    or eax, 4
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    or eax, 5
    out dx, eax
    mov eax, ebp
    or eax, 0x20
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    and eax, 0xfffc
    mov ebp, eax
    mov dword ptr [{table:#x}], {buffer:#x}
    mov dword ptr [{table4:#x}], 0
    mov dword ptr [{table8:#x}], {buffer2:#x}
    mov dword ptr [{table12:#x}], 0x80000000
next:
    mov dx, bp
    xor al, al
    out dx, al
    add dx, 2
    mov al, 6
    out dx, al
    add dx, 2
    mov eax, {table:#x}
    out dx, eax
""" + ata_command(0xC8) + """    mov dx, bp
    mov al, 1
    out dx, al
    add dx, 2
wait:
    in al, dx
    test al, 4
    jz wait
    mov dx, 0x1f7
    in al, dx
    test al, 1
    jnz fail
    add ebx, 256
    and ebx, {mask:#x}
    sub esi, 256
    jnz next
"""

END = """
done:
    xor al, al
fail:
    mov dx, 0xf4
    out dx, al
    cli
    hlt
"""


def guest(directory: Path, method: str, sectors: int) -> Path:
    body = PIO if method == "pio" else DMA
    source = (COMMON + body + END).format(sectors=sectors, buffer=BUFFER, buffer2=BUFFER + 0x10000, table=TABLE,
                                          table4=TABLE + 4, table8=TABLE + 8, table12=TABLE + 12,
                                          mask=DISK_SECTORS - 1)
    code = assemble(source, LOAD, f"{method}-{sectors}")
    image = directory / f"{method}-{sectors}.elf"
    image.write_bytes(build_samples.wrap_multiboot(LOAD, [(LOAD, code, len(code))]))
    return image


def seconds(config: str, image: Path, disk: Path, report: Path) -> float:
    """One run's time: the report's wall_time_s, or QEMU's process wall time."""
    drive = f"file={disk},if=ide,index=0,format=raw"
    if config == "qemu":
        started = time.monotonic()
        proc = subprocess.run(build_samples.qemu_command(str(image)) + ["-drive", drive], capture_output=True)
        elapsed = time.monotonic() - started
        if proc.returncode != build_samples.qemu_status(0):
            raise SystemExit(f"bench: qemu {image.name}: status {proc.returncode}: {proc.stdout.decode()!r}")
        return elapsed
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", str(image), "--mode", config, "--drive", drive,
                           "--report", str(report)], capture_output=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {config} {image.name}: status {proc.returncode}: {proc.stderr.decode().strip()}")
    return json.loads(report.read_text())["wall_time_s"]


def rate(config: str, directory: Path, disk: Path, method: str, sectors: int, repeat: int) -> float:
    """Sectors per second: the fastest run reading `sectors` less the fastest reading none."""
    report = directory / "run.json"
    loaded, empty = guest(directory, method, sectors), guest(directory, method, 0)
    full = min(seconds(config, loaded, disk, report) for _ in range(repeat))
    base = min(seconds(config, empty, disk, report) for _ in range(repeat))
    return sectors / max(full - base, 1e-6)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES + ["qemu"]))
    parser.add_argument("--pio-sectors", type=int, default=4096)
    parser.add_argument("--dma-sectors", type=int, default=262144)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the fastest counts")
    args = parser.parse_args(argv)
    configs = args.modes.split(",")
    if "qemu" in configs and shutil.which(build_samples.QEMU) is None:
        configs.remove("qemu")
    for count in (args.pio_sectors, args.dma_sectors):
        if count <= 0 or count % CHUNK:
            raise SystemExit(f"bench: sector counts must be positive multiples of {CHUNK}, got {count}")
    rates: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        disk = directory / "disk.img"
        disk.write_bytes(bytes(range(256)) * 2 * DISK_SECTORS)
        for config in configs:
            pio = rate(config, directory, disk, "pio", args.pio_sectors, args.repeat)
            dma = rate(config, directory, disk, "dma", args.dma_sectors, args.repeat)
            rates[config] = (pio, dma)
            print(f"{config}: PIO {pio:,.0f} sectors/s, DMA {dma:,.0f} sectors/s", flush=True)
    print()
    print(f"{'':8}{'PIO/s':>12}{'DMA/s':>12}{'DMA/PIO':>9}" + ("{:>12}{:>12}".format("PIO/qemu", "DMA/qemu")
                                                             if "qemu" in rates else ""))
    for config, (pio, dma) in rates.items():
        line = f"{config:8}{pio:12,.0f}{dma:12,.0f}{dma / pio:9.1f}"
        if "qemu" in rates:
            qpio, qdma = rates["qemu"]
            line += f"{pio / qpio:12.3f}{dma / qdma:12.3f}"
        print(line)
    print("sectors/s: sectors read / (run time reading them - run time reading none), fastest of each.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
