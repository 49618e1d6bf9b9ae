"""Trap-and-emulate, the classic way and its 386 failure: the guest kernel runs untranslated,
deprivileged to the host's ring 3. Privileged instructions fault (#GP) and the monitor decodes
and emulates them against a virtual CPU; port I/O reaches it through the I/O hooks. The
sensitive but unprivileged instructions (pushf/popf, sgdt, mov r,cs, ...) run natively and show
or ignore the real state, exactly as history says: guests that depend on them go wrong. The
monitor records the ones it sees executed ("virtualization holes").

Deprivileging: the engine's GDT is a shadow of the guest's with ring-0 code/data descriptors
moved to ring 3 (vmm/shadow_tables.py), CS and SS hold the guest's selectors with RPL 3, the
real IOPL is 0 (cli/sti fault), and the real EFLAGS.IF is the guest's virtual IF: the monitor
sets it when it emulates cli/sti/iret, and a native popf silently cannot. Guest ring 3 runs at
ring 3 too; which ring the guest is in is virtual (TrapCpu.virtual_cpl).

Guest paging (vmm/modes/untranslated_paging.py): shadow page tables with ring compression (the
kernel and its processes both run at CPL 3, so each guest address space has a kernel view and a
user view, and the engine's CR3 follows the guest's ring), or nested paging.

Holes are seen when the engine translates a block (Engine.on_translation): the block is decoded
(once per distinct code) and, if it holds a hole or ends in iret/retf, gets a block hook bounded
to its start, and is translated again before it first runs. The hook counts the block's holes as
it starts; an exception inside the block, or the end of a run there, takes back those it did not
reach, so a hole's count is how often it ran natively. An iret or retf that ends a block of the
guest kernel and runs to the block's end (it did not trap) returned to ring 3 natively, as a
same-ring return that leaves SS:ESP on the stack. So the watch costs a Python call per
translation and per run of a block with a hole in it, not per block run (`--no-hole-watch` turns
it off, leaving what trap-and-emulate itself costs).
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

from translator.classify import Category, Procedure, traps_when_deprivileged
from translator.decoder import Decoder, GuestInstruction
from vmm.cpu import GuestCpu
from vmm.exits import ExitReason, VmExit
from vmm.guest_view import GuestView
from vmm.modes.direct import DirectMode
from vmm.modes.untranslated_paging import UntranslatedPaging
from vmm.monitor_layout import SHADOW_GDT_OFFSET, SHADOW_LDT_OFFSET
from vmm.shadow_tables import ShadowTables
from vmm.x86 import GP, IOPL_MASK, NP, SS, TS, SegmentDescriptor

REAL_RING = 3
TRAP_VECTORS = (GP, NP, SS, TS)
NATIVE_RETURNS = (Procedure.IRET, Procedure.FAR_RET)     # procedures of the returns the hole watch follows


def _real(selector: int) -> int:
    """The selector the engine holds for a guest CS or SS: RPL 3 (the ring it really runs at)."""
    return (selector & ~3) | REAL_RING


def is_hole(instruction: GuestInstruction) -> bool:
    """A sensitive instruction that does not trap when the kernel runs at ring 3
    (classify.traps_when_deprivileged decides). iret and retf are left to the return watch:
    whether they trap depends on the ring they return to."""
    rule = instruction.rule
    return (rule.category in (Category.SENSITIVE, Category.FAR_TRANSFER, Category.PRIVILEGED)
            and rule.procedure not in NATIVE_RETURNS and not traps_when_deprivileged(instruction))


class TrapCpu(GuestCpu):
    """Guest registers under trap-and-emulate: general registers, EFLAGS (but IOPL), IF and the
    data segment registers are the engine's; the ring, CS/SS's RPL, IOPL, the descriptor-table
    and control registers are virtual."""

    def __init__(self, engine, shadow: ShadowTables, mode: "TrapAndEmulateMode") -> None:
        super().__init__(engine)
        self.shadow = shadow
        self.mode = mode
        self.virtual_cpl = engine.reg("cs") & 3
        self.iopl = engine.reg("eflags") & IOPL_MASK
        self.tables = {name: engine.table_register(name) for name in ("gdtr", "idtr", "ldtr", "tr")}
        self.table_selectors = {"ldtr": 0, "tr": 0}
        self.control = {n: engine.reg(f"cr{n}") for n in (0, 2, 3, 4)}

    def deprivilege(self) -> None:
        """Move the engine to ring 3 over the shadow of the guest's current GDT (once, at entry)."""
        self.shadow.load_gdt(*self.tables["gdtr"])
        self.engine.set_privilege(REAL_RING, _real(self.engine.reg("ss")), _real(self.engine.reg("cs")))
        for name in ("ds", "es", "fs", "gs"):       # reload from the shadow, now at DPL 3
            self.engine.set_reg(name, self.engine.reg(name))
        self.engine.set_reg("eflags", self.engine.reg("eflags") & ~IOPL_MASK)

    def reg(self, name: str) -> int:
        if name in ("cs", "ss"):
            return (self.engine.reg(name) & ~3) | self.virtual_cpl
        if name == "eflags":
            return (self.engine.reg("eflags") & ~IOPL_MASK) | self.iopl
        if name.startswith("cr"):
            return self.control[int(name[2:])]
        return self.engine.reg(name)

    def set_reg(self, name: str, value: int) -> None:
        value &= 0xFFFFFFFF
        if name == "eflags":
            self.iopl = value & IOPL_MASK
            self.engine.set_reg("eflags", value & ~IOPL_MASK)
        elif name.startswith("cr"):
            number = int(name[2:])
            old, self.control[number] = self.control[number], value
            if number != 2:
                self.mode.control_register_written(number, old)
        elif name in ("cs", "ss"):
            raise ValueError("segment registers change through load_segment")
        else:
            self.engine.set_reg(name, value)

    def load_segment(self, name: str, selector: int, raw: Optional[bytes]) -> None:
        if raw is not None:
            self.shadow.refresh(selector, raw)
        if name in ("cs", "ss"):
            self.engine.set_reg(name, _real(selector))
        else:
            self.engine.set_reg(name, selector if raw is not None else 0)

    def change_privilege(self, cs: int, cs_raw: bytes, ss: int, ss_raw: bytes, esp: int) -> None:
        """A ring change is only virtual here: the engine stays at ring 3."""
        self.shadow.refresh(cs, cs_raw)
        self.shadow.refresh(ss, ss_raw)
        eflags = self.reg("eflags")
        ring_changed = (cs & 3) != self.virtual_cpl
        self.virtual_cpl = cs & 3
        if ring_changed:
            self.mode.ring_changed()
        self.engine.set_reg("ss", _real(ss))
        self.engine.set_reg("cs", _real(cs))
        self.engine.set_reg("esp", esp)
        self.set_reg("eflags", eflags)

    @property
    def cpl(self) -> int:
        return self.virtual_cpl

    def invalidate_page(self, linear: int) -> None:
        self.mode.invalidate_page(linear)

    def table_register(self, name: str) -> tuple[int, int]:
        return self.tables[name]

    def set_table_register(self, name: str, base: int, limit: int) -> None:
        self.tables[name] = (base & 0xFFFFFFFF, limit & 0xFFFF)
        if name == "gdtr":
            self.shadow.load_gdt(base, limit)

    def table_selector(self, name: str) -> int:
        return self.table_selectors[name]

    def set_table_selector(self, name: str, selector: int, raw: Optional[bytes] = None) -> None:
        if name == "ldtr":
            self.shadow.load_ldt(selector, raw)
        descriptor = SegmentDescriptor.decode(raw) if raw is not None else None
        self.tables[name] = (descriptor.base, descriptor.limit) if descriptor is not None else (0, 0)
        self.table_selectors[name] = selector & 0xFFFF
        if name == "tr":
            # The engine's TR matters to one thing only: a native iret with NT set reads the
            # back link at its base before it traps (the shadow's TSS descriptors are absent).
            # With the guest's base that read finds the guest's TSS, mapped as the guest maps
            # it; the engine's selector stays its own (str remains a hole).
            self.engine.set_table_register("tr", *self.tables["tr"], self.engine.table_selector("tr"))


