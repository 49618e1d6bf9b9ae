"""Hardware-assisted virtualization, modelled after VT-x: the guest runs untranslated at its own
rings against CPU state that belongs to it alone (the engine is its "non-root mode" and its
registers the VMCS guest-state area), so every instruction, sensitive ones included, gives the
bare machine's result, and the monitor is entered only for the events its exit controls select.

The exit controls (`--vt-exits`, shown in the report) name exit reasons as VT-x does:

  io                  IN/OUT/INS/OUTS (unconditional I/O exiting)
  hlt                 HLT exiting
  cpuid               CPUID (an unconditional exit on VT-x)
  external_interrupt  external-interrupt exiting: the monitor injects the PIC's vector
  exception           the exception bitmap: every vector exits (without it a guest exception
                      is delivered through the guest's IDT as by the CPU: no exit counted)
  rdtsc, cr_access, dr_access, msr, invlpg, descriptor_table
                      instruction exits Unicorn has no hook for: each engine block is scanned
                      when the engine translates it (Engine.on_translation), a code hook goes
                      at each watched instruction, and a block that got one is translated
                      again before it runs, so every execution exits. The cost is paid per
                      translation and per exit, not per block run. rdtsc reads guest time
                      with the control on or off (TSC offsetting and scaling to the virtual
                      clock: DirectMode's intercepted rdtsc); on, each one also counts an exit
  task_switch         not a control: VT-x exits on every task switch and the monitor performs
                      it (vmm/task_switch.py); counted for those the monitor sees (see
                      task_switched)

Two costs the model keeps apart (both in the report): `vt_exits`, the VM exits the hardware would
take with these controls, one count per exit reason (`exception`: every exit the exception
bitmap took, by vector in `vt_exception_exits`), and the monitor's own work that real hardware does without exiting
(Unicorn has no IDT delivery, so the monitor delivers exceptions and interrupts in either case).
Memory: nested paging by default (the engine's MMU walks the guest's tables, the second level
being the engine's physical memory map of guest RAM through the physical-to-machine map: no
exits for paging at all). `--paging shadow` models VT-x without EPT: the monitor keeps shadow
page tables (vmm/guest_paging.py; while the guest's paging is off the engine walks the
monitor's flat tables, where the monitor's range is unassigned memory as on QEMU), the guest's
control registers are virtual, and the exits that needs are forced on: cr_access and invlpg
(emulated at the exit, never run natively) and page faults (the exception bitmap's #PF: hidden
faults, tracing faults).
"""

from __future__ import annotations

from collections import Counter

from translator.classify import Procedure
from translator.decoder import Decoder
from vmm.cpu import GuestCpu
from vmm.errors import ConfigError
from vmm.exits import ExitReason, VmExit
from vmm.guest_paging import GuestPaging
from vmm.modes.direct import DirectMode, StopKind
from vmm.x86 import CR0_PG, CR0_WP, CR4_DE, CR4_PAE, CR4_PSE, PF_VEC

EVENT_EXITS = ("io", "hlt", "cpuid", "external_interrupt", "exception")
# Instruction exits found by scanning: exit reason -> classification procedures it covers.
INSTRUCTION_EXITS = {
    "rdtsc": (Procedure.RDTSC,),
    "cr_access": (Procedure.READ_CONTROL_REGISTER, Procedure.WRITE_CONTROL_REGISTER, Procedure.WRITE_MSW),
    "dr_access": (Procedure.DEBUG_REGISTER,),
    "msr": (Procedure.MSR,),
    "invlpg": (Procedure.CACHE_CONTROL,),
    "descriptor_table": (Procedure.LOAD_DESCRIPTOR_TABLE, Procedure.STORE_DESCRIPTOR_TABLE,
                         Procedure.LOAD_SYSTEM_SEGMENT, Procedure.STORE_SYSTEM_SEGMENT),
}
ALL_EXITS = EVENT_EXITS + tuple(INSTRUCTION_EXITS)
DEFAULT_EXITS = ("io", "hlt", "cpuid", "external_interrupt")
SHADOW_PAGING_EXITS = ("cr_access", "invlpg")      # emulated: the guest's CRs are virtual
# The instructions that may switch tasks, watched under shadow paging (see task_switched).
TASK_SWITCH_PROCEDURES = (Procedure.FAR_JMP, Procedure.FAR_CALL, Procedure.IRET)


