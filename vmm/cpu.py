"""The guest-visible CPU: registers as the guest sees them, whatever the execution mode keeps
in the engine (the debug registers in the monitor, in every mode). Delivery, emulation
procedures and reports read and write the guest through it.
VirtualSystemCpu is the bookkeeping shared by the views that keep the guest's descriptor-table
and control registers virtual (bt's TranslatedCpu, trap's TrapCpu)."""

from __future__ import annotations

from vmm.debug_registers import DebugRegisters
from vmm.engine import GENERAL_REGISTERS, SEGMENT_REGISTERS, Engine
from vmm.x86 import SegmentDescriptor

SNAPSHOT_REGISTERS = GENERAL_REGISTERS + SEGMENT_REGISTERS + ("cr0", "cr2", "cr3", "cr4")


class GuestCpu:
    """Guest-visible register access. The base class passes everything through to the engine:
    right for direct execution, where the engine's state IS the guest's. `platform` (the
    machine's vmm.interrupts.InterruptPlatform, set by the builder) answers for the MSRs and
    CPUID bits of the devices built into the CPU (the local APIC), which the engine lacks.
    `debug`: the debug registers, the monitor's in every mode (the engine never sees them)."""

    platform = None
    # Whether the engine's segment loads read the guest's own descriptor tables (and so would
    # set their accessed bits): not where it loads shadows with the bit preset (bt).
    loads_guest_descriptors = True

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.debug = DebugRegisters()

    def reg(self, name: str) -> int:
        return self.engine.reg(name)

    def set_reg(self, name: str, value: int) -> None:
        self.engine.set_reg(name, value)

    def table_register(self, name: str) -> tuple[int, int]:
        """(base, limit) of gdtr, idtr, or the cached part of ldtr / tr."""
        return self.engine.table_register(name)

    def set_table_register(self, name: str, base: int, limit: int) -> None:
        self.engine.set_table_register(name, base, limit)

    def table_selector(self, name: str) -> int:
        """The selector held in ldtr or tr."""
        return self.engine.table_selector(name)

    def set_table_selector(self, name: str, selector: int, raw=None) -> None:
        """Load ldtr or tr from a descriptor the caller checked (raw None: a null LDT). lldt and
        ltr run natively here; a task switch the monitor performs loads both, with the cached
        access rights the engine's own task switches read."""
        if raw is None:
            self.engine.set_table_register(name, 0, 0, selector & 0xFFFF)
            return
        descriptor = SegmentDescriptor.decode(raw)
        self.engine.set_table_register(name, descriptor.base, descriptor.limit, selector & 0xFFFF,
                                       int.from_bytes(raw[4:8], "little"))

    def load_segment(self, name: str, selector: int, raw) -> None:
        """Load a segment register whose architectural checks were done by the caller."""
        self.engine.set_reg(name, selector)

    def change_privilege(self, cs: int, cs_raw: bytes, ss: int, ss_raw: bytes, esp: int) -> None:
        """Load CS, SS and ESP together where the CPL changes (interrupts from an outer ring,
        returns to one): the new CPL is CS's RPL. The caller has done the architectural checks."""
        self.engine.set_privilege(cs & 3, ss, cs)
        self.engine.set_reg("esp", esp)

    def segment_base(self, name: str) -> int:
        """The base of a loaded segment register, from its hidden part: the engine's segments
        carry the guest's bases (the shadow descriptors copy them), except DS/ES/SS in bt's long
        mode, which TranslatedCpu answers for itself."""
        return self.engine.segment_base(name)

    def segment_present(self, name: str) -> bool:
        """Whether the engine's hidden part of a segment register holds a descriptor (see
        Engine.segment_present): not so only after the engine's own task switch faulted."""
        return self.engine.segment_present(name)

    def invalidate_page(self, linear: int) -> None:
        """invlpg emulated by the monitor: the engine walks the guest's own tables, so dropping
        its whole TLB is enough."""
        self.engine.flush_tlb()

    def read_msr(self, number: int) -> int:
        if self.platform is not None and (value := self.platform.read_msr(number)) is not None:
            return value
        return self.engine.read_msr(number)

    def write_msr(self, number: int, value: int) -> None:
        if self.platform is None or not self.platform.write_msr(number, value):
            self.engine.write_msr(number, value)

    def cpuid_seen(self, leaf: int, values: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """CPUID `leaf` as the guest sees it, from the engine's answer `values`."""
        return values if self.platform is None else self.platform.cpuid(leaf, values)

    @property
    def cpl(self) -> int:
        return self.reg("cs") & 3

    def snapshot(self) -> dict[str, int]:
        return {name: self.reg(name) for name in SNAPSHOT_REGISTERS}


class VirtualSystemCpu(GuestCpu):
    """A view whose descriptor-table registers (GDTR, IDTR, LDTR, TR: base, limit and selector)
    and control registers (`control`: CR0, CR2, CR3, CR4) are the monitor's copies of the
    guest's, the engine holding its own. Subclasses extend the setters with what the change
    means to them (shadow descriptor tables, the virtual-CPU block) and call these first."""

    TABLE_REGISTERS = ("gdtr", "idtr", "ldtr", "tr")

    def __init__(self, engine: Engine, control_registers=(0, 2, 3, 4)) -> None:
        super().__init__(engine)
        self.tables = {name: engine.table_register(name) for name in self.TABLE_REGISTERS}
        self.table_selectors = {"ldtr": 0, "tr": 0}
        self.control = {n: engine.reg(f"cr{n}") for n in control_registers}

    def table_register(self, name: str) -> tuple[int, int]:
        return self.tables[name]

    def set_table_register(self, name: str, base: int, limit: int) -> None:
        self.tables[name] = (base & 0xFFFFFFFF, limit & 0xFFFF)

    def table_selector(self, name: str) -> int:
        return self.table_selectors[name]

    def set_table_selector(self, name: str, selector: int, raw=None) -> None:
        """LDTR or TR from a descriptor the caller checked (raw None: null): its cached base and
        limit, and the selector."""
        descriptor = SegmentDescriptor.decode(raw) if raw is not None else None
        self.tables[name] = (descriptor.base, descriptor.limit) if descriptor is not None else (0, 0)
        self.table_selectors[name] = selector & 0xFFFF
