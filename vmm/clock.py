"""Guest time: a virtual clock that counts retired guest instructions (deterministic), or the host's
clock (--clock realtime). Devices and rdtsc read it; the execution modes advance it."""

from __future__ import annotations

import time
from typing import Callable, Optional

from vmm.devices.i8254 import PIT_FREQ

# The virtual CPU retires one instruction per cycle at 84 cycles per PIT input tick: a 100.2 MHz
# machine. Integer so that ticks and cycles convert exactly.
CYCLES_PER_PIT_TICK = 84
CPU_HZ = PIT_FREQ * CYCLES_PER_PIT_TICK
CLOCKS = ("virtual", "realtime")


class VirtualClock:
    """`cycles` is guest time. Under the virtual clock it moves only by `retire` (instructions the
    modes report as executed) and `skip_to` (an idle CPU jumping to its next event), so a guest
    sees the same times on every run. Under the realtime clock it follows the host's monotonic
    clock from the start of the run, and never runs behind what was retired or skipped."""

    def __init__(self, kind: str = "virtual") -> None:
        if kind not in CLOCKS:
            raise ValueError(f"unknown clock {kind!r}")
        self.realtime = kind == "realtime"
        self._cycles = 0
        self._started = time.perf_counter()
        self.idle_cycles = 0          # skipped by hlt
        # The instructions the engine run going on has executed and not retired yet, from its
        # mode (ExecutionMode.instructions_in_flight; None: no counted run).
        self.in_flight: Callable[[], Optional[int]] = lambda: None

    @property
    def cycles(self) -> int:
        if self.realtime:
            self._cycles = max(self._cycles, int((time.perf_counter() - self._started) * CPU_HZ))
        return self._cycles

    def now(self) -> int:
        """Guest time as an instruction inside a run sees it: what was retired, plus what the
        run going on has executed (under the virtual clock; the realtime clock is the host's)."""
        cycles = self.cycles
        if not self.realtime:
            cycles += self.in_flight() or 0
        return cycles

    @property
    def pit_ticks(self) -> int:
        return self.cycles // CYCLES_PER_PIT_TICK

    def retire(self, instructions: int) -> None:
        if not self.realtime:
            self._cycles += instructions

    def skip_to(self, cycles: int) -> None:
        """Idle until `cycles` (hlt): instantly under the virtual clock, sleeping under realtime."""
        now = self.cycles
        if cycles <= now:
            return
        if self.realtime:
            time.sleep((cycles - now) / CPU_HZ)
        self.idle_cycles += cycles - now
        self._cycles = max(self._cycles, cycles)
