"""Direct execution: the guest's own code runs untranslated on the engine, at its own ring (the
bare machine). The reference every other mode is compared with, and their speed limit. Also the
base of the other untranslated modes (trap, vt): their guest paging (vmm/guest_paging.py, with
the real TF lent for a watched store or for trap's access at a monitor page's address) and the
one stop a run's hooks record."""

from __future__ import annotations

import enum
from typing import Optional

from capstone import CS_GRP_CALL, CS_GRP_INT, CS_GRP_IRET, CS_GRP_JUMP, CS_GRP_RET

from vmm.cpu import GuestCpu
from vmm.engine import RDTSC_EXIT_VECTOR, StopCause
from vmm.errors import MonitorBug
from vmm.exits import ExitReason, VmExit
from translator.x86decode import LEGACY_PREFIXES, decode, instruction_length
from vmm.guest_paging import GuestPaging, GuestPF, Hidden, Lend, MonitorPage, NoMemory, PagingOff, Traced
from vmm.guest_view import GuestView
from vmm.memory import UnbackedAccess
from vmm.modes import ExecutionMode, PendingStop
from vmm.modes.breakpoints import EngineBreakpoints, spend_resume_flag
from translator.decoder import Decoder
from vmm.msr_cpuid import MsrCpuidWatch
from vmm.x86 import (BP, CR0_PG, CR0_WP, CR4_PCE, CR4_PSE, CR4_TSD, DB, GP, MSR_TSC_AUX, NM, OF_VEC, PAGE_SIZE,
                     PF_VEC, TF, UD, nm_is_ud)
_RDTSCP = b"\x0f\x01\xf9"

HLT_OPCODE = 0xF4
# The instructions that can set IF, by opcode (after prefixes), with the number of instructions
# that still run before an interrupt can be taken once they did: sti's shadow; popf, iret none.
IRET_OPCODE = 0xCF
_IF_SETTERS = {0xFB: 1, 0x9D: 0, IRET_OPCODE: 0}
ENGINE_BLOCK_MAX_INSTRUCTIONS = 512     # QEMU's TCG_MAX_INSNS: how far a block start can be
_WATCH_COUNT = 10 ** 18     # the count of a run that needs one (a data breakpoint) and has no budget
_ONE_BYTE_INTS = ((BP, 0xCC), (OF_VEC, 0xCE), (DB, 0xF1))   # int3, into, int1


# Instructions that read or write memory without a memory operand (the stack, strings, tables).
_IMPLICIT_MEMORY = frozenset(("push", "pop", "pushal", "popal", "pushfd", "popfd", "pushf", "popf", "call",
                              "ret", "retf", "iretd", "iret", "enter", "leave", "int", "int3", "into",
                              "movsb", "movsw", "movsd", "stosb", "stosw", "stosd", "lodsb", "lodsw", "lodsd",
                              "cmpsb", "cmpsw", "cmpsd", "scasb", "scasw", "scasd", "insb", "insw", "insd",
                              "outsb", "outsw", "outsd", "xlatb"))


def _touches_memory(insn) -> bool:
    from capstone.x86_const import X86_OP_MEM
    if insn.mnemonic in _IMPLICIT_MEMORY:
        return True
    return insn.mnemonic != "lea" and any(op.type == X86_OP_MEM for op in insn.operands)


def _skip_prefixes(code: bytes) -> int:
    """Index of the opcode byte of the instruction `code` starts with."""
    at = 0
    while at < len(code) - 1 and code[at] in LEGACY_PREFIXES:
        at += 1
    return at


_IN_OPCODES, _OUT_OPCODES = (0xE4, 0xE5, 0xEC, 0xED, 0x6C, 0x6D), (0xE6, 0xE7, 0xEE, 0xEF, 0x6E, 0x6F)


def _is_io_to(code: bytes, port: int, size: int, dx: int, out: bool = True) -> bool:
    """Whether `code` starts with an OUT (out=True) or IN of `size` bytes at `port`."""
    at = _skip_prefixes(code)
    operand16 = 0x66 in code[:at]
    opcode = code[at]
    if opcode not in (_OUT_OPCODES if out else _IN_OPCODES):
        return False
    width = 1 if not opcode & 1 else (2 if operand16 else 4)
    if opcode in (0xE4, 0xE5, 0xE6, 0xE7):
        return len(code) > at + 1 and code[at + 1] == port and width == size
    return dx == port and width == size


def _is_rep_string_io(code: bytes) -> bool:
    """Whether `code` starts with rep ins/outs (each element runs in an engine block of its own)."""
    at = _skip_prefixes(code)
    return code[at] in (0x6C, 0x6D, 0x6E, 0x6F) and any(prefix in code[:at] for prefix in (0xF2, 0xF3))


class StopKind(enum.Enum):
    """Why a run of the engine ended, as a hook recorded it (PendingStop.data in brackets)."""
    DENIED_IO = "denied_io"       # ring-3 I/O refused ((saved state, block start, dx, port, size, out))
    EXIT = "exit"                 # a hook decided the exit ((VmExit, the guest's EIP or None: as it stands))
    RERUN_BLOCK = "rerun_block"   # a block must be translated again before it runs (its address)
    WINDOW = "window"             # the guest set IF while an interrupt waits
    END_RUN = "end_run"           # a device asked the run to end (inside an I/O hook: (block start,
                                  # dx, port, size, out), to find where it really ends; else None)
    BREAKPOINT = "breakpoint"     # a debugger breakpoint, in front of its instruction
    WATCHPOINT = "watchpoint"     # the instruction hit a guest data breakpoint: #DB in front of the next


