"""The guest-visible CPU under binary translation: TranslatedCpu (general registers and arithmetic
flags are the engine's; EIP, IOPL, TF, selectors, descriptor-table and control registers are
virtual, and the engine's descriptors are shadows of the guest's, DPL 0 made DPL 1 for the
deprivileged kernel), the VcpuBlock writer that mirrors the virtual state into the monitor pages
translated code reads, and the monitor's own 64-bit code selectors."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from capstone import x86_const as X

from translator.layout import VCPU_CR, real_iopl, real_privilege
from vmm.cpu import VirtualSystemCpu
from vmm.emulate import UnsupportedInstruction
from vmm.x86 import (CR4_TSD, EFER_LME, EFER_NXE, EFER_SCE, IOPL_MASK, MSR_EFER, MSR_FS_BASE, MSR_GS_BASE,
                     MSR_KERNEL_GS_BASE, TF, SegmentDescriptor)

# The EFER bits a 32-bit guest keeps in the engine's own CPU model (what direct shows it).
GUEST_EFER_BITS = EFER_SCE | EFER_LME | EFER_NXE

if TYPE_CHECKING:
    from vmm.modes.bt.mode import BinaryTranslationMode

SEGMENT_NAMES = ("cs", "ss", "ds", "es", "fs", "gs")
SEGMENT_IDS = {name: reg for reg, name in ((X.X86_REG_CS, "cs"), (X.X86_REG_SS, "ss"), (X.X86_REG_DS, "ds"),
                                           (X.X86_REG_ES, "es"), (X.X86_REG_FS, "fs"), (X.X86_REG_GS, "gs"))}


# The monitor's own 64-bit code segments, at the end of the shadow GDT: translated code runs on
# them, at CPL 1 for guest ring 0 and CPL 3 for guest ring 3. L=1, execute-only (a guest load of
# the selector into a data segment register is refused, as one past its GDT limit would be).
CODE64_SELECTOR = {1: 0xFFF0 | 1, 3: 0xFFF8 | 3}


def code64_descriptor(dpl: int) -> bytes:
    return struct.pack("<II", 0xFFFF, 0x00AF9900 | (dpl << 13))


def code_selector(cpl: int) -> int:
    """The engine's CS for translated code at guest ring `cpl` (0 or 3)."""
    return CODE64_SELECTOR[1 if cpl == 0 else 3]


def _real_selector(selector: int) -> int:
    """The selector the engine holds for a guest selector: RPL 0 becomes 1 (deprivileged)."""
    return (selector & ~3) | max(selector & 3, 1)


class VcpuBlock:
    """The virtual-CPU pages that inline emulations read and only the monitor writes: the block
    (user-readable) and the privileged page (control registers, for `mov r, crN` at ring 0)."""

    def __init__(self, view, privileged_view) -> None:
        self.view = view
        self.privileged_view = privileged_view
        self._written: Optional[bytes] = None     # the block virtual_state_changed last wrote

    def control_register_changed(self, cpu: "TranslatedCpu", number: int) -> None:
        """Rewrite one control register in both pages (mov r, crN reads them); CR4 rewrites the
        block, whose rdtsc check depends on its TSD bit."""
        value = cpu.control[number]
        self._written = None
        if number == 4:
            self.virtual_state_changed(cpu)
            return
        struct.pack_into("<I", self.view, VCPU_CR[number], value)
        struct.pack_into("<I", self.privileged_view, VCPU_CR[number], value)

    def virtual_state_changed(self, cpu: "TranslatedCpu") -> None:
        """Rewrite the whole block from the virtual CPU: one pack of its 80 bytes, stored only
        when they differ from what it holds (a privilege change asks twice, and most segment
        loads change nothing in it)."""
        selectors, control, virtual_flags = cpu.selectors, cpu.control, cpu.virtual_flags
        gdt_base, gdt_limit = cpu.tables["gdtr"]
        idt_base, idt_limit = cpu.tables["idtr"]
        data = _BLOCK.pack(selectors["cs"], selectors["ss"], selectors["ds"], selectors["es"], selectors["fs"],
                           selectors["gs"], (virtual_flags - cpu.real_iopl) & 0xFFFFFFFF, virtual_flags,
                           gdt_limit, gdt_base, 0, idt_limit, idt_base, 0,
                           cpu.table_selectors["ldtr"], cpu.table_selectors["tr"],
                           control[0], control[2], control[3], control[4],
                           int(cpu.cpl > (virtual_flags & IOPL_MASK) >> 12),
                           int(cpu.cpl > 0 and bool(control[4] & CR4_TSD)))
        if data == self._written:
            return
        self._written = data
        self.view[:_BLOCK.size] = data
        self.privileged_view[VCPU_CR[0]:VCPU_CR[4] + 4] = data[VCPU_CR[0]:VCPU_CR[4] + 4]