def parse_exit_controls(text: str) -> frozenset:
    """'default', 'all', or a comma list of exit reasons (a leading '+' adds to the defaults)."""
    text = text.strip()
    if text in ("", "default"):
        return frozenset(DEFAULT_EXITS)
    if text == "all":
        return frozenset(ALL_EXITS)
    base = set(DEFAULT_EXITS) if text.startswith("+") else set()
    for name in text.lstrip("+").split(","):
        name = name.strip()
        if name not in ALL_EXITS:
            raise ConfigError(f"unknown VT exit {name!r} (known: {', '.join(ALL_EXITS)}, default, all)")
        base.add(name)
    return frozenset(base)


# The exits of the instructions the engine stops in front of (vmm/msr_cpuid.py), by procedure.
_INTERCEPTED_EXITS = {Procedure.MSR: "msr", Procedure.DEBUG_REGISTER: "dr_access", Procedure.HLT: "hlt"}


def _undefined_debug_register(instruction, cr4: int) -> bool:
    """mov to or from DR4 or DR5 under CR4.DE: #UD, which comes before any VM exit."""
    if instruction.rule.procedure is not Procedure.DEBUG_REGISTER or not cr4 & CR4_DE:
        return False
    insn = instruction.insn
    return any(insn.reg_name(operand.reg) in ("dr4", "dr5") for operand in insn.operands)


def _undefined_control_register(instruction) -> bool:
    """mov to or from CR1 or CR5-CR7: #UD, which comes before any VM exit (the engine raises it
    when the instruction runs natively)."""
    if instruction.rule.procedure not in (Procedure.READ_CONTROL_REGISTER, Procedure.WRITE_CONTROL_REGISTER):
        return False
    insn = instruction.insn
    names = [insn.reg_name(operand.reg) for operand in insn.operands]
    return not any(name in ("cr0", "cr2", "cr3", "cr4") for name in names)


class ShadowedControlCpu(GuestCpu):
    """The guest's CPU under vt with shadow paging: the engine's state is the guest's except
    CR0/CR2/CR3/CR4, which are virtual (the engine's CR3 holds a shadow, its CR0 has PG and WP
    as the monitor needs, and its CR2 is the last hidden fault's)."""

    def __init__(self, engine, mode: "HardwareAssistedMode") -> None:
        super().__init__(engine)
        self.mode = mode
        self.control = {n: engine.reg(f"cr{n}") for n in (0, 2, 3, 4)}

    def reg(self, name: str) -> int:
        if name in ("cr0", "cr2", "cr3", "cr4"):
            return self.control[int(name[2:])]
        return self.engine.reg(name)

    def set_reg(self, name: str, value: int) -> None:
        if name not in ("cr0", "cr2", "cr3", "cr4"):
            self.engine.set_reg(name, value)
            return
        number = int(name[2:])
        old, self.control[number] = self.control[number], value & 0xFFFFFFFF
        if number == 0:        # the guest's own bits, with paging and write protection the monitor's
            engine_cr0 = self.engine.reg("cr0")
            self.engine.set_reg("cr0", (value & ~(CR0_PG | CR0_WP)) | (engine_cr0 & (CR0_PG | CR0_WP)))
        elif number == 4:     # the paging format is the monitor's: two-level tables (no PAE) with
            # 4 MiB pages in its flat tables, while the guest's paging is off (shadows have none)
            self.engine.set_reg("cr4", (value & ~CR4_PAE) | CR4_PSE)
        if number != 2:
            self.mode.control_register_written(number, old)

    def invalidate_page(self, linear: int) -> None:
        self.mode.invalidate_page(linear)

    def load_segment(self, name: str, selector: int, raw) -> None:
        self._descriptors_shadowed(selector)
        super().load_segment(name, selector, raw)

    def change_privilege(self, cs: int, cs_raw: bytes, ss: int, ss_raw: bytes, esp: int) -> None:
        self._descriptors_shadowed(cs, ss)
        super().change_privilege(cs, cs_raw, ss, ss_raw, esp)

    def _descriptors_shadowed(self, *selectors: int) -> None:
        """A segment register the monitor loads (a task switch, a delivery) makes the engine
        read the descriptor from the guest's table through the shadow, inside its register
        write, where a hidden page fault cannot be taken: fill the shadow for it first."""
        if not self.control[0] & CR0_PG:
            return
        for selector in selectors:
            if not selector & 0xFFFC:
                continue
            base, _limit = self.table_register("ldtr" if selector & 4 else "gdtr")
            for linear in {(base + (selector & ~7)) & ~0xFFF, (base + (selector & ~7) + 7) & ~0xFFF}:
                self.mode.paging.prefill(linear)


