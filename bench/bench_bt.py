"""Binary translation against direct execution (and QEMU): throughput ratios measured in one run.

    python bench/bench_bt.py [--scale 1.0] [--repeat 3] [--no-qemu]

For each guest, runs `vmm run` once under direct and once under bt and prints: guest
instructions per second under each, the ratio bt/direct, monitor exits (run-loop exits plus
translation-cache exits) per million guest instructions, and translation speed. Where
qemu-system-i386 is installed, the same image (wrapped as a Multiboot ELF) also runs under QEMU
and the whole-process wall time of bt is divided by QEMU's. Figures are ratios of this run:
they move with the machine, so nothing here is asserted. Each run is repeated (--repeat) and
the fastest of each kind kept: on the 2-core development machine a whole run (direct and bt
alike) is sometimes twice as slow as the next, and one slow run would decide a ratio.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.samples import build_samples                    # noqa: E402  (Multiboot wrapper, QEMU command)
from vmm.loaders.assembly import assemble                 # noqa: E402

LOAD = 0x100000
EXIT = "\n    mov dx, 0xf4\n    out dx, eax\n    cli\n    hlt\n"


@dataclass
class Guest:
    name: str
    what: str
    source: str          # with {N}: the iteration count
    per_iteration: int   # guest instructions per loop iteration
    iterations: int


GUESTS = [
    Guest("compute", "arithmetic, loads and stores (data on its own page)", """
    mov esp, 0x90000
    mov ecx, {N}
    xor eax, eax
    mov esi, 0x200000
top:
    mov ebx, dword ptr [esi]
    add eax, ebx
    lea ebx, [eax + ecx*2]
    mov dword ptr [esi + 4], ebx
    xor eax, ebx
    shr ebx, 3
    dec ecx
    jnz top
""" + EXIT, 8, 160_000_000),
    Guest("calls", "direct and indirect calls, ret, jump table", """
    mov esp, 0x90000
    mov dword ptr [0x200000], f1
    mov dword ptr [0x200004], f2
    mov dword ptr [0x200008], f3
    mov dword ptr [0x20000c], f4
    mov ecx, {N}
    xor eax, eax
top:
    call f1
    mov edx, ecx
    and edx, 3
    call dword ptr [0x200000 + edx*4]
    dec ecx
    jnz top
""" + EXIT + """
f1:
    add eax, ecx
    ret
f2:
    sub eax, 3
    ret
f3:
    xor eax, ecx
    ret
f4:
    inc eax
    ret
""", 10, 32_000_000),
    Guest("kernel", "cli/sti/pushf/popf as a kernel's critical sections use them", """
    mov esp, 0x90000
    mov ecx, {N}
    xor eax, eax
top:
    pushfd
    cli
    add eax, ecx
    popfd
    pushfd
    pop ebx
    sti
    cli
    dec ecx
    jnz top
""" + EXIT, 10, 32_000_000),
    Guest("codepage", "a counter and a sum kept on the loop's own code page (self-checking blocks)", """
    mov ecx, {N}
top:
    inc dword ptr [counter]
    add dword ptr [sum], ecx
    dec ecx
    jnz top
""" + EXIT + """
counter:
    .long 0
sum:
    .long 0
""", 4, 40_000_000),
]


def build(guest: Guest, scale: float, directory: Path) -> tuple[Path, int]:
    iterations = max(1, int(guest.iterations * scale))
    code = assemble(guest.source.replace("{N}", str(iterations)), LOAD, guest.name)
    image = directory / f"{guest.name}.elf"
    image.write_bytes(build_samples.wrap_multiboot(LOAD, [(LOAD, code, len(code))]))
    return image, iterations * guest.per_iteration


def run_vmm(image: Path, mode: str, directory: Path) -> tuple[dict, float]:
    report = directory / f"{image.stem}.{mode}.json"
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", str(image), "--mode", mode, "--report", str(report)],
                          capture_output=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if proc.returncode != 0 and not report.exists():
        raise SystemExit(f"bench: {image.name} under {mode} failed: {proc.stderr.decode().strip()}")
    return json.loads(report.read_text()), wall


def run_qemu(image: Path) -> float:
    started = time.perf_counter()
    subprocess.run(build_samples.qemu_command(str(image)), capture_output=True, stdin=subprocess.DEVNULL, timeout=600)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every guest's iteration count")
    parser.add_argument("--no-qemu", action="store_true", help="skip the QEMU comparison")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the fastest counts (default 3)")
    args = parser.parse_args(argv)
    qemu = not args.no_qemu and shutil.which(build_samples.QEMU)
    header = f"{'guest':8} {'direct Mi/s':>11} {'bt Mi/s':>8} {'bt/direct':>9} {'exits/Mi':>9} {'xlate Ki/s':>10}"
    header += f" {'bt/qemu wall':>12}" if qemu else ""
    print(header)
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        for guest in GUESTS:
            image, instructions = build(guest, args.scale, directory)
            runs = max(1, args.repeat)
            direct = min((run_vmm(image, "direct", directory)[0] for _ in range(runs)),
                         key=lambda report: report["wall_time_s"])
            bt_runs = [run_vmm(image, "bt", directory) for _ in range(runs)]
            translated = min((report for report, _wall in bt_runs), key=lambda report: report["wall_time_s"])
            bt_wall = min(wall for _report, wall in bt_runs)
            counters = translated["counters"]
            exits = sum(counters["exits"].values()) + sum(counters["cache_exits"].values())
            cache = counters["translation_cache"]
            direct_rate = instructions / direct["wall_time_s"] / 1e6
            bt_rate = instructions / translated["wall_time_s"] / 1e6
            xlate = cache["instructions_translated"] / max(cache["translation_seconds"], 1e-9) / 1e3
            line = (f"{guest.name:8} {direct_rate:11.0f} {bt_rate:8.0f} {bt_rate / direct_rate:9.2f} "
                    f"{exits / instructions * 1e6:9.3f} {xlate:10.1f}")
            if qemu:
                line += f" {bt_wall / min(run_qemu(image) for _ in range(runs)):12.2f}"
            print(line, flush=True)
    print("Mi/s: million guest instructions per second of run loop; exits/Mi: monitor exits per million "
          "guest instructions;\nxlate: guest instructions translated per second of translation; "
          "bt/qemu wall: whole-process wall time.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
