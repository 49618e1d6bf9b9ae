#!/usr/bin/env python3
"""Rebuild the sample guest images in sample_binaries/ from source (and, with --expected,
regenerate their expected console output by running them under qemu-system-i386).

    python tools/build_samples.py              # rebuild images + samples.json
    python tools/build_samples.py --expected   # ... and re-record expected/*.out from QEMU
    python tools/build_samples.py --check      # rebuild into a temp dir, compare with the tree

Builds are reproducible: no timestamps, no build-id, fixed input order.  The helpers here
(qemu_command, run_qemu, wrap_multiboot, load_manifest) are reused by
tests/test_qemu_reference.py.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES_DIR = REPO_ROOT / "sample_binaries"
SRC_DIR = SAMPLES_DIR / "src"
INCLUDE_DIR = SRC_DIR / "include"
LINKER_SCRIPT = INCLUDE_DIR / "link.ld"
HIGH_LINKER_SCRIPT = INCLUDE_DIR / "link_high.ld"    # boot part at 1 MiB, the rest at 0xC0100000
MANIFEST = SAMPLES_DIR / "samples.json"

QEMU = "qemu-system-i386"
QEMU_TIMEOUT = 20.0
LOAD_ADDRESS = 0x100000

# Object files shared by the samples (from sample_binaries/src/include/).
CRT0 = "include/crt0.S"
RUNTIME = "include/runtime.S"
MB_HEADER = "include/multiboot_header.S"
CHECK = "include/check.S"       # self-checking helpers + panic IDT (only the samples that use it)
USER = "include/user.S"         # GDT with user segments, TSS, entering ring 3
PROBE = "include/probe.S"       # probing instructions: note the exception each one takes
PIC = "include/pic.S"           # the i8259 pair remapped to 0x20, the i8254 periodic
PAGING = "include/pagetables.S" # page-table helpers and the #PF handler of the paging samples

# name -> (sources relative to src/, output file, kind)
#   kind "multiboot": ELF32 with a Multiboot header (loadable by QEMU -kernel)
#   kind "elf":       plain ELF32, no Multiboot header
#   kind "flat":      flat binary of the linked image, to be loaded at 0x100000, entry at its start
#   kind "asm":       Keystone assembly source, copied verbatim (assembled by the monitor)
IMAGES = {
    "hello": ([MB_HEADER, CRT0, RUNTIME, "hello.S"], "hello.elf", "multiboot"),
    "memmap": ([MB_HEADER, CRT0, RUNTIME, "memmap.S"], "memmap.elf", "multiboot"),
    "exceptions": ([MB_HEADER, CRT0, RUNTIME, "exceptions.S"], "exceptions.elf", "multiboot"),
    "uart": ([MB_HEADER, CRT0, RUNTIME, "uart.S"], "uart.elf", "multiboot"),
    "echo": ([MB_HEADER, CRT0, RUNTIME, "echo.S"], "echo.elf", "multiboot"),
    "triple": ([MB_HEADER, CRT0, RUNTIME, "triple.S"], "triple.elf", "multiboot"),
    "calls": ([MB_HEADER, CRT0, RUNTIME, CHECK, "calls.S"], "calls.elf", "multiboot"),
    "smc": ([MB_HEADER, CRT0, RUNTIME, CHECK, "smc.S"], "smc.elf", "multiboot"),
    "smc_data": ([MB_HEADER, CRT0, RUNTIME, CHECK, "smc_data.S"], "smc_data.elf", "multiboot"),
    "sensitive": ([MB_HEADER, CRT0, RUNTIME, CHECK, "sensitive.S"], "sensitive.elf", "multiboot"),
    "faults_in_blocks": ([MB_HEADER, CRT0, RUNTIME, CHECK, "faults_in_blocks.S"], "faults_in_blocks.elf",
                         "multiboot"),
    "ticks": ([MB_HEADER, CRT0, RUNTIME, CHECK, "ticks.S"], "ticks.elf", "multiboot"),
    "multitask": ([MB_HEADER, CRT0, RUNTIME, CHECK, USER, PIC, "multitask.S"], "multitask.elf", "multiboot"),
    "ring3": ([MB_HEADER, CRT0, RUNTIME, CHECK, USER, PROBE, "ring3.S"], "ring3.elf", "multiboot"),
    "segments": ([MB_HEADER, CRT0, RUNTIME, CHECK, USER, PROBE, "segments.S"], "segments.elf", "multiboot"),
    "string_io": ([MB_HEADER, CRT0, RUNTIME, CHECK, USER, PROBE, "string_io.S"], "string_io.elf", "multiboot"),
    "holes": ([MB_HEADER, CRT0, RUNTIME, "holes.S"], "holes.elf", "multiboot"),
    "paging": ([MB_HEADER, CRT0, RUNTIME, CHECK, PAGING, "paging.S"], "paging.elf", "multiboot"),
    "tlb": ([MB_HEADER, CRT0, RUNTIME, CHECK, PAGING, "tlb.S"], "tlb.elf", "multiboot"),
    "address_spaces": ([MB_HEADER, CRT0, RUNTIME, CHECK, USER, PAGING, "address_spaces.S"], "address_spaces.elf",
                       "multiboot"),
    "higher_half": ([MB_HEADER, RUNTIME, CHECK, PAGING, "higher_half.S"], "higher_half.elf", "multiboot"),
    "alias_smc": ([MB_HEADER, CRT0, RUNTIME, CHECK, PAGING, "alias_smc.S"], "alias_smc.elf", "multiboot"),
    "paging_timer": ([MB_HEADER, CRT0, RUNTIME, CHECK, PIC, PAGING, "paging_timer.S"], "paging_timer.elf",
                     "multiboot"),
    "tasks": ([MB_HEADER, CRT0, RUNTIME, CHECK, USER, PROBE, PAGING, "tasks.S"], "tasks.elf", "multiboot"),
    "tasks16": ([MB_HEADER, CRT0, RUNTIME, CHECK, USER, "tasks16.S"], "tasks16.elf", "multiboot"),
    "plain": ([CRT0, RUNTIME, "plain.S"], "plain.elf", "elf"),
    "flat": ([CRT0, RUNTIME, "flat.S"], "flat.bin", "flat"),
    "hello_s": (["hello_keystone.s"], "hello.s", "asm"),  # not src/hello.s: clashes with hello.S on case-insensitive file systems
}

# Extra linker options by image name.  Self-modifying samples get a writable text segment
# (link.ld makes the text PT_LOAD RWX when SAMPLE_WRITABLE_TEXT is defined).
WRITABLE_TEXT = ["--defsym", "SAMPLE_WRITABLE_TEXT=1", "--no-warn-rwx-segments"]
LINK_OPTIONS = {
    "smc": WRITABLE_TEXT,
    "smc_data": WRITABLE_TEXT,
}
# Linker script by image name (default: LINKER_SCRIPT). The higher-half kernel has its own crt0.
LINKER_SCRIPTS = {
    "higher_half": HIGH_LINKER_SCRIPT,
}

MODULES = ["sample_binaries/modules/mod1.txt", "sample_binaries/modules/mod2.txt"]

# The monitor's execution modes. A run lists in "modes" those in which it is expected to match
# QEMU today; "missing" says, for each mode left out, what that mode still lacks (the tests
# skip the run there with that reason). Trap-and-emulate runs the samples that show its
# virtualization holes and differs where they do: tests/test_trap.py checks those apart.
MODES = ("bt", "direct", "trap", "vt")
STRING_IO_CHECK = ("Unicorn 2.1.1 skips the I/O permission check of string I/O, which only its I/O hook can make: "
                   "INS stores a dummy 0 at ES:EDI before the hook can refuse, and rep with ECX = 0 calls no hook "
                   "(issue 3)")

TSS16_ENGINE = ("Unicorn 2.1.1 (QEMU 5.0) performs a far call or iret to a 16-bit TSS itself, with two bugs QEMU "
                "6.1 fixed: it loads the upper halves of the general registers as 0xFFFF, and reads and writes the "
                "segment selectors 4 bytes apart instead of 2, so the new CS comes from the SS field (#TS) and a "
                "save overwrites the LDT field and what follows the TSS (under vt, only with nested paging: with "
                "shadow paging the switch is a VM exit the monitor performs)")


def _run(name, image, *, append=None, initrd=(), stdin=None, exit=0, expected=None, qemu=True, missing=None):
    missing = dict(sorted((missing or {}).items()))
    assert set(missing) <= set(MODES), missing
    return {
        "name": name,
        "image": f"sample_binaries/{image}",
        "append": append,
        "initrd": list(initrd),
        "stdin": stdin,
        "exit": exit,
        "expected": f"sample_binaries/expected/{expected or name}.out",
        "qemu": qemu,
        "modes": [mode for mode in MODES if mode not in missing],
        "missing": missing,
    }


# One entry per run.  "exit" is the value the guest writes to port 0xF4 (None: triple fault).
RUNS = [
    _run("hello", "hello.elf"),
    _run("memmap.modules", "memmap.elf", append="console=ttyS0 quiet",
         initrd=[MODULES[0] + " first module args", MODULES[1]]),
    _run("memmap.plain", "memmap.elf"),
    _run("exceptions", "exceptions.elf", exit=0x2A),
    _run("uart", "uart.elf", exit=3),
    _run("echo", "echo.elf", stdin="hello world\n"),
    _run("triple", "triple.elf", exit=None),
    _run("calls", "calls.elf"),
    _run("smc", "smc.elf"),
    _run("smc_data", "smc_data.elf"),
    _run("sensitive", "sensitive.elf"),
    _run("faults_in_blocks", "faults_in_blocks.elf"),
    _run("ticks", "ticks.elf"),
    _run("multitask", "multitask.elf"),
    _run("ring3", "ring3.elf"),
    _run("segments", "segments.elf"),
    _run("string_io", "string_io.elf", missing={mode: STRING_IO_CHECK for mode in ("direct", "trap", "vt")}),
    _run("holes", "holes.elf"),
    _run("paging", "paging.elf"),
    _run("tlb", "tlb.elf"),
    _run("address_spaces", "address_spaces.elf"),
    _run("higher_half", "higher_half.elf"),
    _run("alias_smc", "alias_smc.elf"),
    _run("paging_timer", "paging_timer.elf"),
    _run("tasks", "tasks.elf"),
    _run("tasks16", "tasks16.elf", missing={"direct": TSS16_ENGINE, "vt": TSS16_ENGINE}),
    _run("plain", "plain.elf", qemu=False),
    _run("flat", "flat.bin", qemu=False),
    _run("hello_s", "hello.s", qemu=False),
]


# --------------------------------------------------------------------------- building

def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"build_samples: '{name}' not found on PATH")
    return path


def assemble(src: Path, obj: Path) -> None:
    """gcc -m32 -c: C preprocessor (for #include/#define) + GNU as --32."""
    # Run from src/ with a relative source path: the assembler records the file name in
    # the symbol table, and an absolute path would make the image depend on the checkout.
    subprocess.run(
        [_tool("gcc"), "-m32", "-c", "-nostdinc", "-I", "include",
         "-o", str(obj), str(src.relative_to(SRC_DIR))],
        check=True, cwd=SRC_DIR)


def link(objs: list[Path], out_elf: Path, options=(), script: Path = LINKER_SCRIPT) -> None:
    subprocess.run(
        [_tool("ld"), "-m", "elf_i386", "-n", "--build-id=none", *options, "-T", str(script),
         "-o", str(out_elf), *map(str, objs)],
        check=True, cwd=REPO_ROOT)


def build_image(name: str, out_dir: Path, work_dir: Path) -> Path:
    sources, output, kind = IMAGES[name]
    out = out_dir / output
    if kind == "asm":
        shutil.copyfile(SRC_DIR / sources[0], out)
        check_keystone(out)
        return out
    objs = []
    for src in sources:
        obj = work_dir / f"{name}-{Path(src).stem}.o"
        assemble(SRC_DIR / src, obj)
        objs.append(obj)
    options = LINK_OPTIONS.get(name, ())
    script = LINKER_SCRIPTS.get(name, LINKER_SCRIPT)
    if kind == "flat":
        elf = work_dir / f"{name}.elf"
        link(objs, elf, options, script)
        subprocess.run([_tool("objcopy"), "-O", "binary", str(elf), str(out)],
                       check=True, cwd=REPO_ROOT)
    else:
        link(objs, out, options, script)
    return out


def check_keystone(path: Path) -> None:
    """Make sure the .s sample assembles with Keystone the way the monitor will do it."""
    try:
        import keystone  # noqa: F401
    except ImportError:
        print(f"build_samples: keystone not installed, {path.name} not checked", file=sys.stderr)
        return
    from vmm.loaders.assembly import shared_assembler     # not a bare Ks: its radix may be hex
    encoding, count = shared_assembler().asm(path.read_text(), LOAD_ADDRESS)
    if not encoding:
        raise SystemExit(f"build_samples: Keystone produced no code for {path}")


def assemble_keystone(path: Path) -> bytes:
    from vmm.loaders.assembly import shared_assembler
    encoding, _ = shared_assembler().asm(path.read_text(), LOAD_ADDRESS)
    return bytes(encoding)


def build_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build_samples-") as tmp:
        return [build_image(name, out_dir, Path(tmp)) for name in IMAGES]


def write_manifest() -> None:
    MANIFEST.write_text(json.dumps(RUNS, indent=2) + "\n")


# --------------------------------------------------------------------------- running under QEMU

def qemu_command(image: str, append: str | None = None, initrd=()) -> list[str]:
    """The one QEMU command line used for every reference run (paths relative to the repo root)."""
    cmd = [QEMU, "-machine", "pc", "-m", "32", "-nodefaults", "-display", "none",
           "-no-reboot", "-serial", "stdio",
           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
           "-kernel", image]
    if append is not None:
        cmd += ["-append", append]
    if initrd:
        cmd += ["-initrd", ",".join(initrd)]
    return cmd


def run_qemu(image: str, append: str | None = None, initrd=(), stdin: str | bytes | None = None,
             timeout: float = QEMU_TIMEOUT) -> subprocess.CompletedProcess:
    """Run one guest under QEMU from the repo root; stdout captured as exact bytes.

    stdin is fed through a pipe (None: an empty pipe, i.e. immediate EOF)."""
    if isinstance(stdin, str):
        stdin = stdin.encode()
    return subprocess.run(qemu_command(image, append, initrd), input=stdin or b"",
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=timeout, cwd=REPO_ROOT)


def qemu_status(exit_value: int | None) -> int | None:
    """Exit status QEMU reports for a value v written to isa-debug-exit."""
    return None if exit_value is None else ((exit_value << 1) | 1) & 0xFF


def load_manifest() -> list[dict]:
    return json.loads(MANIFEST.read_text())


# --------------------------------------------------------------------------- multiboot wrapper
# The monitor-only formats (plain ELF, flat binary, Keystone source) cannot be booted by QEMU
# directly.  To check their expected output against the reference anyway, wrap their loadable
# bytes in a minimal ELF32 whose file carries a Multiboot header right after the program
# headers (inside the first 8 KiB, outside any segment): QEMU then loads the very same bytes
# at the very same addresses and jumps to the same entry point.

def elf_segments(data: bytes) -> tuple[int, list[tuple[int, bytes, int]]]:
    """(entry, [(paddr, file bytes, memsz)]) of an ELF32 little-endian executable."""
    assert data[:4] == b"\x7fELF" and data[4] == 1 and data[5] == 1, "not an ELF32 LE file"
    entry, phoff = struct.unpack_from("<II", data, 24)
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    segs = []
    for i in range(phnum):
        p_type, p_offset, _vaddr, p_paddr, p_filesz, p_memsz, _flags, _align = \
            struct.unpack_from("<8I", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            segs.append((p_paddr, data[p_offset:p_offset + p_filesz], p_memsz))
    return entry, segs


def wrap_multiboot(entry: int, segments: list[tuple[int, bytes, int]]) -> bytes:
    """Build a Multiboot ELF32 loading `segments` (paddr, bytes, memsz) with entry `entry`."""
    ehsize, phentsize = 52, 32
    phnum = len(segments)
    mb_flags = 0x00000003
    mb_header = struct.pack("<III", 0x1BADB002, mb_flags, (-(0x1BADB002 + mb_flags)) & 0xFFFFFFFF)
    offset = ehsize + phnum * phentsize + len(mb_header)
    phdrs, body = b"", b""
    for paddr, blob, memsz in segments:
        offset = (offset + 15) & ~15
        pad = offset - (ehsize + phnum * phentsize + len(mb_header) + len(body))
        body += b"\0" * pad
        phdrs += struct.pack("<8I", 1, offset, paddr, paddr, len(blob), max(memsz, len(blob)), 7, 16)
        body += blob
        offset += len(blob)
    ident = b"\x7fELF" + bytes([1, 1, 1]) + b"\0" * 9
    ehdr = ident + struct.pack("<HHIIIIIHHHHHH", 2, 3, 1, entry, ehsize, 0, 0,
                               ehsize, phentsize, phnum, 0, 0, 0)
    return ehdr + phdrs + mb_header + body


def multiboot_wrapped_image(image: Path) -> bytes:
    """A QEMU-bootable Multiboot ELF that runs the monitor-only sample `image`."""
    if image.suffix == ".elf":
        entry, segs = elf_segments(image.read_bytes())
        return wrap_multiboot(entry, segs)
    if image.suffix == ".bin":
        blob = image.read_bytes()
        return wrap_multiboot(LOAD_ADDRESS, [(LOAD_ADDRESS, blob, len(blob))])
    if image.suffix == ".s":
        blob = assemble_keystone(image)
        return wrap_multiboot(LOAD_ADDRESS, [(LOAD_ADDRESS, blob, len(blob))])
    raise ValueError(f"don't know how to wrap {image}")


def run_entry_under_qemu(entry: dict, tmp_dir: Path | None = None) -> subprocess.CompletedProcess:
    """Run one manifest entry under QEMU (monitor-only formats through the Multiboot wrapper)."""
    if entry["qemu"]:
        return run_qemu(entry["image"], entry["append"], entry["initrd"], entry["stdin"])
    assert tmp_dir is not None
    wrapped = tmp_dir / (Path(entry["image"]).name + ".mb.elf")
    wrapped.write_bytes(multiboot_wrapped_image(REPO_ROOT / entry["image"]))
    return run_qemu(str(wrapped), entry["append"], entry["initrd"], entry["stdin"])


# --------------------------------------------------------------------------- main

def record_entry(entry: dict, tmp_dir: Path) -> bool:
    """Run one manifest entry under QEMU and write its expected output, unless QEMU's exit status is
    not the one the entry's isa-debug-exit value gives (a guest that crashed or hung under QEMU
    must not become the reference): then nothing is written. Returns whether it was written."""
    proc = run_entry_under_qemu(entry, tmp_dir)
    want = qemu_status(entry["exit"])
    refused = want is not None and proc.returncode != want
    note = f"  (expected status {want}: not recorded)" if refused else ""
    if proc.stderr:
        note += f"  stderr: {proc.stderr.decode(errors='replace').strip()!r}"
    if not refused:
        out = REPO_ROOT / entry["expected"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(proc.stdout)
    print(f"{entry['name']:16s} status={proc.returncode:3d} "
          f"{len(proc.stdout):5d} bytes -> {entry['expected']}{note}")
    return not refused


def record_expected() -> int:
    if shutil.which(QEMU) is None:
        print(f"build_samples: {QEMU} not found; refusing to regenerate expected outputs",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="build_samples-qemu-") as tmp:
        recorded = [record_entry(entry, Path(tmp)) for entry in load_manifest()]
    return 0 if all(recorded) else 1


def check_reproducible() -> int:
    with tempfile.TemporaryDirectory(prefix="build_samples-check-") as tmp:
        outs = build_all(Path(tmp))
        bad = [p.name for p in outs
               if not filecmp.cmp(p, SAMPLES_DIR / p.name, shallow=False)]
    if bad:
        print("build_samples: rebuilt images differ from the tree: " + ", ".join(bad))
        return 1
    print("build_samples: all images reproduce byte for byte")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--expected", action="store_true",
                    help="also regenerate sample_binaries/expected/*.out by running QEMU")
    ap.add_argument("--check", action="store_true",
                    help="only check that a rebuild reproduces the committed images")
    args = ap.parse_args(argv)
    if args.check:
        return check_reproducible()
    for path in build_all(SAMPLES_DIR):
        print(f"built {path.relative_to(REPO_ROOT)} ({path.stat().st_size} bytes)")
    write_manifest()
    print(f"wrote {MANIFEST.relative_to(REPO_ROOT)}")
    if args.expected:
        return record_expected()
    return 0


if __name__ == "__main__":
    sys.exit(main())