class TrapFlagLoan:
    """The real TF, lent for one guest instruction that runs with a page lent (a store the shadow
    keeps read-only, trap and vt; trap's access to its own frame where the shadow keeps a ring
    view's page): the single-step trap right after it ends the loan. The guest's own TF is kept
    as the guest set it."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.active = False
        self.guest_tf = False

    def begin(self) -> None:
        if not self.active:
            self.active = True
            eflags = self.engine.reg("eflags")
            self.guest_tf = bool(eflags & TF)
            self.engine.set_reg("eflags", eflags | TF)

    def end(self) -> None:
        if self.active:
            self.active = False
            if not self.guest_tf:
                self.engine.set_reg("eflags", self.engine.reg("eflags") & ~TF)


class DirectMode(ExecutionMode):
    name = "direct"
    watch_msrs = True           # rdmsr/wrmsr run natively at the guest's CPL 0 (not trap's): watched

    def attach(self, context) -> GuestCpu:
        self.context = context
        engine = context.engine
        engine.keep_code_coherent()     # Unicorn 2.1.1 lets stores into translated code go stale (Engine facts)
        self.memory = context.memory
        self.engine = engine
        context.memory.write_observers.append(self._monitor_wrote)
        # Hooks record why the engine must stop: one PendingStop per run, the first one wins
        # (record_stop), except a refused port access, after which nothing that runs before the
        # stop lands happened as far as the guest is concerned: hooks then do nothing.
        self._stop: Optional[PendingStop] = None
        engine.on_port_io(lambda port, size: 0 if self.io_denied else self._port_in(port, size),
                          lambda port, size, value: None if self.io_denied else self._port_out(port, size, value))
        # Inside an I/O hook the engine's EIP is the start of its block. When exits are traced
        # a block hook follows the blocks, so that each port exit names its own instruction.
        self._io_cursor: Optional[int] = None         # where the next I/O instruction is sought
        self._eip_after_io: Optional[int] = None      # where a run a port hook ended stopped
        if context.tracer.exits:
            engine.on_block(self._block_entered)
        # The interrupt-window watch: code hooks at the instructions that can set IF, while an
        # interrupt waits for it (watch_interrupt_window).
        self._window_armed = False
        self._window_scan_on = False                   # the translation hook that places them
        self._window_setters: dict[int, int] = {}      # address -> opcode of the IF setter there
        self._window_hooks: dict[int, object] = {}     # address -> its code hook
        self._iret_watched = False                     # the watch saw an iret start (NMI blocking)
        self._stepping_out_of_shadow = False           # the waker leaves that run's count alone
        self._io_hook: Optional[tuple] = None           # (port, size, is_out) while an I/O hook runs
        self._fetch_exit: Optional[int] = None          # an engine exit in front of an unfetchable page
        self._stopped_between_blocks = False            # the run ended in front of a block (rerun_block)
        engine.on_interrupt(self._interrupt_hook)
        engine.on_fast_system_call(lambda name: None if self.io_denied else self._fast_system_call(name))
        if context.tracer.exec:
            engine.on_block(lambda address, _size: context.tracer.executed(address))
        self.debugger = context.debugger
        self._breakpoint_hooks: dict[int, object] = {}
        if self.debugger is not None:
            self.debugger.on_breakpoints_changed = self._sync_breakpoints
        self.paging: Optional[GuestPaging] = None     # direct: the engine's MMU walks the guest's tables
        self.loan = TrapFlagLoan(engine)
        self.guest_breakpoints = EngineBreakpoints(self)     # what the guest's DR7 arms
        self.use_cpu(GuestCpu(engine))
        self._ran_early = 0             # instructions run by the last counted run that ended early
        self._retiring = True           # the run going on was budgeted: what it runs is retired
        self.emulated_shadow: Optional[int] = None  # EIP after an sti/mov ss emulated in a hook this run
        # Once the guest uses time the run loop bounds every run: end the unbounded one now.
        context.on_first_use(self._end_run)
        self._counted_run = False       # an engine run with a count is under way (end_run_after_mmio)
        self._done_in_run = 0           # instructions of the counted run's earlier engine runs
        # The local APIC's MSR and CPUID bit, which the engine's CPU lacks.
        self.msr_cpuid = MsrCpuidWatch(engine, context.cpu_devices, self._fetch, self._msr_exits_added,
                                       self.watch_msrs)
        self._decoder = Decoder(self._fetch)
        engine.on_cpuid(self._cpuid_hook)
        # rdtsc reads guest time, as under bt (the engine's would be the host's TSC).
        engine.intercept_rdtsc()
        self.timestamps_read = 0
        return self.cpu

    def _cpuid_hook(self) -> bool:
        """True when cpuid was answered by the monitor (the engine skips it)."""
        return not self.io_denied and self.msr_cpuid.cpuid()

    def use_cpu(self, cpu: GuestCpu) -> None:
        """The guest-visible CPU view (trap and vt bring their own): the guest's code is read
        through its registers (trap: its virtual CR3, not the shadow's)."""
        self.cpu = cpu
        self.guest_breakpoints.use(cpu.debug)
        # a look of the monitor's own: no accessed bits set, CR2 untouched
        self.code_view = GuestView(cpu, self.memory, cpu_access=False)

    def _guest_code(self, linear: int, size: int) -> bytes:
        """Up to `size` bytes of guest code at a LINEAR address (an EIP), as the engine fetches
        them (GuestView.fetch_code); UnbackedAccess if not even the first byte can be."""
        code = self.code_view.fetch_code(linear, size)
        if not code:
            raise UnbackedAccess(linear & 0xFFFFFFFF, size)
        return code

    # -- the one recorded stop -------------------------------------------------------------------
    def record_stop(self, kind: StopKind, data=None) -> None:
        """Note why the engine must stop and stop it. The first reason of a run wins, except a
        refused port access: the state goes back to that instruction, whatever was noted before;
        and a window noted for a run that is still to end after an IF setter gives way to any
        stop but a block's rerun (whose stop lands in front of the block all the same)."""
        current = self._stop
        if current is None or (kind is StopKind.DENIED_IO and current.kind is not StopKind.DENIED_IO) \
                or (current.kind is StopKind.WINDOW and kind is not StopKind.RERUN_BLOCK):
            self._stop = PendingStop(kind, data)
        self.engine.stop()

    def record_exit(self, vm_exit: VmExit, eip: int) -> None:
        """From a code hook: stop in front of the instruction with this exit, EIP at `eip`."""
        self.record_stop(StopKind.EXIT, (vm_exit, eip))

    def end_run_after_instruction(self, watchpoint: bool = False) -> None:
        """From a hook: the run ends in front of the next instruction. Inside a memory access
        (a guest data breakpoint hit: `watchpoint`) through the count, as the run is counted,
        with #DB there; elsewhere (an interrupt hook's emulation changed what DR7 arms) by a
        stop, which lands there."""
        if watchpoint:
            if self._stop is None:
                self._stop = PendingStop(StopKind.WATCHPOINT)
            self.engine.end_count_after(0)
        else:
            self.record_stop(StopKind.END_RUN)

    @property
    def io_denied(self) -> bool:
        """A refused port access stopped the run: until the stop lands nothing happens."""
        return self._stop is not None and self._stop.kind is StopKind.DENIED_IO

    def _instructions_from(self, address: int):
        """(address, code) of the straight-line instructions from `address` on, as far as an
        engine block can reach, while their code can be fetched and decodes: the decode-forward
        walk of the look-aheads below."""
        for _ in range(ENGINE_BLOCK_MAX_INSTRUCTIONS):
            try:
                code = self._guest_code(address, 16)
            except UnbackedAccess:
                return
            length = instruction_length(code)
            if length is None:
                return
            yield address, code, length
            address += length

    def _find_io(self, start: int, port: int, size: int, dx: int, out: bool) -> Optional[tuple[int, int]]:
        """(address, length) of the first IN (out=False) or OUT of `size` bytes at `port` from
        `start` on in straight-line code (inside a port hook the engine's EIP is the start of its
        block, and the access being serviced is the first such one after it), None if not found."""
        for address, code, length in self._instructions_from(start):
            if _is_io_to(code, port, size, dx, out):
                return address, length
        return None

    def _port_in(self, port: int, size: int) -> int:
        self._io_hook = (port, size, False)
        try:
            return self.context.dispatch(VmExit(ExitReason.PORT_IN, eip=self._io_eip(port, size, False),
                                                port=port, size=size))
        finally:
            self._io_hook = None

    def _port_out(self, port: int, size: int, value: int) -> None:
        self._io_hook = (port, size, True)
        try:
            self.context.dispatch(VmExit(ExitReason.PORT_OUT, eip=self._io_eip(port, size, True),
                                         port=port, size=size, value=value))
        finally:
            self._io_hook = None

    def _block_entered(self, address: int, _size: int) -> None:
        self._io_cursor = address

    def _io_eip(self, port: int, size: int, out: bool) -> int:
        """The address of the I/O instruction whose hook is running, when exits are traced (0
        otherwise): the first one with this port, size and direction after the one found last
        in the same engine block. A block is straight-line code, and each element of a rep
        string I/O instruction runs in an engine block of its own that starts at it."""
        if self._io_cursor is None:
            return 0
        found = self._find_io(self._io_cursor, port, size, self.engine.reg("edx") & 0xFFFF, out)
        if found is None:
            return 0
        address, length = found
        self._io_cursor = address + length
        return address

    def rerun_block(self, address: int) -> None:
        """From a translation hook (Engine.on_translation) that added hooks the block just
        translated at `address` lacks (it is invalidated): end the run in front of it, none of
        it run, and run again from its start, newly translated."""
        self._stopped_between_blocks = True
        self.record_stop(StopKind.RERUN_BLOCK, address)

    def _end_run(self) -> None:
        # Inside an I/O hook the engine's EIP is the start of its block; remember it and the
        # I/O instruction to find where the engine really stops (_resume_point).
        io_hook = self._io_hook
        self.record_stop(StopKind.END_RUN, None if io_hook is None else
                         (self.engine.reg("eip"), self.engine.reg("edx") & 0xFFFF, *io_hook))

    def _resume_point(self, eip: int, check: Optional[tuple]) -> int:
        """Where a run stopped from an I/O hook really ended. Unicorn 2.1.1 honours the stop
        at the next instruction that touches memory in the same engine block, abandoning it
        with EIP left at the block's start (tests/test_engine.py pins this): when EIP is that
        start, it is the first memory-touching instruction after the I/O one, if any. The hook
        saw EIP as the engine last wrote it back, which may be later in the block than its start
        (an instruction with a helper, as lidt, writes it back): EIP before it, with straight-line
        code from there to it, is that block's start too (the first PIC write of a guest, which
        brings time into use, once ran the I/O after it twice: the run began again at the block)."""
        if check is None or (eip != check[0] and not self._straight_line_to(eip, check[0])):
            return eip
        block_start, dx, port, size, out = check
        seen_io = False
        for address, code, _length in self._instructions_from(block_start):
            insn = decode(code, address)
            if insn is None:
                break
            if seen_io and _touches_memory(insn):
                return address
            if not seen_io and _is_io_to(code, port, size, dx, out):
                if address == block_start and _is_rep_string_io(code):
                    # An element of rep ins/outs is an engine block of its own, starting at the
                    # instruction: the stop lands after the element with EIP at it and ECX
                    # counted down, where the rest of the string resumes (as on the CPU).
                    return eip
                seen_io = True
            elif insn.group(CS_GRP_JUMP) or insn.group(CS_GRP_CALL) or insn.group(CS_GRP_RET):
                break
        return eip

    def _straight_line_to(self, start: int, target: int) -> bool:
        """Whether straight-line code from `start` reaches `target` (no jump, call or return
        before it): both are in one engine block."""
        if target <= start:
            return False
        for address, code, _length in self._instructions_from(start):
            if address >= target:
                return address == target
            insn = decode(code, address)
            if insn is None or insn.group(CS_GRP_JUMP) or insn.group(CS_GRP_CALL) or insn.group(CS_GRP_RET):
                return False
        return False

    # -- debugger: a code hook per breakpoint, the engine's count for single steps ---------------
    def _sync_breakpoints(self, _address) -> None:
        wanted = self.debugger.breakpoints
        for address in list(self._breakpoint_hooks):
            if address not in wanted:
                self.engine.remove_hook(self._breakpoint_hooks.pop(address))
                self.engine.invalidate_code(address, address + 1)
        for address in wanted - set(self._breakpoint_hooks):
            self._breakpoint_hooks[address] = self.engine.on_code(address, self._breakpoint)
            self.engine.invalidate_code(address, address + 1)   # hooks added later are not in old code

    def _breakpoint(self, address: int) -> None:
        if self.debugger.resume_over == address:
            self.debugger.resume_over = None      # resuming from this breakpoint: run it once
            return
        self.record_stop(StopKind.BREAKPOINT)     # stops before the instruction executes

    def end_run_soon(self) -> None:
        """(Another thread.) Runs are counted while time is in use: cutting the count stops the
        run in front of its next instruction, which it counts as started (_instructions_ran).
        Not the one-instruction step out of an interrupt shadow (execute): cut, it would never
        run, and the waker, which cuts until the run loop takes its note, would starve it for
        ever. The note waits one instruction; a cut that races the flag costs one more step."""
        if not self._stepping_out_of_shadow:
            self.engine.cut_count()

    def end_run_after_io(self, port: int, size: int) -> None:
        """Stop the engine after this OUT: in a counted run the stop lands right in front of the
        next instruction, otherwise at the next one that touches memory (_resume_point). Only
        when it matters: INTR raised (with IF set the window delivers it; with IF clear the
        window sets the watch for the instruction that sets it), or the PIT written (its next
        event may now come before the run's bound, and a latch must see the time move); an EOI
        with nothing else waiting lets the run go on."""
        context = self.context
        if context.reprograms_timer(port) or (context.intr_raised and self._counted_run):
            # (INTR raised in a run without a count: by the local APIC, touched before any
            # timer; such a stop lands by the engine's block, which this hook cannot always
            # see: the run goes on to its end, as an MMIO access would leave it)
            self._end_run()

    def instructions_in_flight(self) -> Optional[int]:
        """In a counted run (from a hook: the instruction in it is started, not done)."""
        if not self._counted_run:
            return None
        return self._done_in_run + max(0, self.engine.instructions_started() - 1)

    def end_run_after_mmio(self) -> None:
        """In a counted run the engine's count is cut short (Engine.end_count_after): it stops
        where QEMU's translation block would end, at the first control transfer from this
        instruction on (QEMU takes an interrupt the access raised between its blocks), the
        access done once. A run without a count goes on to its next exit (time came into use
        meanwhile, or nothing bounds it)."""
        if self._counted_run and self._stop is None:
            self._stop = PendingStop(StopKind.END_RUN, None)
            self.engine.end_count_after(self._rest_of_block(self.engine.reg("eip")))

    def _rest_of_block(self, eip: int) -> int:
        """How many instructions follow the one at `eip` (EIP is exact in a counted run) up to
        and including the first that ends a QEMU translation block: a jump, call, return,
        interrupt or iret, hlt, and sti or popf (QEMU ends a block after them for the interrupt
        check). A bounded walk: at most an engine block."""
        rest = 0
        for address, code, _length in self._instructions_from(eip):
            if address == eip:
                continue
            insn = decode(code, address)
            if insn is None:
                break
            rest += 1
            if any(insn.group(group) for group in (CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_RET, CS_GRP_INT, CS_GRP_IRET)) \
                    or insn.mnemonic in ("hlt", "sti", "popf", "popfd"):
                break
        return rest

    def watch_interrupt_window(self, blocked: bool) -> None:
        """While an interrupt waits for IF, or NMIs are blocked until the next IRET, the
        instructions that can set IF (sti, popf, iret) are watched: a code hook at each, placed as the engine translates blocks (everything is
        translated again when the watch starts and when it ends), ends the counted run right
        after the instruction, or after the next one behind sti (its shadow). The run loop's
        window then looks at IF. Costs a Python call per such instruction run while an
        interrupt waits, and one per block translated meanwhile; none for the others (a hook on
        every instruction made xv6's boot, IF clear with typed input waiting, run at 40,000
        instructions a second)."""
        if blocked == self._window_armed:
            return
        self._window_armed = blocked
        if blocked and not self._window_scan_on:
            self._window_scan_on = True
            self.engine.on_translation(self._window_scan)
        if not blocked:
            for hook in self._window_hooks.values():
                self.engine.remove_hook(hook)
            self._window_hooks.clear()
            self._window_setters.clear()
        # Hooks apply to newly translated code only. invalidate_code takes linear addresses and
        # resolves the range's start through the guest's page tables: with the guest's paging
        # on (page 0 perhaps unmapped) everything goes instead, at a higher price.
        if self.cpu.reg("cr0") & CR0_PG:
            self.engine.flush_translations()
        else:
            self.engine.invalidate_code(self.memory.ram.base, self.memory.ram.end)

    def _monitor_wrote(self, address: int, size: int) -> None:
        """A store into guest RAM that the engine did not make (a device's DMA, the monitor's
        own): what the engine translated from those bytes goes, whatever linear addresses map
        them (Engine.invalidate_host_code), as bt's cache drops its blocks there."""
        for host, length in self.memory.host_ranges(address, size):
            self.engine.invalidate_host_code(host, length)

    def _window_scan(self, address: int, size: int) -> None:
        """The engine translated a block while the watch is on: a code hook at each IF setter in
        it. A hook new to the block misses this translation: the block is translated again and
        the run ends in front of it, none of it run (rerun_block)."""
        if not self._window_armed or self.io_denied:
            return
        try:
            code = self._guest_code(address, size)
        except UnbackedAccess:
            return
        hooked, at = False, 0
        while at < len(code):
            length = instruction_length(code[at:at + 16])
            if length is None:
                break
            opcode = code[at + _skip_prefixes(code[at:at + 16])]
            if opcode not in _IF_SETTERS:
                self._window_setters.pop(address + at, None)     # code written over a setter
            else:
                self._window_setters[address + at] = opcode
                if address + at not in self._window_hooks:
                    self._window_hooks[address + at] = self.engine.on_code(address + at, self._window_setter)
                    hooked = True
            at += length
        if hooked:
            self.engine.invalidate_code(address, address + size)
            self.rerun_block(address)

    def _window_setter(self, address: int) -> None:
        """Before an instruction that can set IF, while an interrupt waits: the counted run ends
        after it (after one more behind sti), through its count, where the window looks at IF
        (counted runs only: an interrupt waits, so time is in use, and every run is counted)."""
        opcode = self._window_setters.get(address)
        if opcode is None or not self._window_armed or self.io_denied:
            return
        self.engine.end_count_after(_IF_SETTERS[opcode], may_lengthen=True)
        self._iret_watched |= opcode == IRET_OPCODE
        if self._stop is None:
            self._stop = PendingStop(StopKind.WINDOW)     # (no stop: the count ends the run)

    def deny_io(self, port: int, size: int) -> None:
        """An EIP written in the hook is not honoured, so save the CPU state the hook sees and
        stop. In a counted run the stop lands in front of the next instruction; otherwise at the
        next one that touches memory, and the instructions before it run: their port accesses,
        exceptions and int n are ignored (_interrupt_hook), and the saved state comes back, so
        that none of them happened (each runs again after the guest's #GP handler)."""
        self.record_stop(StopKind.DENIED_IO, (self.engine.save_state(), self.engine.reg("eip"),
                                              self.engine.reg("edx") & 0xFFFF, port, size, self._io_hook[2]))

    def _denied_io_exit(self, denied: tuple) -> VmExit:
        state, start, dx, port, size, out = denied
        self.engine.restore_state(state)
        found = self._find_io(start, port, size, dx, out)       # from the block start to it
        eip = found[0] if found is not None else start
        self.engine.set_reg("eip", eip)
        return VmExit(ExitReason.EXCEPTION, eip=eip, vector=GP, error_code=0)

    def registers_after_io(self, port: int, size: int) -> dict:
        """Inside a port I/O hook the general registers are current but the engine's EIP is the
        start of its translation block. The OUT being serviced is the first one in that
        straight-line code with this port and size (an earlier one would have stopped the run
        already), so decode forward to it; the run ends just after it."""
        snapshot = self.cpu.snapshot()
        found = self._find_io(snapshot["eip"], port, size, snapshot["edx"] & 0xFFFF, out=True)
        if found is not None:
            snapshot["eip"] = found[0] + found[1]
        self._eip_after_io = snapshot["eip"]
        return snapshot

    def _fast_system_call(self, name: str) -> None:
        """syscall and sysenter, which Unicorn would run as no-ops: syscall is #UD (no EFER.SCE
        in a 32-bit CPU, as QEMU); sysenter a callout, which the emulator performs as QEMU's
        helper_sysenter (#GP(0) while IA32_SYSENTER_CS is 0). sysexit runs natively."""
        eip = self.engine.reg("eip")
        if name == "syscall":
            vm_exit = VmExit(ExitReason.EXCEPTION, eip=eip, vector=UD, error_code=0)
        else:
            # Unicorn 2.1.1 does not write EIP back before sysenter's helper: EIP is where it was
            # last written (the block's start, or an instruction before sysenter in it). sysenter
            # ends the engine's block, so it is the first one decoding forward from there.
            base = self.cpu.segment_base("cs")
            eip = next(((address - base) & 0xFFFFFFFF for address, code, _length in
                        self._instructions_from((eip + base) & 0xFFFFFFFF)
                        if code[_skip_prefixes(code):][:2] == b"\x0f\x34"), eip)
            block = self._decoder.decode_block(eip, limit=1, base=base)
            vm_exit = VmExit(ExitReason.CALLOUT, eip=eip, instruction=block.instructions[0])
        self.record_stop(StopKind.EXIT, (vm_exit, eip))

    def _interrupt_hook(self, vector: int) -> None:
        if self.io_denied:      # after a refused port access: never happened
            self.engine.reset_exception_state()
            return
        if vector == RDTSC_EXIT_VECTOR:
            self._read_timestamp()
            return
        if vector != PF_VEC:
            if self._fetch_exit is not None:
                self._clear_fetch_exit()
        elif self.paging is None and self._fetch_ahead(self.engine.reg("eip"), self.engine.reg("cr2")):
            self.engine.reset_exception_state()     # (no pager: the engine walks the guest's tables)
            return
        self._on_interrupt(vector)

    def _read_timestamp(self) -> None:
        """An rdtsc or rdtscp the engine intercepted (Engine.intercept_rdtsc), EIP at it: answered
        from guest time as the run has it so far (the virtual clock: one cycle per instruction
        retired before it, exactly as bt's callout reads it) and the run goes on after it. Outside
        ring 0 with the guest's CR4.TSD set it is #GP(0) (the engine checks its own CR4 first:
        the guest's under direct and vt, not under trap, whose CR4 is virtual)."""
        engine, cpu = self.engine, self.cpu
        eip = engine.reg("eip")
        code = self._guest_code((eip + cpu.segment_base("cs")) & 0xFFFFFFFF, 16)
        at = _skip_prefixes(code)
        if cpu.reg("cr4") & CR4_TSD and cpu.cpl:
            self.context.dispatch(VmExit(ExitReason.EXCEPTION, eip=eip, vector=GP, error_code=0,
                                         software=False, fault_eip=eip))
            return
        rdtscp = code[at:at + 3] == _RDTSCP
        value = self.context.emulator.timestamp(in_run=True)
        engine.set_reg("eax", value & 0xFFFFFFFF)
        engine.set_reg("edx", (value >> 32) & 0xFFFFFFFF)
        if rdtscp:
            engine.set_reg("ecx", cpu.read_msr(MSR_TSC_AUX) & 0xFFFFFFFF)
        engine.set_reg("eip", (eip + at + (3 if rdtscp else 2)) & 0xFFFFFFFF)
        self.timestamps_read += 1

    def _fetch_ahead(self, eip: int, linear: int) -> bool:
        """Whether a page fault at `eip` on `linear` is the engine's, not yet the guest's: the
        engine translates a whole block before it runs any of it, so code that runs off the end
        of a page into one it cannot fetch faults at the block's start, before the instructions
        in front of that page ran (the CPU and QEMU 7.2 run them, then fault at the instruction
        that needs the page). Then put an engine exit in front of that instruction, so that the
        block ends there, and run again from `eip` (True): the fault comes again at its own
        instruction. A fault while the exit is in place is exact (False, the exit goes)."""
        if self._fetch_exit is not None:
            self._clear_fetch_exit()
            return False
        if linear & (PAGE_SIZE - 1) or linear != (eip & ~(PAGE_SIZE - 1)) + PAGE_SIZE:
            return False
        address = eip
        while address < linear:      # straight-line code to the instruction that needs the page
            try:
                insn = decode(self._guest_code(address, 16), address)
            except UnbackedAccess:
                return False
            if insn is None or address + insn.size > linear:
                break
            address += insn.size
        if address == eip:
            return False
        self._fetch_exit = address
        self._set_engine_exits()
        return True

    def _clear_fetch_exit(self) -> None:
        address, self._fetch_exit = self._fetch_exit, None
        self._set_engine_exits()
        self.engine.invalidate_code(address - 1, address)     # the block that ends at the exit

    # -- engine exits: the fetch exit above, every rdmsr/wrmsr/mov drN (vmm/msr_cpuid.py) -------
    def _set_engine_exits(self) -> None:
        exits = set(self.msr_cpuid.exits)
        if self._fetch_exit is not None:
            exits.add(self._fetch_exit)
        self.engine.set_exits(sorted(exits))

    def _msr_exits_added(self, address: int, size: int) -> None:
        """From the translation hook: the block at `address` holds rdmsr/wrmsr/mov drN the
        engine must stop in front of; it is translated again, its run ended in front of it."""
        self._set_engine_exits()
        self.engine.invalidate_code(address, address + size)
        self.rerun_block(address)

    def _msr_exit_at(self, eip: int) -> Optional[int]:
        """The linear address of the rdmsr/wrmsr/mov drN exit the engine stopped at (EIP `eip`),
        None if it did not stop at one. An exit looks like hlt to the engine (its halted flag is
        set), so only a halted stop is looked up; exits are linear addresses (the engine's block
        PCs)."""
        if not self.msr_cpuid.exits or not self.engine.halted():
            return None
        linear = (eip + self.cpu.segment_base("cs")) & 0xFFFFFFFF
        return linear if linear in self.msr_cpuid.exits else None

    def _msr_exit(self, linear: int, eip: int) -> VmExit:
        """The run stopped in front of rdmsr, wrmsr or mov drN (or a hlt in front of one): a
        callout for the emulator, which answers the platform's MSRs (GuestCpu.read_msr) and the
        engine's others, keeps the debug registers, and faults outside ring 0. Code written
        over it since: the exit goes and the run resumes there."""
        if self.msr_cpuid.still_there(linear):
            block = self._decoder.decode_block(eip, limit=1, base=(linear - eip) & 0xFFFFFFFF)
            if block.instructions:
                return VmExit(ExitReason.CALLOUT, eip=eip, instruction=block.instructions[0])
        self.msr_cpuid.exits.discard(linear)
        self._set_engine_exits()
        self.engine.invalidate_code(linear - 1, linear + 1)
        return VmExit(ExitReason.EVENT, eip=eip)

    def _on_interrupt(self, vector: int) -> None:
        """Exceptions and int n are delivered from inside the engine's hook: the engine's state
        is the guest's, and the run goes on in the handler."""
        self.context.dispatch(self._exception_exit(self.engine, vector))

    def _exception_exit(self, engine, vector: int) -> VmExit:
        """Delivered from inside the interrupt hook: the engine's state is the guest's."""
        eip = engine.reg("eip")
        error_code, software = engine.last_exception_info()
        engine.reset_exception_state()
        fault_eip = eip
        if vector in (UD, GP) and self._rdpmc_at(eip):
            # QEMU's helper_rdpmc: #GP(0) outside ring 0 while CR4.PCE is clear, else #UD (no
            # counters). The engine's (QEMU 5's) has the PCE test the wrong way round. The
            # guest's ring and CR4: trap runs ring 0 at ring 3 and keeps CR4 virtual.
            outside = self.cpu.cpl and not self.cpu.reg("cr4") & CR4_PCE
            vector, error_code = (GP, 0) if outside else (UD, 0)
        if vector == NM and nm_is_ud(self._instruction_at(eip), self.cpu.reg("cr4")):
            vector = UD
        if vector == DB and not software:     # the guest's TF (the engine has no breakpoints)
            self.cpu.debug.single_step(eip, self.guest_breakpoints.take_hits())
            spend_resume_flag(self.cpu)
        elif not software:
            self.guest_breakpoints.instruction_faulted(eip)
        if software:    # EIP is past the int instruction; blame its first byte if delivery faults
            fault_eip = eip - (1 if (vector, self._byte_before(eip)) in _ONE_BYTE_INTS else 2)
        return VmExit(ExitReason.EXCEPTION, eip=eip, vector=vector, error_code=error_code,
                      software=software, fault_eip=fault_eip)

    # -- guest paging (trap, vt: the service is vmm/guest_paging.py) ------------------------------
    def control_register_written(self, number: int, old: int) -> None:
        """The guest wrote CR0, CR3 or CR4 (virtual under trap and vt, written by emulation only)."""
        change = self.paging.control_register_written(number, old)
        engine = self.engine
        if isinstance(change, PagingOff):
            self._paging_off(change)
        elif change is not None and change.directory is not None:    # shadow paging: the engine
            engine.set_reg("cr3", change.directory)                   # walks the shadow
            engine.set_reg("cr0", engine.reg("cr0") | CR0_PG | CR0_WP)

    def _paging_off(self, change: PagingOff) -> None:
        """The guest's paging is off (at entry, or it turned it off): shadow paging pages the
        engine on the pager's flat tables (4 MiB pages: CR4.PSE), where the monitor's range is
        unassigned memory; nested paging's virtual TLB goes on answering."""
        if change.directory is not None:
            engine = self.engine
            engine.set_reg("cr4", engine.reg("cr4") | CR4_PSE)
            engine.set_reg("cr3", change.directory)
            engine.set_reg("cr0", engine.reg("cr0") | CR0_PG | CR0_WP)

    def ring_changed(self) -> None:
        directory = self.paging.ring_changed()
        if directory is not None:
            self.engine.set_reg("cr3", directory)

    def invalidate_page(self, linear: int) -> None:
        self.paging.invalidate_page(linear)

    def _fetch(self, linear: int, size: int) -> bytes:
        """Guest code at a linear address, for a decoder (b"" where none can be fetched)."""
        return self.code_view.fetch_code(linear, size)

    def paging_interrupt(self, vector: int) -> bool:
        """The interrupt hook's share of guest paging: True when the exception was the monitor's
        own (a hidden page fault, the single step that ends a loan) or became the guest's #PF."""
        if self.paging is None:
            return False
        engine = self.engine
        if vector == PF_VEC and not self.paging.virtual_tlb and not engine.last_exception_info()[1]:
            self._page_fault()        # the engine walks the monitor's tables: a fault is its own
            return True
        if self.loan.active:
            guest_step = self.loan.guest_tf
            self._end_loan()
            if vector == DB and not guest_step:      # the single step that ends a loan
                engine.reset_exception_state()
                return True
        return False

    def serve_monitor_page(self, verdict: MonitorPage) -> bool:
        """A mode may carry out an access at a monitor page's linear address itself (True:
        trap emulates what it knows) rather than have it run with the guest's frame lent."""
        return False

    def _page_fault(self) -> None:
        """A page fault of the engine on the shadow: a hidden fault fills it and the instruction
        runs again; a store the shadow keeps read-only (into a guest page table) is carried out
        (a plain mov) or runs with the page lent writable and the real TF set, so that the
        single-step trap right after it takes the permission back; an access the guest allows
        where the shadow keeps a monitor page (trap's ring views; with the guest's paging off,
        the flat tables' pages) is served by the mode or runs the same way with the guest's
        frame lent there; a true fault is the guest's #PF, with CR2 in the virtual CPU."""
        engine = self.engine
        error_code, _software = engine.last_exception_info()
        linear, eip = engine.reg("cr2"), engine.reg("eip")
        write = bool(error_code & 2)
        verdict = self.paging.fault(linear, write, self.cpu.cpl == 3, lambda: self._fetch(eip, 16), engine.reg)
        if not isinstance(verdict, Traced):      # the instruction runs again, or faults
            self.guest_breakpoints.instruction_faulted(eip)
        if isinstance(verdict, GuestPF):
            self._end_loan()
            engine.reset_exception_state()
            if not self._fetch_ahead(eip, verdict.fault.linear):
                self.context.dispatch(self.paging.guest_page_fault(verdict.fault, eip))
            return
        if isinstance(verdict, NoMemory):
            self._end_loan()
            engine.reset_exception_state()
            self.record_stop(StopKind.EXIT, (VmExit(
                ExitReason.MEMORY_FAULT, eip=eip, detail=f"{'write' if write else 'read'} of no memory at "
                                                         f"{linear:#x} (physical {verdict.physical:#x})"), None))
            return
        engine.reset_exception_state()
        if isinstance(verdict, Traced):     # a plain mov, carried out: the guest goes on after it
            engine.set_reg("eip", eip + verdict.length)
        elif isinstance(verdict, Lend):     # anything else: one instruction, lent
            self.paging.lend(linear)
            self.loan.begin()
        elif isinstance(verdict, MonitorPage):      # the guest's own page at a monitor page's
            if not self.serve_monitor_page(verdict):    # address: emulated, or one step lent
                self.paging.lend_monitor_page(verdict)
                self.loan.begin()

    def _end_loan(self) -> None:
        """The lent store ran (or faulted): protect the page table again, give TF back."""
        self.loan.end()
        self.paging.end_loans()

    def _tlb_refused(self) -> VmExit:
        """Nested paging refused an access (EIP at the instruction): the guest's #PF, or memory
        it does not have."""
        if self.paging is None:
            raise MonitorBug("the engine's virtual TLB is only used by modes with nested paging")
        page, access, _present = self.paging.refusal
        eip, write = self.engine.reg("eip"), access == "write"
        self.guest_breakpoints.instruction_faulted(eip)       # it runs again, or faults
        if access == "fetch":
            linear = max(page, eip)
        else:
            linear = self.paging.refused_address(self._fetch(eip, 16), eip, self.engine.reg, self.engine.segment_base)
        verdict = self.paging.fault(linear, write, self.cpu.cpl == 3, lambda: self._fetch(eip, 16), self.engine.reg,
                                    fetch=access == "fetch")
        if isinstance(verdict, Hidden):
            return VmExit(ExitReason.EVENT, eip=eip)        # allowed by now: run it again
        if isinstance(verdict, GuestPF):
            if access == "fetch" and self._fetch_ahead(eip, verdict.fault.linear):
                return VmExit(ExitReason.EVENT, eip=eip)    # run again up to the page
            return self.paging.guest_page_fault(verdict.fault, eip)
        return VmExit(ExitReason.MEMORY_FAULT, eip=eip, detail=f"{access} of no memory at {linear:#x}")

    def paging_counters(self) -> dict:
        """The monitor's paging work, whenever it does any (trap; vt with shadow paging): vt's
        nested paging is the engine's own MMU and counts nothing."""
        if self.paging is None:
            return {}
        return {"shadow_paging": self.paging.counters_report()}

    def _instruction_at(self, eip: int):
        try:
            return decode(self._guest_code(eip, 16), eip)
        except UnbackedAccess:
            return None

    def _rdpmc_at(self, eip: int) -> bool:
        try:
            return self._guest_code(eip, 2) == b"\x0f\x33"
        except UnbackedAccess:
            return False

    def _byte_before(self, eip: int) -> int:
        try:
            return self._guest_code(eip - 1, 1)[0]
        except UnbackedAccess:
            return -1

    def execute(self) -> VmExit:
        context = self.context
        shadow_step = False
        while True:
            self._stepping_out_of_shadow = shadow_step
            stepped_from = self.engine.reg("eip") if shadow_step else None
            try:
                vm_exit, stop = self._run_engine(shadow_step)
            finally:
                self._stepping_out_of_shadow = False
            # A step that ran nothing would run nothing again, for ever. Seen after a run an OUT
            # ended stopped behind `mov ss; nop`, in front of the next mov ss: the engine still
            # reported the shadow there (its flag is reset only at the end of an engine block),
            # and a one-instruction run from it did not move. The run loop takes over; its window
            # may then deliver an interrupt where the engine says a shadow is.
            if stepped_from is not None and self.engine.reg("eip") == stepped_from:
                return vm_exit
            if context.stop_requested or context.stop_due:
                return vm_exit
            # A run that ended only for a block to be translated again (rerun_block) goes on:
            # no exit of the guest's, nothing for the run loop (its instructions are retired).
            if stop is StopKind.RERUN_BLOCK and vm_exit.reason is ExitReason.EVENT:
                continue
            # A run stopped from a hook or from outside (an OUT, time coming into use, host
            # input) may end between sti (mov ss, pop ss) and the instruction it shields: that
            # one runs first, alone (counted: only a guest that uses time has interrupts), so
            # the window never takes an interrupt in the shadow.
            shadow_step = vm_exit.reason is ExitReason.EVENT and self._in_shadow() and context.run_budget() is not None
            if not shadow_step:
                return vm_exit

    def _in_shadow(self) -> bool:
        """Whether the guest stands right after sti, mov ss or pop ss: run natively (the
        engine's own flag), or emulated in a hook this run (trap's sti: emulated_shadow)."""
        return self.engine.interrupt_shadow() or self.engine.reg("eip") == self.emulated_shadow

    def _run_engine(self, one: bool = False) -> tuple[VmExit, Optional[StopKind]]:
        """One run of the engine (one instruction if `one`, in a counted run): its exit and the
        kind of stop a hook recorded (None: none)."""
        context, engine = self.context, self.engine
        count = context.run_budget()
        if one and count is not None:
            count = 1
        debugger = self.debugger
        stepping = debugger is not None and debugger.stepping
        if debugger is not None and debugger.interrupted:
            return VmExit(ExitReason.DEBUG, eip=engine.reg("eip")), None
        if context.input_pending:           # host input came in the meantime: the run loop polls it
            return VmExit(ExitReason.EVENT, eip=engine.reg("eip")), None
        self._stop = None
        self.emulated_shadow = None
        self.guest_breakpoints.arm()
        self.guest_breakpoints.take_hits()
        # Runs are counted while a guest data breakpoint is armed (its #DB comes through the
        # count), but only budgeted runs retire what they ran.
        self._retiring = count is not None
        if count is None and self.guest_breakpoints.counted:
            count = _WATCH_COUNT
        counted = bool(count) and not stepping
        self.guest_breakpoints.in_run = True
        try:
            if counted:
                self._counted_run = True
                try:
                    cause, count = self._run_counted(count)
                finally:
                    self._counted_run = False
            else:
                cause = engine.run(engine.reg("eip"), context.until_address, count=1 if stepping else 0)
        finally:
            self.guest_breakpoints.in_run = False
        stop, self._stop = self._stop, None
        vm_exit, cut_short = self._exit_after_run(cause, stop, count if counted else 0, stepping)
        if counted and (vm_exit.reason is not ExitReason.EVENT or cut_short):
            self._retire(self._ran_early)          # a run that ended before its count: what it ran
        return vm_exit, stop.kind if stop is not None else None

    def _exit_after_run(self, cause, stop: Optional[PendingStop], count: int,
                        stepping: bool) -> tuple[VmExit, bool]:
        """Why the engine returned: the stop a hook recorded, else the engine's own cause.
        count: the instructions a counted run was given (0: none). Also whether the run was
        cut short (ended before its count: what it ran is retired by the caller)."""
        engine, debugger, context = self.engine, self.debugger, self.context
        self._stopped_between_blocks = False
        fetch_exit = self._fetch_exit
        if fetch_exit is not None:       # whatever ended the run, the exit goes
            self._clear_fetch_exit()
        if self._iret_watched:           # an iret the watch saw ran: NMIs are no longer blocked
            self._iret_watched = False
            context.iret_executed()
        kind = stop.kind if stop is not None else None
        if kind is StopKind.DENIED_IO:
            return self._denied_io_exit(stop.data), False
        if kind is StopKind.EXIT:        # the faulting syscall/sysenter, the instruction vt
            vm_exit, eip = stop.data     # emulates, trap's hlt, a fault of guest paging
            if eip is not None:
                engine.set_reg("eip", eip)
            return vm_exit, False
        if kind is StopKind.RERUN_BLOCK:     # (what ran is retired)
            engine.set_reg("eip", stop.data)
            return VmExit(ExitReason.EVENT, eip=stop.data), True
        if kind is StopKind.WINDOW:      # the guest set IF with an interrupt waiting
            return VmExit(ExitReason.EVENT, eip=engine.reg("eip")), True
        if kind is StopKind.WATCHPOINT:  # (counted: EIP is the next instruction)
            if self.guest_breakpoints.complete_hit_instruction(
                    lambda count: engine.run(engine.reg("eip"), context.until_address, count=count)):
                self._ran_early += 1
            eip = engine.reg("eip")
            return self.guest_breakpoints.watchpoint_exit(eip) or VmExit(ExitReason.EVENT, eip=eip), True
        if context.stop_requested:      # (a port hook's stop: where the run ends is after its OUT)
            eip = self._eip_after_io if self._eip_after_io is not None else engine.reg("eip")
            self._eip_after_io = None
            return VmExit(ExitReason.STOP_REQUEST, eip=eip), False
        eip = engine.reg("eip")
        if cause is StopCause.RETURNED and kind is None and not context.stop_due and not stepping \
                and (linear := self._msr_exit_at(eip)) is not None:
            return self._msr_exit(linear, eip), True
        if kind is StopKind.END_RUN:     # cut short: what it ran is retired by the caller
            eip = self._resume_point(eip, stop.data)
            engine.set_reg("eip", eip)
            if not engine.halted():
                return VmExit(ExitReason.EVENT, eip=eip), True
            return VmExit(ExitReason.HLT, eip=eip - 1), False
        if fetch_exit == eip and cause is StopCause.RETURNED and not stepping:   # the code before the page ran
            return VmExit(ExitReason.EVENT, eip=eip), True
        if debugger is not None and (stepping or kind is StopKind.BREAKPOINT or debugger.interrupted):
            if cause is not StopCause.MEMORY_FAULT:
                return VmExit(ExitReason.DEBUG, eip=eip), False
        if context.stop_due:
            return context.watchdog_exit(eip), False
        if cause is StopCause.MEMORY_FAULT:
            return VmExit(ExitReason.MEMORY_FAULT, eip=eip, detail=engine.memory_fault.message), False
        if cause is StopCause.TLB_REFUSED:
            # what ran before the refusal counts, even if it runs again
            return self._tlb_refused(), True
        if count and context.input_pending and not engine.halted():
            return VmExit(ExitReason.EVENT, eip=eip), True      # host input cut the count (end_run_soon)
        if count:
            # Only `hlt` and an exhausted count return quietly. hlt leaves EIP just past itself;
            # the count stops before an instruction (perhaps after one ending in byte F4).
            if not engine.halted():
                self._retire(count)
                return VmExit(ExitReason.EVENT, eip=eip), False
        return VmExit(ExitReason.HLT, eip=eip - 1), False

    def _retire(self, instructions: int) -> None:
        if self._retiring:
            self.context.retire(instructions)

    def _run_counted(self, count: int):
        """Run exactly `count` instructions (the engine's count), except that an instruction
        that blocks interrupts for one more (sti, mov ss, pop ss) is never the last: an
        interrupt taken at the end must not land in its shadow. Returns (cause, count run)."""
        engine, until = self.engine, self.context.until_address
        done = self._done_in_run = 0
        if count > 1:
            cause = engine.run(engine.reg("eip"), until, count=count - 1)
            if self._stopped_early(cause):
                self._ran_early = self._instructions_ran()
                return cause, count
            done = self._done_in_run = count - 1
            self._run_goes_on()
        if self._opens_shadow(engine.reg("eip")):
            count += 1
            cause = engine.run(engine.reg("eip"), until, count=2)
        else:
            cause = engine.run(engine.reg("eip"), until, count=1)
        self._ran_early = done + self._instructions_ran()
        return cause, count

    def _run_goes_on(self) -> None:
        """A counted run goes on in another engine run from EIP, exactly where the last one
        stopped (in front of an instruction, perhaps inside an engine block): for a mode that
        follows engine blocks (trap's hole watch), the block running was left there."""

    def _stopped_early(self, cause) -> bool:
        return (cause is not StopCause.RETURNED or self.context.stop_requested or self._stop is not None
                or self.context.stop_due or self.context.input_pending
                or self.engine.halted()
                or self.engine.reg("eip") == self._fetch_exit)

    def _instructions_ran(self) -> int:
        """What the last counted engine run executed: the instructions it started, less the one
        it stopped in front of (none after hlt; a fault counts as stopped in front of its
        instruction, which may be off by one for a trap: a bounded, deterministic error)."""
        started = self.engine.instructions_started()
        eip = self.engine.reg("eip")
        between, self._stopped_between_blocks = self._stopped_between_blocks, False
        if between or self.engine.halted() or eip == self._fetch_exit:   # (an exit is
            return started                                                   # no instruction)
        return max(0, started - 1)

    def _opens_shadow(self, eip: int) -> bool:
        try:
            code = self._guest_code(eip, 16)
        except UnbackedAccess:
            return False
        at = _skip_prefixes(code)
        opcode = code[at]
        mov_ss = opcode == 0x8E and len(code) > at + 1 and (code[at + 1] >> 3) & 7 == 2
        return opcode in (0xFB, 0x17) or mov_ss           # sti, pop ss, mov ss