class HardwareAssistedMode(DirectMode):
    name = "vt"
    options = frozenset({"vt_exits"})
    paging_schemes = ("nested", "shadow")

    def __init__(self, exits: frozenset = frozenset(DEFAULT_EXITS), paging: str = "nested") -> None:
        self.paging_scheme = paging
        if paging == "shadow":
            exits = exits | frozenset(SHADOW_PAGING_EXITS)
        self.controls = exits
        self.vt_exits: Counter = Counter(dict.fromkeys(ALL_EXITS, 0))   # every reason in the report
        self.vt_exception_exits: Counter = Counter()                   # the exception bitmap's, by vector

    @classmethod
    def from_config(cls, config) -> "HardwareAssistedMode":
        return cls(config.vt_exits if config.vt_exits is not None else frozenset(DEFAULT_EXITS),
                   paging=config.paging or "nested")

    def attach(self, context) -> GuestCpu:
        cpu = super().attach(context)
        if self.paging_scheme == "shadow":
            self.use_cpu(ShadowedControlCpu(context.engine, self))
            cpu = self.cpu
            self.paging = GuestPaging.untranslated(context, cpu, "shadow", ring_compression=False)
            self._paging_off(self.paging.unpaged())     # the flat tables (the guest's paging is off)
        self._watched = {procedure: reason for reason, procedures in INSTRUCTION_EXITS.items()
                         if reason in self.controls for procedure in procedures}
        if self.paging_scheme == "shadow":
            self._watched.update((procedure, "task_switch") for procedure in TASK_SWITCH_PROCEDURES)
        if self._watched:
            self.decoder = Decoder(self._fetch)
            self._scans: dict[tuple[int, bytes], tuple] = {}     # (start, code) -> (watched, others)
            self._code_hooks: set[int] = set()       # addresses with a code hook
            self._exit_at: dict[int, tuple] = {}     # address -> (reason, instruction) its hook exits for
            context.engine.on_translation(self._scan_block)
        return cpu

    def _exit(self, reason: str) -> None:
        self.vt_exits[reason] += 1

    # -- exits the engine reports itself -------------------------------------------------------
    def _port_in(self, port: int, size: int) -> int:
        if "io" in self.controls:
            self._exit("io")
        return super()._port_in(port, size)

    def _port_out(self, port: int, size: int, value: int) -> None:
        if "io" in self.controls:
            self._exit("io")
        super()._port_out(port, size, value)

    def _msr_exit(self, linear: int, eip: int):
        """rdmsr, wrmsr and mov drN (and a hlt in front of one) stop the engine in front of them
        (DirectMode): their exit is taken there, where VT-x would take it: at ring 0 (elsewhere
        the #GP comes first), and not for DR4/DR5 under CR4.DE (#UD first)."""
        vm_exit = super()._msr_exit(linear, eip)
        if vm_exit.reason is ExitReason.CALLOUT:
            reason = _INTERCEPTED_EXITS.get(vm_exit.instruction.rule.procedure)
            if reason in self.controls and self.cpu.cpl == 0 \
                    and not _undefined_debug_register(vm_exit.instruction, self.cpu.reg("cr4")):
                self._exit(reason)
        return vm_exit

    def _cpuid_hook(self) -> bool:
        if "cpuid" in self.controls and not self.io_denied:     # (not run: DirectMode.deny_io)
            self._exit("cpuid")
        return super()._cpuid_hook()      # the engine's CPUID, as under direct

    def _on_interrupt(self, vector: int) -> None:
        if "exception" in self.controls or (vector == PF_VEC and self.paging is not None):
            self._exit("exception")
            self.vt_exception_exits[vector] += 1
        if self.paging_interrupt(vector):
            return
        super()._on_interrupt(vector)

    def execute(self):
        vm_exit = super().execute()
        if vm_exit.reason is ExitReason.HLT and "hlt" in self.controls:
            self._exit("hlt")
        return vm_exit

    def interrupt_delivered(self) -> None:
        if "external_interrupt" in self.controls:
            self._exit("external_interrupt")

    def task_switched(self, how: str) -> None:
        """VT-x exits on every task switch, unconditionally, and the monitor performs it. Those
        through the IDT are the monitor's anyway; under shadow paging, far jmp/call and iret are
        watched (a code hook at each) so that the new CR3 goes through the shadow. Under nested
        paging the engine performs those itself, correctly but for 16-bit TSSs (see
        sample_binaries/samples.json), and they are not counted."""
        self._exit("task_switch")

    # -- instruction exits found by scanning ---------------------------------------------------
    def _scan_block(self, address: int, size: int) -> None:
        """The engine translated a block (before it runs): a code hook at each watched
        instruction in it. A hook new to the block misses this translation: the block is
        translated again and the run ends in front of it, none of it run, so that its first run
        exits too. Scanned once per distinct code; a block translated again costs a fetch."""
        code = self._fetch(address, size)
        scan = self._scans.get((address, code))
        if scan is None:
            watched, others = [], []
            for instruction in self.decoder.instructions_in(address, address + size):
                reason = self._watched.get(instruction.rule.procedure)
                if reason is None:
                    others.append(instruction.address)
                else:
                    watched.append((instruction.address, (reason, instruction)))
            scan = self._scans[(address, code)] = (tuple(watched), tuple(others))
        watched, others = scan
        for other in others:            # code written over a watched instruction: its hook idles
            self._exit_at.pop(other, None)
        hooked = False
        for at, exit_for in watched:
            if at not in self._code_hooks:
                self._code_hooks.add(at)
                self.engine.on_code(at, self._code_exit)
                hooked = True
            self._exit_at[at] = exit_for
        if hooked:
            self.engine.invalidate_code(address, address + size)
            self.rerun_block(address)

    def _code_exit(self, address: int) -> None:
        exit_for = self._exit_at.get(address)
        if exit_for is not None:
            self._instruction_exit(*exit_for)

    def _instruction_exit(self, reason: str, instruction) -> None:
        """An instruction exit: counted; under shadow paging, CR accesses and invlpg at ring 0 are
        emulated here (the instruction never runs natively) and the guest goes on after it.
        Outside ring 0 they fault before any exit, as on VT-x: the engine raises the #GP."""
        if reason == "task_switch":      # only those that do switch tasks exit (task_switched)
            if self.context.emulator.switches_task(instruction):
                # Performed from the run loop, not in this hook: a switch may change the CPL,
                # which the engine does by restoring a saved context (not safe in a code hook).
                self.record_stop(StopKind.EXIT, (VmExit(ExitReason.CALLOUT, eip=instruction.address,
                                                        instruction=instruction), instruction.address))
            return
        if (self.engine.reg("cs") & 3 and reason in SHADOW_PAGING_EXITS) or self.io_denied \
                or _undefined_control_register(instruction):
            return
        self._exit(reason)
        if self.paging is not None and reason in SHADOW_PAGING_EXITS:
            self.context.dispatch(VmExit(ExitReason.CALLOUT, eip=instruction.address, instruction=instruction))

    def counters(self) -> dict:
        return {"vt_exit_controls": sorted(self.controls), "vt_exits": dict(sorted(self.vt_exits.items())),
                "vt_exception_exits": {f"{vector:#04x}": count for vector, count in sorted(self.vt_exception_exits.items())},
                **self.paging_counters()}
