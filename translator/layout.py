"""Where translated code finds the monitor's data: offsets in the virtual-CPU block (read-only to
the engine), the scratch page, and the shape of the lookup table. Translated code reaches all of
it through r15, which holds the monitor's base (docs/isolation.md): guest code cannot name r15."""

from __future__ import annotations

from dataclasses import dataclass

from capstone import x86_const as X

from translator.x86arch import IOPL_MASK

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
VCPU_IO_CHECK = 0x48       # 0 while the guest's CPL <= IOPL (its port I/O needs no check), else 1
VCPU_TSC_CHECK = 0x4C      # 1 while rdtsc faults (CR4.TSD outside ring 0): inline rdtsc takes its callout
# The same control-register offsets in the PRIVILEGED virtual-CPU page, which the monitor's page
# tables map supervisor-only: `mov r, crN` reads it, so at guest CPL 3 (real CPL 3) the read
# faults and becomes the guest's #GP, with no check in the translated code. smsw, which any
# ring may run, reads CR0 from the ordinary block above.

# Scratch page (read/write for translated code, out of every guest instruction's reach): emitted
# sequences keep their temporaries in r8-r11, not here.
# The budget is a signed 64-bit count that each block's prologue decrements: guest instructions
# left in its low half (at most 0x7FFFFFFF), 0 above them. The monitor ends a run from another
# thread by writing WAKE_HIGH into the high half (SCRATCH_WAKE): the count turns negative, and
# the next prologue takes the budget exit, the low half (what the accounting reads) untouched.
SCRATCH_BUDGET = 0x24      # guest instructions left (when counting), the low half
SCRATCH_WAKE = 0x28        # the high half: 0, or WAKE_HIGH to end the run at the next block entry
SCRATCH_IO_SITE = 0x2C     # the guest address of the I/O instruction running (for its I/O hook)
# Inline rdtsc (virtual clock, budget counting): the guest's TSC at an instruction is
# SCRATCH_TSC_BASE - (budget left) - (instructions of its block after it), since the prologue
# charges the whole block at entry. The monitor keeps the base at clock + given + adjust
# (vmm/modes/bt/budget.py); SCRATCH_TSC_VALUE is where the sequence splits it into edx:eax.
SCRATCH_TSC_BASE = 0x30
SCRATCH_TSC_VALUE = 0x38
WAKE_HIGH = 0xC0000000     # stays negative however many times the low half borrows
SCRATCH_STACK_TOP = 0x1000 # a small stack of the monitor's (pushfq/popfq, the native stubs)

LOOKUP_ENTRIES = 1 << 16   # direct mapped by the low 16 bits of the guest address
LOOKUP_ENTRY_SIZE = 8      # guest address (tag), translated address
LOOKUP_TABLE_SIZE = LOOKUP_ENTRIES * LOOKUP_ENTRY_SIZE

REAL_IOPL = 0x1000         # guest ring 0 runs at CPL 1 with IOPL 1: cli/sti/popf.IF work natively


def real_privilege(guest_cpl: int) -> int:
    """The CPL translated code runs at: guest ring 0 deprivileged to 1, guest ring 3 at 3."""
    return 1 if guest_cpl == 0 else 3


def real_iopl(guest_cpl: int, guest_iopl_bits: int) -> int:
    """The real EFLAGS.IOPL bits for translated code. Ring 0: IOPL 1 (= CPL, so cli/sti/popf
    change the virtual IF natively). Ring 3: the guest's IOPL where it is 3 (cli/sti allowed),
    else 0, so that cli/sti fault natively and popf silently keeps IF, as on the bare machine."""
    if guest_cpl == 0:
        return REAL_IOPL
    return IOPL_MASK if guest_iopl_bits & IOPL_MASK == IOPL_MASK else 0


@dataclass(frozen=True)
class MonitorAddresses:
    """Offsets from the monitor's base (r15) of the areas translated code refers to."""
    vcpu: int
    scratch: int
    lookup_table: int
    vcpu_privileged: int = 0     # the supervisor-only page with the control registers
