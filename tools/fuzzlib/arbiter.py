"""QEMU as the third opinion on a diverging fuzz program. The fuzzer's reference (direct
execution on Unicorn) has defects of its own, so when two modes disagree the program runs once
more, under both and under QEMU, with its exit value replaced by a 7-bit hash of the guest RAM
where the two modes differed (the epilogue has dumped the registers there too): QEMU's exit
status carries those 7 bits and says which mode it sides with. Only the differing bytes are
hashed: elsewhere QEMU may differ from both for reasons of its own (CPUID, its CPU model).
Programs that program the PIT cannot be arbitrated (QEMU's timer runs on the host clock, the
monitor's on retired instructions)."""

from __future__ import annotations

import re
from typing import Optional

from tools.fuzzlib.compare import _ranges, run_source
from tools.fuzzlib.qemu import available as qemu_available
from tools.fuzzlib.qemu import boot_under_qemu

EXIT_LINES = re.compile(r"^[ \t]*mov dx, 0xf4[ \t]*\n[ \t]*out dx, eax[ \t]*$", re.MULTILINE)
# QEMU's Multiboot entry leaves ECX, EDX and EFLAGS as its option ROM had them; the monitor
# enters with them clear. A program that reads them would differ for that alone.
ENTRY_STATE = ("xor ecx, ecx\nxor edx, edx\nxor esi, esi\nxor edi, edi\nxor ebp, ebp\n"
               "mov esp, 0x9000\npush 2\npopfd\nxor esp, esp\n")


def with_entry_state(source: str) -> str:
    """The program with the registers the two entries leave differently cleared first."""
    lines = source.splitlines(keepends=True)
    first = next(i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#"))
    return "".join(lines[:first]) + ENTRY_STATE + "".join(lines[first:])


def hashed(source: str, ranges) -> Optional[str]:
    """The program with its exit value replaced by a hash of the bytes in `ranges` ((start, end)
    pairs; None: no exit found)."""
    exits = list(EXIT_LINES.finditer(source))
    if not exits:
        return None
    at = exits[-1].start()
    lines = ["xor eax, eax"]
    for start, end in ranges:
        for address in range(start, end):
            lines += ["rol eax, 7", f"xor al, byte ptr [{address:#x}]"]
    lines += ["imul eax, eax, 0x9e3779b1", "shr eax, 25"]
    return source[:at] + "\n".join(lines) + "\n" + source[at:]


def _qemu_value(source: str) -> Optional[int]:
    """The 7 bits of the guest's exit value under QEMU (its status is (value << 1) | 1)."""
    proc = boot_under_qemu(source, timeout=120)
    return (proc.returncode >> 1) & 0x7F if proc.returncode & 1 else None


def arbitrate(source: str, modes: tuple, max_ranges: int = 8, max_bytes: int = 64) -> Optional[str]:
    """One line saying which mode QEMU sides with on each differing range of bytes, or why it
    cannot say; None without QEMU. A range at a time (7 bits each): QEMU may differ from both
    modes in some bytes for reasons of its own (flags the manual leaves undefined)."""
    if not qemu_available():
        return None
    source = with_entry_state(source)
    first = [run_source(source, mode) for mode in modes]
    ranges = [(start, min(end, start + max_bytes)) for start, end in _ranges(*first)][:max_ranges]
    if not ranges or hashed(source, ranges[:1]) is None:
        return "QEMU cannot arbitrate: no differing memory, or no exit to hash"
    sides = []
    for start, end in ranges:
        variant = hashed(source, [(start, end)])
        outcomes = {mode: run_source(variant, mode) for mode in modes}
        if any(outcome.port_io.get("pit", {}).get("writes") for outcome in outcomes.values()):
            return "QEMU cannot arbitrate: the program programs the PIT (QEMU's clock is the host's)"
        values = {mode: outcome.guest_value & 0x7F for mode, outcome in outcomes.items()
                  if outcome.guest_value is not None}
        if len(values) < len(modes) or len(set(values.values())) < 2:
            continue                     # no exit, or the 7 bits cannot tell the modes apart
        qemu = _qemu_value(variant)
        agree = [mode for mode, value in values.items() if value == qemu]
        sides.append((f"{start:#x}..{end:#x}", agree[0] if agree else "neither"))
    if not sides:
        return "QEMU cannot arbitrate: the modes' hashes agree in 7 bits"
    counts = {side: sum(1 for _range, s in sides if s == side) for side in (*modes, "neither")}
    summary = ", ".join(f"{side} on {count}" for side, count in counts.items() if count)
    detail = "; ".join(f"{where}: {side}" for where, side in sides)
    if counts[modes[1]] and not counts[modes[0]]:
        return f"QEMU sides with {modes[1]} ({summary} of {len(sides)} ranges: {detail})"
    return f"QEMU's verdict: {summary} of {len(sides)} ranges ({detail})"