class TrapAndEmulateMode(UntranslatedPaging, DirectMode):
    name = "trap"
    options = frozenset({"watch_holes"})
    paging_schemes = ("shadow", "nested")

    def __init__(self, watch_holes: bool = True, paging: str = "shadow") -> None:
        self.watch_holes = watch_holes
        self.paging_scheme = paging

    @classmethod
    def from_config(cls, config) -> "TrapAndEmulateMode":
        return cls(watch_holes=config.watch_holes, paging=config.paging or "shadow")

    def attach(self, vm) -> GuestCpu:
        super().attach(vm)
        shadow = ShadowTables(vm.engine, vm.memory, SHADOW_GDT_OFFSET, SHADOW_LDT_OFFSET, kernel_ring=REAL_RING,
                              read=lambda linear, size: self._quiet_view.read(linear, size))
        self.cpu = TrapCpu(vm.engine, shadow, self)
        self._quiet_view = GuestView(self.cpu, vm.memory, cpu_access=False)
        self.attach_paging(vm, self.paging_scheme, ring_compression=True)
        self.decoder = Decoder(self._fetch)
        self.traps: Counter = Counter()                 # emulated instructions, by mnemonic
        # The hole watch: engine blocks are scanned when the engine translates them; those
        # holding a hole or ending in iret/retf get a block hook bounded to their start.
        self._scans: dict[tuple[int, bytes], tuple] = {}    # (start, code) -> (holes, final iret/retf)
        self._blocks: dict[tuple[int, int], tuple] = {}     # (start, size) -> the scan of its code now
        self._watched_starts: set[int] = set()              # block starts with a block hook
        self._hole_text: dict[int, str] = {}                # hole address -> its instruction
        self._hole_runs: Counter = Counter()                # hole address -> native runs
        self._native_returns: Counter = Counter()           # (address, text) of an iret/retf -> runs
        # The watched block running now, if the guest has not left it: (start, size, its scan,
        # the ring it started in). Its holes are counted when it starts, and the ones it did
        # not reach taken back when an exception or the run's end shows where it was left.
        self._current: Optional[tuple] = None
        self._entered = False
        if self.watch_holes:     # without it trap mode costs what trap-and-emulate itself costs
            vm.engine.on_translation(self._translated)
        return self.cpu

    # -- running: the engine at ring 3, traps dispatched from its interrupt hook ---------------
    def execute(self, vm) -> VmExit:
        if not self._entered:
            self._entered = True
            self.cpu.deprivilege()
        vm_exit = super().execute(vm)
        if self._current is not None:             # where the run left the guest
            self._block_left(vm_exit.eip if vm_exit.reason is ExitReason.STOP_REQUEST else self.engine.reg("eip"))
        return vm_exit

    def _run_goes_on(self) -> None:
        if self._current is not None:
            self._block_left(self.engine.reg("eip"))

    def _interrupt_hook(self, vm, vector: int) -> None:
        # An exception (any: a hidden page fault too) ends the engine block it comes from, at
        # EIP; after a refused port access nothing that follows happened (the run's end says).
        if self._current is not None and self._denied_io is None:
            self._block_left(self.engine.reg("eip"))
        super()._interrupt_hook(vm, vector)

    def _on_interrupt(self, vm, vector: int) -> None:
        """A #GP (or a #NP/#SS/#TS: the shadow tables hold no system descriptors, so gates and
        TSSs used natively fault) at an instruction the monitor emulates is a trap: emulate it
        with the guest's own tables, in the hook, as direct mode delivers exceptions; hlt ends
        the run. Emulating is right even for the guest's own faults there: the emulation raises
        the same exception. Anything else is the guest's own exception."""
        engine = self.engine
        if self.paging_interrupt(vm, vector):
            return
        if vector in TRAP_VECTORS:
            _error_code, software = engine.last_exception_info()
            eip = engine.reg("eip")
            instruction = None if software else self._decode(eip)
            if instruction is not None and vm.emulator.emulates(instruction):
                engine.reset_exception_state()
                self.traps[instruction.insn.mnemonic] += 1
                if instruction.rule.procedure is Procedure.HLT and self.cpu.cpl == 0:
                    engine.set_reg("eip", instruction.end)
                    self._pending_exit = VmExit(ExitReason.HLT, eip=eip)
                    engine.stop()
                    return
                vm.dispatch(VmExit(ExitReason.CALLOUT, eip=eip, instruction=instruction))
                return
        super()._on_interrupt(vm, vector)

    def counters(self) -> dict:
        return {**self._trap_counters(), **self.paging_counters()}

    def _decode(self, eip: int) -> Optional[GuestInstruction]:
        block = self.decoder.decode_block(eip, limit=1)
        return block.instructions[0] if block.instructions else None

    # -- holes ---------------------------------------------------------------------------------
    def _translated(self, address: int, size: int) -> None:
        """The engine translated a block (before it runs): one that holds a hole or ends in
        iret/retf is watched from its start; a hook new to it misses this translation, so the
        block is translated again and the run ends in front of it, none of it run."""
        if self._current is not None:       # the block before this one ran to its end
            self._block_left(None)
        holes, final_return = self._block_scan(address, size)
        if (holes or final_return is not None) and self._watch_start(address):
            self.engine.invalidate_code(address, address + size)
            self.rerun_block(address)

    def _watch_start(self, address: int) -> bool:
        """A block hook at `address`; False if there is one already."""
        if address in self._watched_starts:
            return False
        self._watched_starts.add(address)
        self.engine.on_block_at(address, self._watched_block_started)
        return True

    def _block_scan(self, address: int, size: int) -> tuple:
        """The holes in the engine block at `address` and the iret/retf ending it, as its code
        is now (scanned once per distinct code: a block translated again costs a fetch)."""
        code = self._fetch(address, size)
        scan = self._scans.get((address, code))
        if scan is None:
            scan = self._scans[(address, code)] = self._scan(address, size)
        self._blocks[(address, size)] = scan
        return scan

    def _scan(self, address: int, size: int) -> tuple:
        """(addresses of the holes in an engine block, (address, text) of an iret/retf ending it)."""
        holes, last = [], None
        for last in self.decoder.instructions_in(address, address + size):
            if is_hole(last):
                holes.append(last.address)
                self._hole_text.setdefault(last.address, str(last))
        final_return = None
        if last is not None and last.rule.procedure in NATIVE_RETURNS:
            final_return = (last.address, str(last))
        return tuple(holes), final_return

    def _watched_block_started(self, address: int, size: int) -> None:
        scan = self._blocks.get((address, size))
        if scan is None:         # (every translation is scanned: for safety only)
            scan = self._block_scan(address, size)
        if self._current is not None:
            self._block_left(None)
        for hole in scan[0]:
            self._hole_runs[hole] += 1
        self._current = (address, size, scan, self.cpu.virtual_cpl)

    def _block_left(self, at: Optional[int]) -> None:
        """The current watched block was left at `at` (an exception's EIP, where an engine run
        ended), None at its end (the next block was translated or began). Left inside, the
        holes from `at` on did not run (a faulting one neither: a trap emulates it, a fault
        runs it again in a block of its own). Run to its end, a final iret/retf that began in
        the guest kernel returned to ring 3 natively, as a same-ring return that leaves SS:ESP
        on the stack. Within its bytes only this block can be running: another block starting
        inside them would hold the same instructions from there on, so its holes, and be
        watched. (Not followed: a store into the running block's own bytes, after which the
        engine goes on in a new block at the next instruction without an exception.)"""
        (start, size, (holes, final_return), ring), self._current = self._current, None
        if at is not None and start <= at < start + size:
            for hole in holes:
                if hole >= at:
                    self._hole_runs[hole] -= 1
        elif final_return is not None and ring == 0:
            self._native_returns[final_return] += 1

    def holes(self) -> list[dict]:
        """The sensitive instructions that ran without trapping, with how often they ran so (for
        iret/retf: how often they returned to ring 3 natively)."""
        found = [(address, self._hole_text[address], runs) for address, runs in self._hole_runs.items()
                 if runs > 0]                               # those that always trapped are no holes
        found += [(address, text, count) for (address, text), count in self._native_returns.items()]
        return [{"address": f"{address:#010x}", "instruction": text, "count": count}
                for address, text, count in sorted(found)]

    def _trap_counters(self) -> dict:
        # virtualization_holes is null, not an empty list, when nothing watched for them
        return {"traps": dict(sorted(self.traps.items())),
                "virtualization_holes": self.holes() if self.watch_holes else None}
