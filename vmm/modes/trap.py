"""Trap-and-emulate, the classic way and its 386 failure: the guest kernel runs untranslated,
deprivileged to the host's ring 3. Privileged instructions fault (#GP) and the monitor decodes
and emulates them against a virtual CPU; port I/O reaches it through the I/O hooks. The
sensitive but unprivileged instructions (pushf/popf, sgdt, mov r,cs, ...) run natively and show
or ignore the real state, exactly as history says: guests that depend on them go wrong. The
monitor records the ones it sees executed ("virtualization holes").

Deprivileging (ring compression): the kernel and its processes all run at the real ring 3;
which ring the guest is in is virtual (TrapCpu.virtual_cpl). The engine's GDT and LDT are the
shadow views of the guest's for that ring (vmm/shadow_tables.py): in the kernel's, its own code
and data have DPL 3 and the code of other rings is marked not present, so the kernel's iret,
retf or far jmp/call to ring 3 faults (#NP) and is emulated, ring change included; ring 3's is
the guest's table as it is, so a process that loads a kernel selector gets the CPU's #GP. CS
and SS hold the guest's selectors with RPL 3, the real IOPL is 0 (cli/sti fault), and the real
EFLAGS.IF is the guest's virtual IF: the monitor sets it when it emulates cli/sti/iret, and a
native popf silently cannot.

Guest paging (vmm/guest_paging.py, as DirectMode uses it): shadow page tables, again with a
kernel view and a user view of each address space, the engine's CR3 following the guest's ring,
or nested paging, under which the ring views are at MONITOR_LINEAR, above anything a 32-bit
guest address reaches, and every address below 4 GiB is the guest's (GuestPaging.monitor_linear).
Of the monitor, the shadows hold only the ring views' pages, supervisor-only
(the CPU's descriptor loads read them, the kernel at CPL 3 cannot): a guest access its own
tables allow at one of those linear addresses (GuestPaging's MonitorPage verdict) is emulated
(serve_monitor_page) or runs one single-stepped instruction with the guest's translation lent.
While the guest's paging is off the engine pages on the shadow pager's flat tables, which keep
the same pages and make the rest of the monitor's range unassigned memory; the guest's access at
a kept page is served the same way, as unassigned memory (reads 0, stores dropped, as on QEMU).

Holes are seen when the engine translates a block (Engine.on_translation): the block is decoded
(once per distinct code) and, if it holds a hole, gets a block hook bounded to its start, and is
translated again before it first runs. The hook counts the block's holes as it starts; an
exception inside the block, or the end of a run there, takes back those it did not reach, so a
hole's count is how often it ran natively. So the watch costs a Python call per translation and
per run of a block with a hole in it, not per block run (`--no-hole-watch` turns it off, leaving
what trap-and-emulate itself costs). iret and retf are no holes: the views make every one that
changes rings fault, and a same-ring one at ring 3 is the CPU's own.
"""

from __future__ import annotations

from collections import Counter
from typing import Optional

from translator.classify import Category, Procedure, traps_when_deprivileged
from translator.decoder import Decoder, GuestInstruction
from vmm.cpu import GuestCpu, VirtualSystemCpu
from vmm.exits import ExitReason, StopReason, VmExit
from vmm.guest_paging import GuestPaging, MonitorPage
from vmm.modes.direct import DirectMode, StopKind
from vmm.monitor_layout import RING_VIEWS_OFFSET
from vmm.shadow_tables import ShadowTables
from vmm.x86 import GP, IOPL_MASK, NP, SS, TS

REAL_RING = 3
TRAP_VECTORS = (GP, NP, SS, TS)
RETURNS = (Procedure.IRET, Procedure.FAR_RET)     # no holes: a native one is a same-ring return (shadow_tables.py)


def _real(selector: int) -> int:
    """The selector the engine holds for a guest CS or SS: RPL 3 (the ring it really runs at)."""
    return (selector & ~3) | REAL_RING


