"""Run one guest program under two execution modes and compare everything the guest can leave
behind: how the run ended, the value written to isa-debug-exit, the console output, every
register the monitor reports (GPRs, EIP, all EFLAGS bits, segment selectors, CR0-CR4) and all of
guest RAM (the code, data, stack and system areas and the ring-0 stack of ring-3 programs by
name, anything else by address). Nothing is excluded: ring-3 programs zero their ring-0 stack,
where interrupt frames land, before they end (see the generator).

`shrink` reduces a diverging program to a minimal one by removing items while the reference
mode still reaches the epilogue and the two modes still disagree.
"""

from __future__ import annotations

import gc
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

from tools.fuzzlib.generator import (CODE_BASE, CODE_SIZE, DATA_BASE, DATA_SIZE, EPILOGUE_MAGIC, EXC_COUNT, EXC_ENTRY,
                                     EXC_LOG, GDT, GDT_PTR, IDT, IDT_PTR, LDT, PASSES, R0_STACK_BASE, R0_STACK_SIZE,
                                     RESULT, RESULT_FIELDS, RESUME, SCRATCH, STACK_BASE, STACK_SIZE, SYS_BASE, SYS_SIZE,
                                     TSS, Program)

MAX_INSTRUCTIONS = 20_000_000     # generated programs need well under 1 million
TIMEOUT = 60.0                    # seconds of guest time per run
CHUNK = 0x40000                   # RAM is compared by CRC-32 of 256 KiB chunks, then byte by byte

REGIONS = (   # (name, start, size) of the areas a program uses, for readable memory diffs
    ("code", CODE_BASE, CODE_SIZE),
    ("data", DATA_BASE, DATA_SIZE),
    ("stack", STACK_BASE, STACK_SIZE),
    ("result", RESULT, 0x80),
    ("system", SYS_BASE + 0x80, SYS_SIZE - 0x80),
    ("ring-0 stack", R0_STACK_BASE, R0_STACK_SIZE),     # ring-3 programs; zeroed by their epilogue
)
SYSTEM_AREAS = (("loop counters", SCRATCH, 0x40), ("pass counter", PASSES, 4), ("RESUME", RESUME, 4),
                ("exception count", EXC_COUNT, 8), ("exception log", EXC_LOG, 16 * EXC_ENTRY), ("IDTR image", IDT_PTR, 8), ("GDTR image", GDT_PTR, 8),
                ("GDT", GDT, 0x200), ("LDT", LDT, 0x100), ("TSS", TSS, 0x100), ("IDT", IDT, 0x800))
EFLAGS_BITS = {0: "CF", 1: "1", 2: "PF", 4: "AF", 6: "ZF", 7: "SF", 8: "TF", 9: "IF", 10: "DF",
               11: "OF", 12: "IOPL0", 13: "IOPL1", 14: "NT", 16: "RF", 17: "VM", 18: "AC",
               19: "VIF", 20: "VIP", 21: "ID"}
COMPARED_REGISTERS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
                      "cs", "ss", "ds", "es", "fs", "gs", "cr0", "cr2", "cr3", "cr4")


@dataclass
class Outcome:
    """Everything one run of one program left behind."""
    mode: str
    reason: Optional[str] = None          # StopReason value, None when the monitor raised
    message: str = ""
    guest_value: Optional[int] = None
    console: bytes = b""
    registers: dict = field(default_factory=dict)
    memory: object = None                 # the machine's PhysicalMemory (read, write, ram_size)
    digests: tuple = ()                   # CRC-32 of each CHUNK of guest RAM
    error: Optional[str] = None           # an exception raised by the monitor (not the guest)
    seconds: float = 0.0
    port_io: dict = field(default_factory=dict)     # the report's port I/O counters, by device

    def read(self, address: int, size: int) -> bytes:
        return self.memory.read(address, size) if self.memory is not None else b""

    def refresh_digests(self) -> None:
        """Recompute the RAM digests (after a write to self.memory)."""
        self.digests = ram_digests(self.memory) if self.memory is not None else ()

    @property
    def reached_epilogue(self) -> bool:
        """Ended through the program's own exit with the epilogue's marker stored."""
        if self.reason != "debug_exit" or self.error or self.memory is None:
            return False
        return int.from_bytes(self.read(RESULT + 0x7C, 4), "little") == EPILOGUE_MAGIC


def ram_digests(memory) -> tuple:
    return tuple(zlib.crc32(memory.read(address, min(CHUNK, memory.ram_size - address)))
                 for address in range(0, memory.ram_size, CHUNK))


Runner = Callable[..., Outcome]


_WORKDIR: Optional[tempfile.TemporaryDirectory] = None
_RUNS_SINCE_COLLECT = 0
COLLECT_EVERY = 8     # a finished machine (32 MiB of RAM) sits in reference cycles until collected


