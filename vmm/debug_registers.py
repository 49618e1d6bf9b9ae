"""The guest's debug registers (DR0-DR3, DR6, DR7), kept by the monitor in every mode (the engine never sees them: Unicorn 2.1.1 crashes on its own hardware breakpoints), and the breakpoints they arm, with QEMU 7.2's semantics (target/i386/tcg/sysemu/bpt_helper.c)."""

from __future__ import annotations

from typing import Callable, NamedTuple

from vmm.guest_view import GuestFault
from vmm.x86 import CR4_DE, DR6_BS, DR6_FIXED, DR7_FIXED, DR7_LOCAL_ENABLES, UD

# DR7's R/W field of each breakpoint (SDM vol. 3, 17.2.4)
EXECUTE, WRITE, IO, ACCESS = 0, 1, 2, 3
BREAKPOINTS = 4


class DataBreakpoint(NamedTuple):
    """An enabled data breakpoint: DRn's linear address and length (QEMU does not align it to
    the length, as the CPU would), and whether only writes hit it (R/W 01; 11: reads too)."""
    index: int
    address: int
    length: int
    writes_only: bool


class DebugRegisters:
    """DR0-DR7 as the guest sees them (DR4 and DR5 are DR6 and DR7, or #UD under CR4.DE), and
    what they arm: the enabled instruction breakpoints (linear addresses) and data breakpoints.
    The modes implement them (code hooks, memory hooks, blocks that end in front of one) and hear
    of a change in what is armed through `listeners` (not on every write: kvm-unit-tests' vmexit
    writes DR7 millions of times with nothing enabled).

    As QEMU: DR7.GD (general detect) is kept and read back but raises nothing; I/O breakpoints
    (R/W 10) are not modelled (QEMU's helper_bpt_io): they never hit."""

    def __init__(self) -> None:
        self.dr = [0, 0, 0, 0, 0, 0, DR6_FIXED, DR7_FIXED]
        self.listeners: list[Callable[[], None]] = []
        self.instruction_breakpoints: frozenset = frozenset()
        self.data_breakpoints: tuple = ()

    # -- mov r32, drN / mov drN, r32 (QEMU's helper_get_dr, helper_set_dr) ------------------------
    def read(self, number: int, cr4: int) -> int:
        return self.dr[self._alias(number, cr4)]

    def write(self, number: int, value: int, cr4: int) -> None:
        number = self._alias(number, cr4)
        value &= 0xFFFFFFFF
        self.dr[number] = value | (DR6_FIXED if number == 6 else DR7_FIXED if number == 7 else 0)
        if number != 6:
            self._rearm()

    @staticmethod
    def _alias(number: int, cr4: int) -> int:
        if number in (4, 5):
            if cr4 & CR4_DE:
                raise GuestFault(UD)
            return number + 2
        return number

    def task_switched(self) -> None:
        """A hardware task switch completed: DR7's local enables go (QEMU's switch_tss_ra)."""
        if self.dr[7] & DR7_LOCAL_ENABLES:
            self.dr[7] &= ~DR7_LOCAL_ENABLES
            self._rearm()

    # -- what DR7 enables -------------------------------------------------------------------------
    def _kind(self, index: int) -> int:
        return (self.dr[7] >> (16 + 4 * index)) & 3

    def _length(self, index: int) -> int:
        length = (self.dr[7] >> (18 + 4 * index)) & 3
        return 8 if length == 2 else length + 1

    def enabled(self, index: int) -> bool:
        """Whether DR7's local or global enable bit of breakpoint `index` is set."""
        return bool((self.dr[7] >> (2 * index)) & 3)

    def _rearm(self) -> None:
        instructions = frozenset(self.dr[i] for i in range(BREAKPOINTS)
                                 if self.enabled(i) and self._kind(i) == EXECUTE)
        data = tuple(DataBreakpoint(i, self.dr[i], self._length(i), self._kind(i) == WRITE)
                     for i in range(BREAKPOINTS) if self.enabled(i) and self._kind(i) in (WRITE, ACCESS))
        if (instructions, data) != (self.instruction_breakpoints, self.data_breakpoints):
            self.instruction_breakpoints, self.data_breakpoints = instructions, data
            for listener in self.listeners:
                listener()

    # -- DR6 as #DB finds it (QEMU's check_hw_breakpoints) -----------------------------------------
    def _matches(self, eip: int) -> int:
        """B0-B3 for every instruction breakpoint at `eip`, enabled or not (QEMU compares DRn
        with EIP, not with the linear address its breakpoints are inserted at)."""
        return sum(1 << i for i in range(BREAKPOINTS) if self._kind(i) == EXECUTE and self.dr[i] == eip)

    def instruction_breakpoint(self, eip: int) -> None:
        """#DB in front of the instruction at `eip`, an enabled breakpoint's: B0-B3 say which
        breakpoints are there (a disabled one too, measured on QEMU), the rest of DR6 stays."""
        self.dr[6] = (self.dr[6] & ~0xF) | self._matches(eip)

    def data_breakpoint(self, hits: int, eip: int) -> None:
        """#DB after an instruction that hit data breakpoints `hits`; `eip` is the next one."""
        self.dr[6] = (self.dr[6] & ~0xF) | self._matches(eip) | hits

    def single_step(self, eip: int, hits: int = 0) -> None:
        """#DB after a single-stepped instruction (EFLAGS.TF; `eip` is the next one): BS set
        (QEMU's helper_single_step), and B0-B3 as a breakpoint #DB sets them."""
        self.dr[6] = (self.dr[6] & ~0xF) | self._matches(eip) | hits | DR6_BS