def is_hole(instruction: GuestInstruction) -> bool:
    """A sensitive instruction that does not trap when the kernel runs at ring 3
    (classify.traps_when_deprivileged decides). iret and retf trap whenever they change rings
    (the ring views mark the other rings' code not present); same-ring ones run as on the CPU."""
    rule = instruction.rule
    return (rule.category in (Category.SENSITIVE, Category.FAR_TRANSFER, Category.PRIVILEGED)
            and rule.procedure not in RETURNS and not traps_when_deprivileged(instruction))


class TrapCpu(VirtualSystemCpu):
    """Guest registers under trap-and-emulate: general registers, EFLAGS (but IOPL), IF and the
    data segment registers are the engine's; the ring, CS/SS's RPL, IOPL, the descriptor-table
    and control registers are virtual."""

    def __init__(self, engine, shadow: ShadowTables, mode: "TrapAndEmulateMode") -> None:
        super().__init__(engine)
        self.shadow = shadow
        self.mode = mode
        self.virtual_cpl = engine.reg("cs") & 3
        self.iopl = engine.reg("eflags") & IOPL_MASK

    def deprivilege(self) -> None:
        """Move the engine to ring 3 over the shadow of the guest's current GDT (once, at entry)."""
        self.shadow.select_ring(self.virtual_cpl)
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
        if raw is None:
            self.engine.set_reg(name, _real(selector) if name in ("cs", "ss") else 0)
            return
        self.shadow.refresh(selector, raw)
        self._engine_load(name, selector, raw)

    def _engine_load(self, name: str, selector: int, raw: bytes) -> None:
        """Load a segment register of the engine's with a descriptor the monitor checked as the
        CPU would: the running view may mark it (another ring's code), or give it a DPL the
        engine at CPL 3 refuses. CS and SS hold the selector with RPL 3."""
        with self.shadow.loadable(selector, raw):
            self.engine.set_reg(name, _real(selector) if name in ("cs", "ss") else selector)

    def change_privilege(self, cs: int, cs_raw: bytes, ss: int, ss_raw: bytes, esp: int) -> None:
        """A ring change is virtual here (the engine stays at ring 3), but the engine's
        descriptor tables and page tables become the new ring's views."""
        eflags = self.reg("eflags")
        ring_changed = (cs & 3) != self.virtual_cpl
        self.virtual_cpl = cs & 3
        self.shadow.select_ring(self.virtual_cpl)
        self.shadow.refresh(cs, cs_raw)
        self.shadow.refresh(ss, ss_raw)
        if ring_changed:
            self.mode.ring_changed()
        self._engine_load("ss", ss, ss_raw)
        self._engine_load("cs", cs, cs_raw)
        self.engine.set_reg("esp", esp)
        self.set_reg("eflags", eflags)

    @property
    def cpl(self) -> int:
        return self.virtual_cpl

    def invalidate_page(self, linear: int) -> None:
        self.mode.invalidate_page(linear)

    def set_table_register(self, name: str, base: int, limit: int) -> None:
        super().set_table_register(name, base, limit)
        if name == "gdtr":
            self.shadow.load_gdt(base, limit)

    def set_table_selector(self, name: str, selector: int, raw: Optional[bytes] = None) -> None:
        if name == "ldtr":
            self.shadow.load_ldt(selector, raw)
        super().set_table_selector(name, selector, raw)
        if name == "tr":
            # The engine's TR matters to one thing only: a native iret with NT set reads the
            # back link at its base before it traps (the shadow's TSS descriptors are absent).
            # With the guest's base that read finds the guest's TSS, mapped as the guest maps
            # it; the engine's selector stays its own (str remains a hole).
            self.engine.set_table_register("tr", *self.tables["tr"], self.engine.table_selector("tr"))