def _image_path(workdir: Optional[str]) -> Path:
    """Where the program is written. Always the same path within a process: the image name is
    the Multiboot command line, which the loader copies into guest RAM."""
    global _WORKDIR
    if workdir is None:
        if _WORKDIR is None:
            _WORKDIR = tempfile.TemporaryDirectory(prefix="vmm-fuzz-")
        workdir = _WORKDIR.name
    return Path(workdir) / "program.s"


def run_source(source: str, mode: str, *, workdir: Optional[str] = None,
               max_instructions: int = MAX_INSTRUCTIONS, timeout: float = TIMEOUT, **config) -> Outcome:
    """Assemble and run `source` in a fresh machine in `mode`. A ConfigError (an unknown mode)
    propagates; any other exception from the monitor is recorded in Outcome.error."""
    from vmm.builder import MachineConfig, build_machine
    from vmm.console import BufferConsole
    from vmm.errors import ConfigError

    global _RUNS_SINCE_COLLECT
    _RUNS_SINCE_COLLECT += 1
    if _RUNS_SINCE_COLLECT >= COLLECT_EVERY:
        _RUNS_SINCE_COLLECT = 0
        gc.collect()
    path = _image_path(workdir)
    path.write_text(source)
    started = time.perf_counter()
    outcome = Outcome(mode)
    engine_mode, _, paging = mode.partition("+")     # "bt+nested": bt with --paging nested
    if paging:
        config = {**config, "paging": paging}
    try:
        output = BufferConsole()
        vm, _image = build_machine(MachineConfig(image=str(path), mode=engine_mode, max_instructions=max_instructions,
                                                 timeout=timeout, **config), output)
        result = vm.run()
        console = bytes(output.output)
    except ConfigError:
        raise
    except Exception as error:      # a monitor crash is a result to compare, not a test error
        outcome.error = f"{type(error).__name__}: {error}"
        outcome.message = traceback.format_exc(limit=-3)
        outcome.seconds = time.perf_counter() - started
        return outcome
    outcome.seconds = time.perf_counter() - started
    outcome.reason = result.reason.value
    outcome.message = result.message
    outcome.guest_value = result.guest_value
    outcome.console = console
    outcome.registers = dict(result.registers)
    outcome.memory = vm.memory
    outcome.port_io = vm.bus.counters()
    outcome.refresh_digests()
    return outcome


def _hex(value) -> str:
    return "None" if value is None else f"{value:#x}"


def _flag_names(bits: int) -> str:
    return " ".join(EFLAGS_BITS.get(bit, f"bit{bit}") for bit in range(32) if bits >> bit & 1)


def _region_name(address: int) -> str:
    for name, start, size in REGIONS:
        if start <= address < start + size:
            if name == "result":
                for offset, (field_name, width) in RESULT_FIELDS.items():
                    if RESULT + offset <= address < RESULT + offset + width:
                        return f"result.{field_name}"
            if name == "system":
                for area, base, size in SYSTEM_AREAS:
                    if base <= address < base + size:
                        if area == "exception log":
                            entry, field = divmod(address - base, EXC_ENTRY)
                            return f"exception log[{entry}]+{field:#x}"
                        if area in ("GDT", "LDT", "IDT"):
                            return f"{area}[{(address - base) & ~7:#x}]+{(address - base) & 7}"
                        return f"{area}+{address - base:#x}"
            return f"{name}+{address - start:#x}"
    return "outside the program's areas"


