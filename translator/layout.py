"""Where translated code finds the monitor's data: offsets in the virtual-CPU block (read-only to
the engine), the scratch page (spill slots), and the shape of the lookup table."""

from __future__ import annotations

from dataclasses import dataclass

from capstone import x86_const as X

# Virtual-CPU block: guest-visible values the inline emulations read. The monitor writes it
# through its host buffer; the engine maps it read-only, so guest stores cannot reach it.
VCPU_SELECTOR = {X.X86_REG_CS: 0x00, X.X86_REG_SS: 0x04, X.X86_REG_DS: 0x08,
                 X.X86_REG_ES: 0x0C, X.X86_REG_FS: 0x10, X.X86_REG_GS: 0x14}
VCPU_PUSHF_ADJUST = 0x18   # added by pushf to the real EFLAGS image: virtual (IOPL|TF) - real IOPL
VCPU_POPF_EXPECT = 0x1C    # the IOPL|TF bits a popf may carry without a callout (the current ones)
VCPU_GDTR = 0x20           # limit (2 bytes) then base (4 bytes), as sgdt stores it
VCPU_IDTR = 0x28
VCPU_LDTR = 0x30           # selector, zero-extended
VCPU_TR = 0x34
VCPU_CR = {0: 0x38, 2: 0x3C, 3: 0x40, 4: 0x44}

# Scratch page (read/write for the engine): values spilled by emitted sequences. Every slot is
# dead at each guest instruction boundary, so nothing the guest could write there matters.
SCRATCH_SPILL = 0x00       # + 4 * register number (eax=0 ... edi=7)
SCRATCH_JUMP = 0x20        # indirect jump target of a lookup hit
SCRATCH_BUDGET = 0x24      # guest instructions left (only with --max-insns)
SCRATCH_STACK_TOP = 0x1000 # the monitor's entry stub uses the top of the page as its stack

LOOKUP_ENTRIES = 1 << 16   # direct mapped by the low 16 bits of the guest address
LOOKUP_ENTRY_SIZE = 8      # guest address (tag), translated address
LOOKUP_TABLE_SIZE = LOOKUP_ENTRIES * LOOKUP_ENTRY_SIZE

REAL_IOPL = 0x1000         # translated code runs at CPL 1 with IOPL 1: cli/sti/popf.IF work natively
IOPL_MASK = 0x3000
TF = 0x100


@dataclass(frozen=True)
class MonitorAddresses:
    """Engine addresses of the areas translated code refers to."""
    vcpu: int
    scratch: int
    lookup_table: int
