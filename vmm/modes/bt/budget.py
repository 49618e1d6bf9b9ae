"""The instruction budget of binary translation: the counter in the scratch page that each block's
prologue charges, what a run was given, the instructions retired beyond what the counter says, and
the arithmetic of the budget exit (an instruction limit, a timer event or host input at a block's
entry)."""

from __future__ import annotations

import struct
from typing import Callable, Optional, Union

from translator.layout import SCRATCH_BUDGET, SCRATCH_TSC_BASE, SCRATCH_WAKE, WAKE_HIGH
from vmm.exits import ExitReason, VmExit

BUDGET_MAX = 0x7FFFFFFF                  # the budget counter is compared as a signed number


class InstructionBudget:
    """Counts the guest instructions translated code retires. Blocks carry a budget prologue only
    while `enabled` (an instruction limit, or a guest that uses time: then from that moment on);
    the prologue charges a whole block at its entry, so a block that stops early is uncharged the
    rest here, and a one-shot (no prologue) is charged here. Inline rdtsc reads the clock from
    what the counter says: the scratch page keeps its base (clock + given + adjust) current."""

    def __init__(self, scratch_view, limits, enabled: bool, cache, in_one_shot: Callable[[int], bool],
                 stop_engine: Callable[[], None], input_pending: Callable[[], bool],
                 cycles: Callable[[], int] = lambda: 0) -> None:
        self.scratch_view = scratch_view
        self.limits = limits
        self.enabled = enabled
        self.cache = cache                    # block_at: which block a host address is in
        self.in_one_shot = in_one_shot        # whether a host address is in the one-shot slot
        self.stop_engine = stop_engine
        self.input_pending = input_pending    # host input waits for the run loop (RunContext)
        self.start_pending = False            # counting began: flush the cache before the next run
        self.given = 0                        # what the counter started the run at
        self.adjust = 0                       # instructions retired beyond what the counter says
        self.cycles = cycles                  # the virtual clock, which moves only between runs
        self._clock_at_start = 0

    def start_counting(self) -> None:
        """The guest began to use time: from the next run on, blocks count their instructions.
        Called from a port hook or a callout; the cache is flushed between runs, never under
        the code that is running."""
        if not self.enabled:
            self.enabled = True
            self.start_pending = True
            self.stop_engine()

    def take_start(self) -> bool:
        """Whether counting began since the last run (once)."""
        pending, self.start_pending = self.start_pending, False
        return pending

    def begin_run(self, bound: Optional[int]) -> None:
        """The counter starts at what the run loop allows (at most BUDGET_MAX); its high half
        asks for the run to end at once if host input still waits for the run loop."""
        given = BUDGET_MAX if bound is None else min(bound, BUDGET_MAX)
        struct.pack_into("<II", self.scratch_view, SCRATCH_BUDGET, given, WAKE_HIGH if self.input_pending() else 0)
        self.given, self.adjust = given, 0
        self._clock_at_start = self.cycles()
        self._publish_clock_base()

    def _publish_clock_base(self) -> None:
        """What inline rdtsc subtracts the counter from (translator/layout.py): rewritten each
        time `given` or `adjust` moves, so that clock + retired() is what it computes."""
        struct.pack_into("<q", self.scratch_view, SCRATCH_TSC_BASE, self._clock_at_start + self.given + self.adjust)

    def wake(self) -> None:
        """From another thread (host input): the next block entry takes the budget exit. Only
        the high half is written (one aligned 4-byte store): the low half, the count that
        translated code charges as it runs, is never the waker's. A prologue's read-modify-
        write may put back the old high half over it: the waker repeats (vmm/input_wake.py)."""
        struct.pack_into("<I", self.scratch_view, SCRATCH_WAKE, WAKE_HIGH)

    def end_at_next_block(self) -> None:
        """End the run at the next block's entry (an EVENT), from inside the running block (an
        MMIO access that raised an interrupt): the counter drops to 0, and what it had left is
        taken off what the run was given, so the count of what retired stays exact. Only the low
        half is written: a wake in the high half stays (the next prologue's borrow makes the
        whole count negative either way)."""
        if self.enabled:
            left = self._left()
            if left > 0:
                struct.pack_into("<i", self.scratch_view, SCRATCH_BUDGET, 0)
                self.given -= left
                self._publish_clock_base()

    def retired(self) -> int:
        """The instructions retired since begin_run."""
        return self.given - self._left() + self.adjust

    def _left(self) -> int:
        return struct.unpack_from("<i", self.scratch_view, SCRATCH_BUDGET)[0]

    def charge_one_shot(self) -> None:
        """One guest instruction run alone outside the cache (no prologue charged it)."""
        self.adjust += 1
        self._publish_clock_base()

    def uncharge_rest_of_block(self, host_eip: int, guest_eip: int) -> None:
        """The block at `host_eip` was charged in full at its entry; it stopped at `guest_eip`
        (an instruction that did not complete), so the rest did not retire."""
        block = self.cache.block_at(host_eip)
        if block is not None:
            self.adjust -= sum(1 for i in block.guest.instructions if i.address >= guest_eip)
        elif self.in_one_shot(host_eip):
            self.adjust -= 1
        self._publish_clock_base()

    def block_exit(self, block) -> Union[VmExit, int]:
        """A block's prologue found fewer instructions left than the block holds, or the wake
        (the budget's high half set: host input waits). An instruction limit stops before the block (never past the limit), and so
        does host input; a timer event lets the block run first when some budget is left (so
        every run makes progress: events land at most one block late, on the same instruction
        every run). Returns the VmExit, or the host address
        of the block's body to run it past the budget."""
        length = len(block.guest.instructions)
        left_before = self._left() + length
        limit = self.limits.remaining_instructions()
        limit_reached = limit is not None and limit - (self.given - left_before) < length
        if limit_reached or left_before <= 0 or self.input_pending():
            self.adjust -= length              # the prologue charged a block that does not run
            self._publish_clock_base()
            if limit_reached:
                self.limits.used_all_instructions()
                return VmExit(ExitReason.INSTRUCTION_LIMIT, eip=block.key.eip)
            return VmExit(ExitReason.EVENT, eip=block.key.eip)
        # Run the block past the budget, then stop at the next block: the counter restarts at 0
        # and the block's overshoot is counted here.
        struct.pack_into("<i", self.scratch_view, SCRATCH_BUDGET, 0)
        self.adjust += length - left_before
        self._publish_clock_base()
        return block.host + block.translation.body
