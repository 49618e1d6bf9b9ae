"""rdmsr, wrmsr, mov drN and cpuid where the engine runs guest code natively (direct, trap, vt): the first three become engine exits that the monitor's emulator serves (the local APIC's base MSR; the debug registers, which the engine must never see), cpuid leaves are answered as the CPU's built-in devices change them."""

from __future__ import annotations

from typing import Callable

from translator.x86decode import LEGACY_PREFIXES, instruction_length

_RDMSR, _WRMSR = b"\x0f\x32", b"\x0f\x30"
_MOV_FROM_DR, _MOV_TO_DR = b"\x0f\x21", b"\x0f\x23"
_INTERCEPTED = (_RDMSR, _WRMSR, _MOV_FROM_DR, _MOV_TO_DR)
_HLT = 0xF4
_MAX_BLOCK_INSTRUCTIONS = 512      # an engine block is shorter (its translator's limit)
_MAX_INSTRUCTION_LENGTH = 15


def intercepted_instruction(code: bytes) -> bool:
    """Whether `code` starts with rdmsr, wrmsr or mov to/from a debug register (after legacy
    prefixes)."""
    at = 0
    while at < len(code) - 1 and code[at] in LEGACY_PREFIXES:
        at += 1
    return code[at:at + 2] in _INTERCEPTED


class MsrCpuidWatch:
    """Unicorn has no hook for rdmsr, wrmsr and mov drN: it answers IA32_APIC_BASE with 0, and
    arms its own hardware breakpoints from DR7, which crash Unicorn 2.1.1 when one hits (SIGSEGV,
    the whole monitor). Each block the engine translates is searched for them (a byte search
    first: a block without one costs a fetch), and each one found becomes an engine exit
    (`exits`), where the run stops in front of it and the mode hands the instruction to the
    monitor's emulator as a callout. Exits, not code hooks: with a code hook anywhere, Unicorn
    leaves EIP stale when a stop lands at a chained block (docs/architecture.md, Engine facts).
    An exit stops the run as hlt does (the engine's halted flag set, EIP past the hlt), so a
    hlt right in front of one (hlt ends an engine block: the exit then starts the next) is an
    exit too, emulated: a run can never stop after a native hlt at an exit's address. The
    cpuid hook answers a leaf the platform changes (leaf 1's APIC bit once the APIC is
    disabled) from the engine's own values, and lets every other cpuid run natively.

    fetch(linear, size) -> the guest's code bytes there (b"" if none); added(address, size): new
    exits in the block just translated there, which lacks them (the mode installs the exits and
    has the block translated again)."""

    def __init__(self, engine, platform, fetch: Callable[[int, int], bytes],
                 added: Callable[[int, int], None], watch_msrs: bool = True) -> None:
        self.engine, self.platform = engine, platform
        self.fetch, self.added = fetch, added
        self.exits: set[int] = set()             # addresses of intercepted instructions: engine exits
        self._native_leaves: dict[tuple[int, int], tuple] = {}
        self.answered = 0                        # cpuid leaves answered here
        if watch_msrs:
            engine.on_translation(self._scan)

    def _scan(self, address: int, size: int) -> None:
        code = self.fetch(address, size)
        if not any(opcode in code for opcode in _INTERCEPTED):
            return
        found = False
        at = 0
        for _ in range(_MAX_BLOCK_INSTRUCTIONS):
            if at >= len(code):
                break
            length = instruction_length(code[at:at + 16])
            if length is None:
                break
            if intercepted_instruction(code[at:at + 16]) and address + at not in self.exits:
                self.exits.add(address + at)
                found = True
                if at == 0:
                    self._hlts_in_front(address)
            at += length
        if found:
            self.added(address, size)

    def _hlts_in_front(self, start: int) -> None:
        """An exit at a block's start may follow a hlt (which ends the block before): that hlt
        becomes an exit too (and one in front of it, ...), and what the engine translated of it
        goes. A byte F4 that only ends a longer instruction gets an exit that never matches an
        instruction start: harmless."""
        address = start
        for _ in range(_MAX_INSTRUCTION_LENGTH):
            if self.fetch((address - 1) & 0xFFFFFFFF, 1) != bytes([_HLT]) or (address - 1) & 0xFFFFFFFF in self.exits:
                break
            address = (address - 1) & 0xFFFFFFFF
            self.exits.add(address)
        if address != start:
            self.engine.invalidate_code(address, start)

    def still_there(self, address: int) -> bool:
        """Whether the exit at `address` still holds an intercepted instruction (or a hlt, in
        front of one); if not (code written over it), it goes (the caller updates the engine's
        exits)."""
        code = self.fetch(address, 16)
        if intercepted_instruction(code) or code[:1] == bytes([_HLT]):
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