# The block's fields in their order (translator/layout.py): the six selectors, pushf's adjustment,
# popf's expectation, GDTR and IDTR as sgdt stores them, LDTR and TR, CR0 CR2 CR3 CR4, the I/O check,
# the rdtsc check. tests/test_exit_cost.py checks it against the layout's offsets, field by field.
_BLOCK = struct.Struct("<8I HIH HIH 2I 4I 2I")


# The registers TranslatedCpu keeps itself, and how (a control register by its number).
_VIRTUAL_REGISTERS = {"eip": "eip", "eflags": "eflags", **{name: "selector" for name in SEGMENT_NAMES},
                      **{f"cr{n}": n for n in VCPU_CR}}


class TranslatedCpu(VirtualSystemCpu):
    """Guest registers under binary translation: general registers and the arithmetic flags are
    the engine's; EIP, IOPL, TF, selectors, descriptor-table and control registers are virtual."""

    loads_guest_descriptors = False     # the engine loads shadows, the accessed bit preset

    def __init__(self, mode: "BinaryTranslationMode", block: VcpuBlock) -> None:
        super().__init__(mode.engine, tuple(VCPU_CR))
        self.mode = mode        # shadow descriptors, guest paging, native runs
        self.block = block
        engine = mode.engine
        self.eip = engine.reg("eip")
        self.selectors = {name: engine.reg(name) for name in SEGMENT_NAMES}
        self.virtual_flags = engine.reg("eflags") & (IOPL_MASK | TF)
        self.bases = {"ds": 0, "es": 0, "ss": 0, "cs": 0}     # the boot GDT's segments are flat
        # The descriptor each data and stack segment register was last loaded from (load_segment):
        # a reload of the same selector from the same bytes changes nothing anywhere.
        self._loaded_from: dict[str, tuple[int, bytes]] = {}
        self.efer = 0           # the guest's EFER: the engine's holds the monitor's long mode
        self.kernel_gs_base = 0

    @property
    def segment_bases(self) -> tuple[int, int, int]:
        """DS, ES and SS bases: 64-bit host code ignores them, so translations add them."""
        return self.bases["ds"], self.bases["es"], self.bases["ss"]

    @property
    def code_base(self) -> int:
        """The CS base: guest code runs at linear code_base + EIP (translated code runs on the
        monitor's own 64-bit CS, so the blocks are keyed by it)."""
        return self.bases["cs"]

    def read_msr(self, number: int) -> int:
        if number == MSR_EFER:
            return self.efer
        if number == MSR_KERNEL_GS_BASE:
            return self.kernel_gs_base
        return super().read_msr(number)

    def write_msr(self, number: int, value: int) -> None:
        """The MSRs of the engine's long mode are the guest's only as a 32-bit CPU has them. EFER
        is virtual: the engine runs translated code in long mode (LME, LMA, NXE), which a guest
        write would end (and a read showed); the guest keeps the bits the engine's own CPU takes
        from a 32-bit guest under direct (SCE, LME, NXE; LMA is never set here). The FS and GS
        bases take the low 32 bits only: a 32-bit CPU forms 32-bit linear addresses, as direct
        does with the same write, while the engine adds a 64-bit base to translated code's
        accesses, and a base above 4 GiB reached the monitor (docs/isolation.md). The kernel GS
        base (swapgs, which a 32-bit guest cannot run) stays virtual."""
        if number == MSR_EFER:
            self.efer = value & GUEST_EFER_BITS
        elif number in (MSR_FS_BASE, MSR_GS_BASE):
            super().write_msr(number, value & 0xFFFFFFFF)
        elif number == MSR_KERNEL_GS_BASE:
            self.kernel_gs_base = value
        else:
            super().write_msr(number, value)

    def segment_base(self, name: str) -> int:
        """The guest's base. In long mode the engine keeps no CS/DS/ES/SS base (it loads only
        FS's and GS's), so those four are the ones noted at each load."""
        if name in self.bases:
            return self.bases[name]
        return self.engine.segment_base(name)

    def _note_base(self, name: str, raw: Optional[bytes]) -> None:
        if name in self.bases:
            base = SegmentDescriptor.decode(raw).base if raw is not None else 0
            if base != self.bases[name]:
                self.bases[name] = base
                self.mode.segment_bases_changed()

    def reg(self, name: str) -> int:
        kind = _VIRTUAL_REGISTERS.get(name)
        if kind is None:                      # a general register: the engine's (most reads)
            return self.engine.reg(name)
        if kind == "eip":
            return self.eip
        if kind == "eflags":
            return (self.engine.reg("eflags") & ~(IOPL_MASK | TF)) | self.virtual_flags
        if kind == "selector":
            return self.selectors[name]
        return self.control[kind]

    def set_reg(self, name: str, value: int) -> None:
        value &= 0xFFFFFFFF
        if name == "eip":
            self.eip = value
        elif name == "eflags":
            changed = (value & (IOPL_MASK | TF)) != self.virtual_flags
            self.virtual_flags = value & (IOPL_MASK | TF)
            self.engine.set_reg("eflags", (value & ~(IOPL_MASK | TF)) | self.real_iopl)
            if changed:
                self.block.virtual_state_changed(self)
        elif name in self.selectors:
            raise ValueError("segment registers change through load_segment")
        elif name.startswith("cr"):
            number = int(name[2:])
            old, self.control[number] = self.control[number], value
            self.block.control_register_changed(self, number)
            if number != 2:
                self.mode.control_register_written(number, old)
        else:
            self.engine.set_reg(name, value)

    def load_segment(self, name: str, selector: int, raw: Optional[bytes]) -> None:
        """Load a segment register whose checks the emulator has done. A reload of the selector
        the register holds, from the descriptor bytes it was loaded from, leaves the engine's
        register, the base and the virtual-CPU block as they are (Linux reloads DS, ES and FS on
        every kernel entry and exit, mostly with what they hold: 125,000 loads in its boot)."""
        selector &= 0xFFFF
        if raw is not None and name != "cs" and self._loaded_from.get(name) == (selector, raw):
            return
        if name == "cs":
            if not SegmentDescriptor.decode(raw).big:
                raise UnsupportedInstruction("a 16-bit code segment, under binary translation")
        elif raw is not None:
            self.mode.refresh_shadow(selector, raw)
            self.engine.set_reg(name, _real_selector(selector))
        else:
            self.engine.set_reg(name, 0)
        if name != "cs":
            self._loaded_from[name] = (selector, raw)
        self._note_base(name, raw)
        self.selectors[name] = selector
        self.block.virtual_state_changed(self)

    def change_privilege(self, cs: int, cs_raw: bytes, ss: int, ss_raw: bytes, esp: int) -> None:
        """An interrupt from ring 3 or a return to it: the engine moves between CPL 1 (guest
        ring 0) and CPL 3 (guest ring 3) over the shadows of the new CS and SS, and the real
        IOPL follows the new ring (translator/layout.py, real_iopl)."""
        cpl = cs & 3
        if cpl not in (0, 3):
            raise UnsupportedInstruction(f"guest ring {cpl}: only rings 0 and 3 run under binary translation")
        if not SegmentDescriptor.decode(cs_raw).big:
            raise UnsupportedInstruction("a 16-bit code segment, under binary translation")
        eflags = self.reg("eflags")
        self.mode.refresh_shadow(cs, cs_raw)
        self.mode.refresh_shadow(ss, ss_raw)
        self.selectors["cs"], self.selectors["ss"] = cs & 0xFFFF, ss & 0xFFFF
        self._loaded_from["ss"] = (ss & 0xFFFF, ss_raw)
        self.engine.set_privilege(real_privilege(cpl), _real_selector(ss), code_selector(cpl))
        self._note_base("ss", ss_raw)
        self._note_base("cs", cs_raw)
        self.engine.set_reg("esp", esp)
        self.set_reg("eflags", eflags)          # the real IOPL of the new ring
        self.block.virtual_state_changed(self)

    @property
    def real_iopl(self) -> int:
        return real_iopl(self.cpl, self.virtual_flags)

    def set_table_register(self, name: str, base: int, limit: int) -> None:
        super().set_table_register(name, base, limit)
        if name == "gdtr":
            self.mode.rebuild_shadow_gdt()
        self.block.virtual_state_changed(self)

    def set_table_selector(self, name: str, selector: int, raw: Optional[bytes] = None) -> None:
        if name == "ldtr":
            self.mode.load_shadow_ldt(selector, raw)
        super().set_table_selector(name, selector, raw)
        self.block.virtual_state_changed(self)

    @property
    def cpl(self) -> int:
        return self.selectors["cs"] & 3

    def invalidate_page(self, linear: int) -> None:
        self.mode.invalidate_page(linear)
