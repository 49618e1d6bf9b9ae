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
                      instruction exits Unicorn has no hook for: a block hook finds them the
                      first time each engine block runs and a code hook at each is the exit
                      from the next run on (the first run is counted at the scan: a block left
                      early overcounts by one). A Python call per engine block: enabling them
                      costs, as it did on the first VT-x parts

Two costs the model keeps apart (both in the report): `vt_exits`, the VM exits the hardware would
take with these controls, and the monitor's own work that real hardware does without exiting
(Unicorn has no IDT delivery, so the monitor delivers exceptions and interrupts in either case).
Memory: nested paging (the engine's MMU walks the guest's tables; guest physical is the engine's
physical memory), see the memory-virtualization issue.
"""

from __future__ import annotations

from collections import Counter

from translator.decoder import Decoder
from vmm.cpu import GuestCpu
from vmm.errors import ConfigError
from vmm.exits import ExitReason
from vmm.modes.direct import DirectMode

EVENT_EXITS = ("io", "hlt", "cpuid", "external_interrupt", "exception")
# Instruction exits found by scanning: exit reason -> classification procedures it covers.
INSTRUCTION_EXITS = {
    "rdtsc": ("rdtsc",),
    "cr_access": ("read_control_register", "write_control_register", "write_msw"),
    "dr_access": ("debug_register",),
    "msr": ("msr",),
    "invlpg": ("cache_control",),
    "descriptor_table": ("load_descriptor_table", "store_descriptor_table", "load_system_segment",
                         "store_system_segment"),
}
ALL_EXITS = EVENT_EXITS + tuple(INSTRUCTION_EXITS)
DEFAULT_EXITS = ("io", "hlt", "cpuid", "external_interrupt")


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


class HardwareAssistedMode(DirectMode):
    name = "vt"

    def __init__(self, exits: frozenset = frozenset(DEFAULT_EXITS)) -> None:
        self.controls = exits
        self.vt_exits: Counter = Counter()

    @classmethod
    def from_config(cls, config) -> "HardwareAssistedMode":
        return cls(config.vt_exits if config.vt_exits is not None else frozenset(DEFAULT_EXITS))

    def attach(self, vm) -> GuestCpu:
        cpu = super().attach(vm)
        vm.engine.on_cpuid(self._cpuid)
        self._watched = {procedure: reason for reason, procedures in INSTRUCTION_EXITS.items()
                         if reason in self.controls for procedure in procedures}
        if self._watched:
            self.decoder = Decoder(self.memory.read_code)
            self._scanned: set[int] = set()
            vm.engine.on_block(self._scan_block)
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

    def _cpuid(self) -> bool:
        if "cpuid" in self.controls:
            self._exit("cpuid")
        return False                      # the guest sees the engine's CPUID, as under direct

    def _on_interrupt(self, vm, vector: int) -> None:
        if "exception" in self.controls:
            self._exit(f"exception_{vector:#04x}")
        super()._on_interrupt(vm, vector)

    def execute(self, vm):
        vm_exit = super().execute(vm)
        if vm_exit.reason is ExitReason.HLT and "hlt" in self.controls:
            self._exit("hlt")
        return vm_exit

    def interrupt_delivered(self) -> None:
        if "external_interrupt" in self.controls:
            self._exit("external_interrupt")

    # -- instruction exits found by scanning ---------------------------------------------------
    def _scan_block(self, address: int, size: int) -> None:
        if address in self._scanned:
            return
        self._scanned.add(address)
        found = False
        for instruction in self.decoder.instructions_in(address, address + size):
            reason = self._watched.get(instruction.rule.procedure)
            if reason is not None:
                self.engine.on_code(instruction.address, lambda _at, reason=reason: self._exit(reason))
                self._exit(reason)      # this first run: the block was translated before the hook
                found = True
        if found:     # hooks apply to code translated after them: from this block's next run on
            self.engine.invalidate_code(address, address + size)

    def counters(self) -> dict:
        return {"vt_exit_controls": sorted(self.controls), "vt_exits": dict(sorted(self.vt_exits.items()))}