def _ranges(a: Outcome, b: Outcome, page: int = 4096):
    """(start, end) of the runs of differing guest-RAM bytes: chunks whose digests differ are
    read back from both machines and compared page by page, then byte by byte."""
    runs = []
    for number, (da, db) in enumerate(zip(a.digests, b.digests)):
        if da == db:
            continue
        chunk = number * CHUNK
        size = min(CHUNK, a.memory.ram_size - chunk)
        ca, cb = a.read(chunk, size), b.read(chunk, size)
        for offset in range(0, size, page):
            if ca[offset:offset + page] == cb[offset:offset + page]:
                continue
            start = None
            for index in range(offset, min(offset + page, size)):
                if ca[index] != cb[index]:
                    if start is None:
                        start = index
                elif start is not None:
                    runs.append((chunk + start, chunk + index))
                    start = None
            if start is not None:
                runs.append((chunk + start, chunk + min(offset + page, size)))
    merged = []
    for start, end in runs:
        if merged and merged[-1][1] >= start:
            merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def diff_outcomes(a: Outcome, b: Outcome, *, max_memory_lines: int = 12) -> list:
    """Every difference between two outcomes, one readable line each (empty: identical)."""
    na, nb = a.mode, b.mode
    if na == nb:
        na, nb = f"{na}[1]", f"{nb}[2]"
    lines = []
    if a.error != b.error:
        lines.append(f"monitor error: {na}={a.error!r} {nb}={b.error!r}")
        for outcome, name in ((a, na), (b, nb)):
            if outcome.error:
                lines += [f"  {name}: {line}" for line in outcome.message.rstrip().splitlines()[-6:]]
    if a.reason != b.reason:
        lines.append(f"stop reason: {na}={a.reason} ({a.message}) {nb}={b.reason} ({b.message})")
    if a.guest_value != b.guest_value:
        lines.append(f"guest value: {na}={_hex(a.guest_value)} {nb}={_hex(b.guest_value)}")
    if a.console != b.console:
        common = 0
        while common < min(len(a.console), len(b.console)) and a.console[common] == b.console[common]:
            common += 1
        lines.append(f"console output differs from byte {common}: {na}={a.console[common:common + 40]!r} "
                     f"{nb}={b.console[common:common + 40]!r} (lengths {len(a.console)}, {len(b.console)})")
    for name in COMPARED_REGISTERS:
        va, vb = a.registers.get(name), b.registers.get(name)
        if va == vb:
            continue
        line = f"register {name}: {na}={_hex(va)} {nb}={_hex(vb)}"
        if name == "eflags" and va is not None and vb is not None:
            line += f" (bits differing: {_flag_names(va ^ vb)})"
        lines.append(line)
    for name in sorted(set(a.registers) ^ set(b.registers)):
        lines.append(f"register {name} reported by only one mode")
    if len(a.digests) != len(b.digests):
        lines.append(f"RAM size: {na}={len(a.digests) * CHUNK:#x} {nb}={len(b.digests) * CHUNK:#x}")
    elif a.digests != b.digests:
        runs = _ranges(a, b)
        total = sum(end - start for start, end in runs)
        lines.append(f"memory: {total} byte(s) differ in {len(runs)} range(s)")
        for start, end in runs[:max_memory_lines]:
            shown = min(end - start, 16)
            lines.append(f"  {start:#010x}..{end:#010x} ({_region_name(start)}): "
                         f"{na}={a.read(start, shown).hex()} {nb}={b.read(start, shown).hex()}"
                         + (" ..." if shown < end - start else ""))
        if len(runs) > max_memory_lines:
            lines.append(f"  ... {len(runs) - max_memory_lines} more range(s)")
    return lines


@dataclass
class Comparison:
    program: Optional[Program]
    source: str
    outcomes: tuple
    differences: list

    @property
    def ok(self) -> bool:
        return not self.differences

    @property
    def valid(self) -> bool:
        """The reference (first) mode ran the program to its epilogue."""
        return self.outcomes[0].reached_epilogue

    def report(self) -> str:
        a, b = self.outcomes
        head = f"{a.mode} vs {b.mode}"
        if self.program is not None:
            head += f", seed {self.program.seed}, {len(self.program.items)} items"
        unfinished = [f"{o.mode} stopped before the epilogue: {o.error or o.reason} ({o.message}) "
                      f"at eip {o.registers.get('eip', 0):#x}" for o in self.outcomes if not o.reached_epilogue]
        if self.ok:
            return "\n".join([head + ": no difference"] + unfinished)
        return "\n".join([head + f": {len(self.differences)} difference(s)"] + unfinished + self.differences)


def compare_source(source: str, modes=("direct", "bt"), *, runner: Runner = run_source,
                   program: Optional[Program] = None, **run_options) -> Comparison:
    first = runner(source, modes[0], **run_options)
    second = runner(source, modes[1], **run_options)
    return Comparison(program, source, (first, second), diff_outcomes(first, second))


def compare_program(program: Union[Program, str], modes=("direct", "bt"), *, runner: Runner = run_source,
                    **run_options) -> Comparison:
    """Run `program` (a Program or assembly source) under both modes and diff the outcomes."""
    if isinstance(program, Program):
        return compare_source(program.source(), modes, runner=runner, program=program, **run_options)
    return compare_source(program, modes, runner=runner, **run_options)


def shrink(program: Program, modes=("direct", "bt"), *, runner: Runner = run_source,
           max_seconds: float = 300.0, log: Optional[Callable[[str], None]] = None,
           **run_options) -> Program:
    """A smaller program that still diverges: items are removed in chunks (halving down to one
    at a time, delta-debugging style) as long as the reference mode still reaches the epilogue
    and the two modes still differ. Returns `program` itself if it does not diverge."""
    deadline = time.monotonic() + max_seconds
    runs = 0

    def diverges(candidate: Program) -> bool:
        nonlocal runs
        source = candidate.source()
        runs += 1
        reference = runner(source, modes[0], **run_options)
        if not reference.reached_epilogue:
            return False
        other = runner(source, modes[1], **run_options)
        return bool(diff_outcomes(reference, other))

    if not diverges(program):
        return program
    current = program
    chunk = max(1, len(current.removable()) // 2)
    while time.monotonic() < deadline:
        removable = current.removable()
        if not removable:
            break
        chunk = min(chunk, len(removable))
        changed = False
        start = 0
        while start < len(removable) and time.monotonic() < deadline:
            candidate = current.without(removable[start:start + chunk])
            if diverges(candidate):
                current = candidate
                removable = current.removable()
                changed = True
            else:
                start += chunk
        if log:
            log(f"shrink: chunk {chunk}: {len(current.items)} items left ({runs} runs)")
        if chunk == 1 and not changed:
            break
        chunk = max(1, chunk // 2)
    return current
