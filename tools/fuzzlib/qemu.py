"""Generated programs against qemu-system-i386, the reference for the direct mode itself.

QEMU's memory cannot be read back, so the program is generated with Options(dump=True): its
epilogue prints the result area, the exception log and checksums of the data, stack, system
and code areas on COM1, and the two consoles are compared word by word. Fields that differ by
platform design are masked: the boot GDT's address (GDTR when the program loads no GDT of its
own) and the firmware IDTR (when it loads no IDT).

    python -m tools.fuzzlib.qemu --seed 1 --count 50        # direct against QEMU
    python -m tools.fuzzlib.qemu --seed 1 --count 50 --ring3          # bodies in ring 3
    python -m tools.fuzzlib.qemu --seed 1 --count 50 --timer          # and IRQ0 (QEMU: real time)

Under --timer QEMU's PIT runs in real time, so interrupts land elsewhere than under the monitor:
the programs must not care where (see the generator), and here that is checked too.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from tools.fuzzlib.compare import Outcome, run_source, shrink
from tools.fuzzlib.generator import CODE_BASE, RESULT_FIELDS, Options, Program, generate, program_seed

QEMU = "qemu-system-i386"
RESULT_WORDS = {offset // 4: name for offset, (name, _size) in RESULT_FIELDS.items()}
RESULT_WORDS.update({0x24 // 4: "cs/ss", 0x28 // 4: "ds/es", 0x2C // 4: "fs/gs", 0x30 // 4: "gdtr.limit/base",
                     0x34 // 4: "gdtr.base", 0x38 // 4: "idtr.limit/base", 0x3C // 4: "idtr.base",
                     0x40 // 4: "tr/ldtr"})
CHECKSUMS = tuple([f"data page {page:#x}" for page in range(0x200000, 0x210000, 0x1000)]
                  + [f"stack page {page:#x}" for page in range(0x210000, 0x218000, 0x1000)]
                  + ["system area", "code"])


def available() -> bool:
    return shutil.which(QEMU) is not None


def boot_under_qemu(source: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """`source` booted by QEMU through a Multiboot wrapper (same bytes, same load address and
    entry point as the monitor's .s loader): its console on stdout, (exit value << 1) | 1 as
    the status when it exits through isa-debug-exit."""
    from tools.build_samples import qemu_command, wrap_multiboot
    from vmm.loaders.assembly import assemble

    code = assemble(source, CODE_BASE)
    with tempfile.TemporaryDirectory(prefix="vmm-fuzz-qemu-") as directory:
        image = Path(directory) / "program.elf"
        image.write_bytes(wrap_multiboot(CODE_BASE, [(CODE_BASE, code, len(code))]))
        return subprocess.run(qemu_command(str(image)), input=b"", stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)


def run_under_qemu(source: str, timeout: float = 60.0) -> bytes:
    """Console output of `source` booted by QEMU (boot_under_qemu)."""
    return boot_under_qemu(source, timeout).stdout


def parse_dump(console: bytes) -> dict:
    """{field name: value} from the R, E and C lines the dump epilogue prints last."""
    fields = {}
    for line in console.split(b"\n"):
        if not line[:1] in (b"R", b"E", b"C"):
            continue
        try:
            words = [int(word, 16) for word in line[1:].split()]
        except ValueError:
            continue
        tag = line[:1].decode()
        for index, value in enumerate(words):
            if tag == "R":
                name = f"result.{RESULT_WORDS.get(index, f'word{index}')}"
            elif tag == "E":
                name = "exception count" if index == 0 else (
                    f"exception log[{(index - 2) // 8}].{('vector', 'error', 'eip', 'cs', 'eflags', 'handler eflags', 'esp', 'ring-3 esp')[(index - 2) % 8]}"
                    if index >= 2 else "pad")
            else:
                name = f"checksum of {CHECKSUMS[index] if index < len(CHECKSUMS) else index}"
            fields[name] = value
    return fields


LGDT, LIDT = ".byte 0x0f, 0x01, 0x15", ".byte 0x0f, 0x01, 0x1d"    # how the generator encodes them


def masked(source: str) -> set:
    """GDTR and IDTR unless the program loads its own (then they must match)."""
    names = set()
    if LGDT not in source:
        names |= {"result.gdtr.limit/base", "result.gdtr.base"}
    if LIDT not in source:
        names |= {"result.idtr.limit/base", "result.idtr.base"}
    return names


def diff_dumps(program: Program, direct: bytes, qemu: bytes) -> list:
    a, b = parse_dump(direct), parse_dump(qemu)
    if not a or not b:
        return [f"no dump: direct printed {direct[-200:]!r}, qemu printed {qemu[-200:]!r}"]
    skip = masked(program.source())
    lines = []
    for name in sorted(set(a) | set(b), key=lambda n: (list(a).index(n) if n in a else 10 ** 6)):
        if name in skip or a.get(name) == b.get(name):
            continue
        va, vb = a.get(name), b.get(name)
        lines.append(f"{name}: direct={'-' if va is None else f'{va:#010x}'} qemu={'-' if vb is None else f'{vb:#010x}'}")
    return lines


def runner(source: str, mode: str, **options) -> Outcome:
    """A compare.Runner for shrink(): mode "qemu" boots QEMU, any other runs the monitor; both
    outcomes carry only the dump (masked fields removed) so that only it is compared."""
    skip = masked(source)
    if mode == "qemu":
        outcome = Outcome(mode, reason="debug_exit")
        console = run_under_qemu(source)
    else:
        real = run_source(source, mode, **options)
        outcome = Outcome(mode, reason=real.reason, memory=real.memory, error=real.error)
        console = real.console
    fields = {name: value for name, value in parse_dump(console).items() if name not in skip}
    outcome.console = "\n".join(f"{name}={value:#x}" for name, value in fields.items()).encode()
    return outcome


def check(seed: int, length: int = 40, options: Optional[Options] = None) -> tuple:
    """(program, differences) of one program under direct and under QEMU."""
    options = options or Options()
    options.dump = True
    program = generate(seed, length, options)
    source = program.source()
    direct = run_source(source, "direct")
    return program, diff_dumps(program, direct.console, run_under_qemu(source))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="generated programs: direct mode against QEMU")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--length", type=int, default=40)
    parser.add_argument("--keep-dir", type=Path)
    parser.add_argument("--shrink", action="store_true", help="minimize each failing program")
    parser.add_argument("--ring3", action="store_true", help="generate bodies that run in ring 3")
    parser.add_argument("--timer", action="store_true", help="with PIT interrupts (implies --ring3)")
    args = parser.parse_args(argv)
    if not available():
        print(f"{QEMU} is not installed", file=sys.stderr)
        return 2
    failed = 0
    for index in range(args.count):
        program, differences = check(program_seed(args.seed, index), args.length,
                                     Options(ring3=args.ring3, timer=args.timer))
        if differences:
            failed += 1
            print(f"program {index} (seed {program.seed}, {program.info}):")
            print("\n".join("    " + line for line in differences[:20]))
            if args.shrink:
                program = shrink(program, ("direct", "qemu"), runner=runner, max_seconds=120)
                print("    minimized to:\n" + "\n".join("      " + line for item in program.items
                                                        if item.kind not in ("epilogue", "dump", "start", "end")
                                                        for line in item.lines))
            if args.keep_dir:
                args.keep_dir.mkdir(parents=True, exist_ok=True)
                (args.keep_dir / f"qemu-seed{args.seed}-{index}.s").write_text(
                    "\n".join("# " + line.replace(";", ",") for line in differences) + "\n" + program.source())
    print(f"{args.count - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
