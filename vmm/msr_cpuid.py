"""rdmsr, wrmsr and cpuid where the engine runs them natively (direct, trap, vt): the answers of the devices built into the CPU (the local APIC's base MSR, CPUID's APIC bit), which the engine's own CPU lacks."""

from __future__ import annotations

from typing import Callable

from translator.x86decode import LEGACY_PREFIXES, instruction_length

_RDMSR, _WRMSR = b"\x0f\x32", b"\x0f\x30"
_MAX_BLOCK_INSTRUCTIONS = 512      # an engine block is shorter (its translator's limit)


def msr_instruction(code: bytes) -> bool:
    """Whether `code` starts with rdmsr or wrmsr (after legacy prefixes)."""
    at = 0
    while at < len(code) - 1 and code[at] in LEGACY_PREFIXES:
        at += 1
    return code[at:at + 2] in (_RDMSR, _WRMSR)


class MsrCpuidWatch:
    """Unicorn has no hook for rdmsr and wrmsr, and answers IA32_APIC_BASE with 0: each block the
    engine translates is searched for them (a byte search first: a block without one costs a
    fetch), and each one found becomes an engine exit (`exits`), where the run stops in front
    of it and the mode hands the instruction to the monitor's emulator as a callout. Exits, not
    code hooks: with a code hook anywhere, Unicorn leaves EIP stale when a stop lands at a
    chained block (docs/architecture.md, Engine facts). The cpuid hook answers a leaf the
    platform changes (leaf 1's APIC bit once the APIC is disabled) from the engine's own
    values, and lets every other cpuid run natively.

    fetch(linear, size) -> the guest's code bytes there (b"" if none); added(address, size): new
    exits in the block just translated there, which lacks them (the mode installs the exits and
    has the block translated again)."""

    def __init__(self, engine, platform, fetch: Callable[[int, int], bytes],
                 added: Callable[[int, int], None], watch_msrs: bool = True) -> None:
        self.engine, self.platform = engine, platform
        self.fetch, self.added = fetch, added
        self.exits: set[int] = set()             # addresses of rdmsr/wrmsr: engine exits
        self._native_leaves: dict[tuple[int, int], tuple] = {}
        self.answered = 0                        # cpuid leaves answered here
        if watch_msrs:
            engine.on_translation(self._scan)

    def _scan(self, address: int, size: int) -> None:
        code = self.fetch(address, size)
        if _RDMSR not in code and _WRMSR not in code:
            return
        found = False
        at = 0
        after_hlt = False
        for _ in range(_MAX_BLOCK_INSTRUCTIONS):
            if at >= len(code):
                break
            length = instruction_length(code[at:at + 16])
            if length is None:
                break
            # An engine exit stops the run as hlt does (the engine's halted flag is set): one
            # right after a hlt could not be told from it, so such an rdmsr runs natively.
            if msr_instruction(code[at:at + 16]) and address + at not in self.exits and not after_hlt:
                self.exits.add(address + at)
                found = True
            after_hlt = code[at:at + length] == b"\xf4"
            at += length
        if found:
            self.added(address, size)

    def still_there(self, address: int) -> bool:
        """Whether the exit at `address` still holds rdmsr or wrmsr; if not (code written over
        it), it goes (the caller updates the engine's exits)."""
        if msr_instruction(self.fetch(address, 16)):
            return True
        self.exits.discard(address)
        return False

    # -- cpuid -------------------------------------------------------------------------------------
    def cpuid(self) -> bool:
        """The cpuid hook: True when the instruction was answered here (the engine skips it)."""
        leaf = self.engine.reg("eax")
        if not self.platform.cpuid_changed(leaf):
            return False
        values = self.platform.cpuid(leaf, self._native(leaf, self.engine.reg("ecx")))
        for name, value in zip(("eax", "ebx", "ecx", "edx"), values):
            self.engine.set_reg(name, value)
        self.answered += 1
        return True

    def _native(self, leaf: int, subleaf: int) -> tuple:
        """The engine's own answer, from a scratch engine of the same CPU model."""
        key = (leaf, subleaf)
        if key not in self._native_leaves:
            from vmm.engine import ScratchCpu
            self._native_leaves[key] = ScratchCpu().cpuid(leaf, subleaf)
        return self._native_leaves[key]