class TrapAndEmulateMode(DirectMode):
    name = "trap"
    options = frozenset({"watch_holes"})
    watch_msrs = False          # rdmsr/wrmsr trap at ring 3: the emulator answers them
    paging_schemes = ("shadow", "nested")

    def __init__(self, watch_holes: bool = True, paging: str = "shadow") -> None:
        self.watch_holes = watch_holes
        self.paging_scheme = paging

    @classmethod
    def from_config(cls, config) -> "TrapAndEmulateMode":
        return cls(watch_holes=config.watch_holes, paging=config.paging or "shadow")

    def attach(self, context) -> GuestCpu:
        super().attach(context)
        shadow = ShadowTables(context.engine, context.memory, 0, 0, kernel_ring=REAL_RING,
                              read=lambda linear, size: self.code_view.read(linear, size),
                              linear_base=GuestPaging.monitor_linear(self.paging_scheme),
                              views_offset=RING_VIEWS_OFFSET)
        self.use_cpu(TrapCpu(context.engine, shadow, self))
        self.paging = GuestPaging.untranslated(context, self.cpu, self.paging_scheme, ring_compression=True,
                                               monitor_pages=shadow.linear_pages())
        self._paging_off(self.paging.unpaged())     # (the guest's paging is off at entry)
        self.decoder = Decoder(self._fetch)
        self.traps: Counter = Counter()                 # emulated instructions, by mnemonic
        # The hole watch: engine blocks are scanned when the engine translates them; those
        # holding a hole get a block hook bounded to their start.
        self._scans: dict[tuple[int, bytes], tuple] = {}    # (start, code) -> its holes
        self._blocks: dict[tuple[int, int], tuple] = {}     # (start, size) -> the scan of its code now
        self._watched_starts: set[int] = set()              # block starts with a block hook
        self._hole_text: dict[int, str] = {}                # hole address -> its instruction
        self._hole_runs: Counter = Counter()                # hole address -> native runs
        # The watched block running now, if the guest has not left it: (start, size, its
        # holes). Its holes are counted when it starts, and the ones it did not reach taken
        # back when an exception or the run's end shows where it was left.
        self._current: Optional[tuple] = None
        self._entered = False
        if self.watch_holes:     # without it trap mode costs what trap-and-emulate itself costs
            context.engine.on_translation(self._translated)
        return self.cpu

    # -- running: the engine at ring 3, traps dispatched from its interrupt hook ---------------
    def execute(self) -> VmExit:
        if not self._entered:
            self._entered = True
            self.cpu.deprivilege()
        vm_exit = super().execute()
        if self._current is not None:             # where the run left the guest
            self._block_left(vm_exit.eip if vm_exit.reason is ExitReason.STOP_REQUEST else self.engine.reg("eip"))
        return vm_exit

    def _run_goes_on(self) -> None:
        if self._current is not None:
            self._block_left(self.engine.reg("eip"))

    def _interrupt_hook(self, vector: int) -> None:
        # An exception (any: a hidden page fault too) ends the engine block it comes from, at
        # EIP; after a refused port access nothing that follows happened (the run's end says).
        if self._current is not None and not self.io_denied:
            self._block_left(self.engine.reg("eip"))
        super()._interrupt_hook(vector)

    def _on_interrupt(self, vector: int) -> None:
        """A #GP (or a #NP/#SS/#TS: the shadow tables hold no system descriptors, so gates and
        TSSs used natively fault, and the ring views mark other rings' code not present) at an
        instruction the monitor emulates is a trap: emulate it
        with the guest's own tables, in the hook, as direct mode delivers exceptions; hlt ends
        the run. Emulating is right even for the guest's own faults there: the emulation raises
        the same exception. Anything else is the guest's own exception."""
        engine = self.engine
        if self.paging_interrupt(vector):
            return
        if vector in TRAP_VECTORS:
            error_code, software = engine.last_exception_info()
            eip = engine.reg("eip")
            instruction = None if software else self._decode(eip)
            if instruction is not None and self.context.emulator.emulates(instruction):
                engine.reset_exception_state()
                self.traps[instruction.insn.mnemonic] += 1
                if instruction.rule.procedure is Procedure.HLT and self.cpu.cpl == 0:
                    engine.set_reg("eip", instruction.end)
                    self.record_stop(StopKind.EXIT, (VmExit(ExitReason.HLT, eip=eip), None))
                    return
                self.context.dispatch(VmExit(ExitReason.CALLOUT, eip=eip, instruction=instruction))
                if self.context.emulator.interrupt_shadow:      # sti, mov ss: no interrupt before
                    self.emulated_shadow = engine.reg("eip")     # the next instruction
                return
            if not software and not error_code & 2 and self.cpu.shadow.hides(error_code):
                # The fault is the monitor's mark, not the guest's: delivered, the guest would
                # see an exception the CPU never raises. (Every instruction that loads a
                # descriptor is emulated; this would be one the emulator does not know.)
                engine.reset_exception_state()
                self.context.request_stop(StopReason.UNSUPPORTED,
                                          f"{instruction if instruction is not None else 'an instruction'} at "
                                          f"{eip:#010x} used descriptor {error_code & 0xFFFC:#06x}, which trap's "
                                          f"ring views hide, and is not emulated")
                return
        super()._on_interrupt(vector)

    # -- guest paging: the ring views in the shadows and the flat tables ---------------------------
    def serve_monitor_page(self, verdict: MonitorPage) -> bool:
        """An access the guest's tables allow at a linear address where the shadow keeps one of
        the monitor's descriptor-table pages: an instruction the emulator knows is emulated on
        the guest's own tables (a segment load must not find the guest's page lent where the
        engine reads descriptors); any other runs with the page lent for one step."""
        eip = self.engine.reg("eip")
        instruction = self._decode(eip)
        if instruction is None or not self.context.emulator.emulates(instruction):
            return False
        self.traps[instruction.insn.mnemonic] += 1
        self.context.dispatch(VmExit(ExitReason.CALLOUT, eip=eip, instruction=instruction))
        return True

    def counters(self) -> dict:
        return {**self._trap_counters(), **self.paging_counters()}

    def _decode(self, eip: int) -> Optional[GuestInstruction]:
        block = self.decoder.decode_block(eip, limit=1)
        return block.instructions[0] if block.instructions else None

    # -- holes ---------------------------------------------------------------------------------
    def _translated(self, address: int, size: int) -> None:
        """The engine translated a block (before it runs): one that holds a hole is watched from
        its start; a hook new to it misses this translation, so the block is translated again
        and the run ends in front of it, none of it run."""
        if self._current is not None:       # the block before this one ran to its end
            self._current = None
        if self._block_scan(address, size) and self._watch_start(address):
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
        """The holes in the engine block at `address`, as its code is now (scanned once per
        distinct code: a block translated again costs a fetch)."""
        code = self._fetch(address, size)
        holes = self._scans.get((address, code))
        if holes is None:
            holes = self._scans[(address, code)] = self._scan(address, size)
        self._blocks[(address, size)] = holes
        return holes

    def _scan(self, address: int, size: int) -> tuple:
        """The addresses of the holes in an engine block."""
        holes = []
        for instruction in self.decoder.instructions_in(address, address + size):
            if is_hole(instruction):
                holes.append(instruction.address)
                self._hole_text.setdefault(instruction.address, str(instruction))
        return tuple(holes)

    def _watched_block_started(self, address: int, size: int) -> None:
        holes = self._blocks.get((address, size))
        if holes is None:         # (every translation is scanned: for safety only)
            holes = self._block_scan(address, size)
        for hole in holes:
            self._hole_runs[hole] += 1
        self._current = (address, size, holes)

    def _block_left(self, at: Optional[int]) -> None:
        """The current watched block was left at `at` (an exception's EIP, where an engine run
        ended). Left inside, the holes from `at` on did not run (a faulting one neither: a trap
        emulates it, a fault runs it again in a block of its own). Within its bytes only this
        block can be running: another block starting inside them would hold the same
        instructions from there on, so its holes, and be watched. (Not followed: a store into
        the running block's own bytes, after which the engine goes on in a new block at the
        next instruction without an exception.)"""
        (start, size, holes), self._current = self._current, None
        if at is not None and start <= at < start + size:
            for hole in holes:
                if hole >= at:
                    self._hole_runs[hole] -= 1

    def holes(self) -> list[dict]:
        """The sensitive instructions that ran without trapping, with how often they ran so."""
        found = [(address, self._hole_text[address], runs) for address, runs in self._hole_runs.items()
                 if runs > 0]                               # those that always trapped are no holes
        return [{"address": f"{address:#010x}", "instruction": text, "count": count}
                for address, text, count in sorted(found)]

    def _trap_counters(self) -> dict:
        # virtualization_holes is null, not an empty list, when nothing watched for them
        return {"traps": dict(sorted(self.traps.items())),
                "virtualization_holes": self.holes() if self.watch_holes else None}
