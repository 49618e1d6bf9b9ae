"""The HPET at 0xFED00000 as QEMU 7.2's hw/timer/hpet.c models it for the pc machine: three timers, 100 MHz (period 10^7 fs), 64-bit main counter on guest time, legacy replacement routing, comparators one-shot, periodic and 32-bit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

HPET_BASE = 0xFED00000
HPET_SIZE = 0x400
NUM_TIMERS = 3
PERIOD_NS = 10                              # one tick: 10^7 fs
# Capabilities and ID: vendor 0x8086, legacy replacement capable, 64-bit counter, 3 timers
# (NUM_TIM_CAP 2), revision 1; the period in fs in the high half.
HPET_EVENT_TIMER_BLOCK_ID = 0x8086A001 | (NUM_TIMERS - 1) << 8
CAPABILITIES = HPET_EVENT_TIMER_BLOCK_ID | (PERIOD_NS * 10 ** 6) << 32
# The I/O APIC inputs a timer may be routed to: QEMU's pc (i440FX) gives intcap 0x4, GSI 2 only.
INT_ROUTE_CAP = 0x4

REG_ID, REG_PERIOD, REG_CFG, REG_STATUS, REG_COUNTER = 0x000, 0x004, 0x010, 0x020, 0x0F0
TIMER_BASE, TIMER_STRIDE, TIMER_END = 0x100, 0x20, 0x400
TN_CFG, TN_CMP, TN_ROUTE = 0x00, 0x08, 0x10

CFG_ENABLE, CFG_LEGACY = 0x1, 0x2
CFG_WRITE_MASK = 0x3
TN_TYPE_LEVEL, TN_ENABLE, TN_PERIODIC = 0x002, 0x004, 0x008
TN_PERIODIC_CAP, TN_SIZE_CAP, TN_SETVAL, TN_32BIT = 0x010, 0x020, 0x040, 0x100
TN_INT_ROUTE_SHIFT, TN_INT_ROUTE_MASK = 9, 0x3E00
TN_FSB_ENABLE = 0x4000
TN_CFG_WRITE_MASK = 0x7F4E
RTC_IRQ = 8
MASK32, MASK64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF


@dataclass
class HpetTimer:
    number: int
    config: int = 0
    cmp: int = MASK64
    fsb: int = 0
    period: int = 0
    wrap: bool = False              # a 32-bit one-shot's next expiry is the counter's wrap
    expires_ns: Optional[int] = None  # QEMU's qemu_timer, on the virtual clock (None: not armed)

    def reset(self) -> None:
        self.config = TN_PERIODIC_CAP | TN_SIZE_CAP | INT_ROUTE_CAP << 32
        self.cmp, self.period, self.wrap, self.expires_ns = MASK64, 0, False, None


class Hpet:
    """QEMU's HPET register for register. Only 4-byte accesses reach the registers (others read 0
    and are dropped: QEMU's valid access size). `now_ns()` is guest time; `set_gsi(gsi, level)`
    drives an interrupt input (QEMU's gsi[]: PIC and I/O APIC). In legacy replacement mode timer
    0 drives IRQ0 and timer 1 IRQ8, and the PIT's and RTC's own outputs are cut off
    (`legacy`; the platform asks before passing theirs on)."""

    name = "hpet"

    def __init__(self, now_ns: Callable[[], int],
                 set_gsi: Callable[[int, bool], None] = lambda gsi, level: None) -> None:
        self.now_ns, self.set_gsi = now_ns, set_gsi
        # QEMU keeps 32 timer slots and checks `id > num_timers`: the registers of a fourth timer
        # answer (all zero, never reset) as on QEMU, the others read 0.
        self.timers = [HpetTimer(i, cmp=0) for i in range(NUM_TIMERS + 1)]
        for timer in self.timers[:NUM_TIMERS]:
            timer.reset()
        self.config = 0
        self.isr = 0
        self.counter = 0                # the main counter while halted
        self.offset_ns = 0              # counter = (now + offset) / 10 ns while enabled
        self.last_read = 0              # the main counter as last read (reads never repeat it)
        self.rtc_level = False          # the RTC's IRQ line, passed on outside legacy mode
        self.rtc_irq: Callable[[bool], None] = lambda level: None

    # -- time -----------------------------------------------------------------------------------------
    @property
    def enabled(self) -> bool:
        return bool(self.config & CFG_ENABLE)

    @property
    def legacy(self) -> bool:
        return bool(self.config & CFG_LEGACY)

    def ticks(self) -> int:
        return ((self.now_ns() + self.offset_ns) // PERIOD_NS) & MASK64

    def main_counter(self) -> int:
        return self.ticks() if self.enabled else self.counter

    def _read_counter(self) -> int:
        """The running counter as a read sees it: at least one tick (10 ns) past the last read.
        Guest time is retired instructions, which a run that has not been counted yet (time
        came into use inside it) does not see move; on QEMU and on the hardware a read takes
        longer than a tick, so two reads never agree (kvm-unit-tests' hpet_read_test times a
        stretch without an exit by two reads)."""
        if not self.enabled:
            return self.counter
        value = max(self.ticks(), (self.last_read + 1) & MASK64)
        self.last_read = value
        return value

    def reads_clock(self, offset: int) -> bool:
        return offset in (REG_COUNTER, REG_COUNTER + 4) and self.enabled

    def _diff(self, timer: HpetTimer, current: int) -> int:
        """QEMU's hpet_calculate_diff: ticks to the comparator, at least 1."""
        if timer.config & TN_32BIT:
            diff = (timer.cmp - current) & MASK32
            return diff if 0 < diff < 1 << 31 else 1
        diff = (timer.cmp - current) & MASK64
        return diff if 0 < diff < 1 << 63 else 1

    def _set_timer(self, timer: HpetTimer) -> None:
        """QEMU's hpet_set_timer: arm at the comparator, or a 32-bit one-shot at the wrap first."""
        current = self.ticks()
        timer.wrap = False
        diff = self._diff(timer, current)
        if timer.config & TN_32BIT and not timer.config & TN_PERIODIC:
            wrap_diff = MASK32 - (current & MASK32)
            if wrap_diff < (diff & MASK32):
                diff, timer.wrap = wrap_diff, True
        timer.expires_ns = self.now_ns() + diff * PERIOD_NS

    def _del_timer(self, timer: HpetTimer) -> None:
        timer.expires_ns = None
        self._update_irq(timer, False)

    def _expire(self, timer: HpetTimer, now_ns: int) -> None:
        """QEMU's hpet_timer callback: a periodic timer moves its comparator past the count and
        re-arms; a 32-bit one-shot that stopped at the wrap re-arms for the comparator."""
        timer.expires_ns = None
        current = self.ticks()
        if timer.config & TN_PERIODIC and timer.period:
            # QEMU adds the period while the count is after the comparator (at once here). Its
            # callback runs after the deadline on a host-timed clock; on guest time it runs at
            # the very tick, count equal to the comparator, which QEMU would leave there and
            # fire again a tick later: equal counts as reached.
            bits = 32 if timer.config & TN_32BIT else 64
            mask = (1 << bits) - 1
            behind = (current - timer.cmp) & mask
            if behind < 1 << (bits - 1):
                timer.cmp = (timer.cmp + (behind // timer.period + 1) * timer.period) & mask
            timer.expires_ns = now_ns + self._diff(timer, current) * PERIOD_NS
        elif timer.config & TN_32BIT and not timer.config & TN_PERIODIC and timer.wrap:
            timer.expires_ns = now_ns + self._diff(timer, current) * PERIOD_NS
            timer.wrap = False
        self._update_irq(timer, True)

    def next_event_ns(self) -> Optional[int]:
        due = [timer.expires_ns for timer in self.timers if timer.expires_ns is not None]
        return min(due) if due else None

    def advance(self, now_ns: int) -> None:
        for timer in self.timers:
            if timer.expires_ns is not None and timer.expires_ns <= now_ns:
                self._expire(timer, now_ns)

    # -- interrupts -------------------------------------------------------------------------------------
    def _route(self, timer: HpetTimer) -> int:
        if timer.number <= 1 and self.legacy:
            return 0 if timer.number == 0 else RTC_IRQ
        return (timer.config & TN_INT_ROUTE_MASK) >> TN_INT_ROUTE_SHIFT

    def _update_irq(self, timer: HpetTimer, raise_it: bool) -> None:
        """QEMU's update_irq: level-triggered timers hold their line and status bit; edge-
        triggered ones pulse it. FSB (MSI) delivery is not offered (no FSB capability)."""
        route, mask = self._route(timer), 1 << timer.number
        if not raise_it or not timer.config & TN_ENABLE or not self.enabled:
            self.isr &= ~mask
            if not timer.config & TN_FSB_ENABLE:
                self.set_gsi(route, False)
        elif timer.config & TN_FSB_ENABLE:
            pass                        # no FSB capability: QEMU would write an MSI here
        elif timer.config & TN_TYPE_LEVEL:
            self.isr |= mask
            self.set_gsi(route, True)
        else:
            self.isr &= ~mask
            self.set_gsi(route, True)
            self.set_gsi(route, False)

    def rtc_input(self, level: bool) -> None:
        """The RTC's IRQ line goes through the HPET (QEMU's hpet_handle_legacy_irq)."""
        self.rtc_level = level
        if not self.legacy:
            self.rtc_irq(level)

    # -- registers ------------------------------------------------------------------------------------
    def _timer_at(self, offset: int) -> Optional[HpetTimer]:
        number = (offset - TIMER_BASE) // TIMER_STRIDE
        return self.timers[number] if number < len(self.timers) else None

    def _read(self, offset: int) -> int:
        if TIMER_BASE <= offset < TIMER_END:
            timer = self._timer_at(offset)
            if timer is None:
                return 0
            register = (offset - TIMER_BASE) % TIMER_STRIDE
            value = {TN_CFG: timer.config, TN_CMP: timer.cmp, TN_ROUTE: timer.fsb}.get(register & ~4)
            if value is None:
                return 0
            return (value >> 32 if register & 4 else value) & MASK32
        if offset == REG_ID:
            return CAPABILITIES & MASK32
        if offset == REG_PERIOD:
            return CAPABILITIES >> 32
        if offset == REG_CFG:
            return self.config & MASK32
        if offset in (REG_COUNTER, REG_COUNTER + 4):
            return (self._read_counter() >> (32 if offset & 4 else 0)) & MASK32
        if offset == REG_STATUS:
            return self.isr & MASK32
        return 0

    def io_read(self, offset: int, size: int) -> int:
        return self._read(offset) if size == 4 and offset < HPET_SIZE else 0

    def io_write(self, offset: int, size: int, value: int) -> None:
        if size != 4 or offset >= HPET_SIZE:
            return
        old = self._read(offset) if offset not in (REG_COUNTER, REG_COUNTER + 4) else 0   # (no read side effect)
        if TIMER_BASE <= offset < TIMER_END:
            timer = self._timer_at(offset)
            if timer is not None:
                self._write_timer(timer, (offset - TIMER_BASE) % TIMER_STRIDE, old, value)
            return
        if offset == REG_CFG:
            self._write_config(old, value)
        elif offset == REG_STATUS:
            cleared = value & self.isr
            for timer in self.timers[:NUM_TIMERS]:
                if cleared & (1 << timer.number):
                    self._update_irq(timer, False)
        elif offset == REG_COUNTER:
            self.counter = (self.counter & ~MASK32) | value
        elif offset == REG_COUNTER + 4:
            self.counter = (self.counter & MASK32) | value << 32

    def _write_timer(self, timer: HpetTimer, register: int, old: int, new: int) -> None:
        if register == TN_CFG:
            if not old & TN_FSB_ENABLE and new & TN_FSB_ENABLE:
                self._update_irq(timer, False)
            value = (new & TN_CFG_WRITE_MASK) | (old & ~TN_CFG_WRITE_MASK)
            timer.config = (timer.config & ~MASK32) | value
            if new & TN_32BIT:
                timer.cmp &= MASK32
                timer.period &= MASK32
            if not old & TN_ENABLE and new & TN_ENABLE and self.enabled:
                self._set_timer(timer)
            elif old & TN_ENABLE and not new & TN_ENABLE:
                self._del_timer(timer)
        elif register in (TN_CMP, TN_CMP + 4):
            high = register == TN_CMP + 4
            if not high and timer.config & TN_32BIT:
                new &= MASK32
            periodic = bool(timer.config & TN_PERIODIC)
            if not periodic or timer.config & TN_SETVAL:
                timer.cmp = (timer.cmp & MASK32) | new << 32 if high else (timer.cmp & ~MASK32) | new
            if periodic and not (high and timer.config & TN_SETVAL):
                # QEMU clamps the period to half the counter's range
                new &= (MASK32 if timer.config & TN_32BIT else MASK64) >> 1
                timer.period = (timer.period & MASK32) | new << 32 if high else (timer.period & ~MASK32) | new
            timer.config &= ~TN_SETVAL
            if self.enabled:
                self._set_timer(timer)
        elif register == TN_ROUTE:
            timer.fsb = (timer.fsb & ~MASK32) | new
        elif register == TN_ROUTE + 4:
            timer.fsb = (timer.fsb & MASK32) | new << 32

    def _write_config(self, old: int, new: int) -> None:
        value = (new & CFG_WRITE_MASK) | (old & ~CFG_WRITE_MASK)
        self.config = (self.config & ~MASK32) | value
        if not old & CFG_ENABLE and new & CFG_ENABLE:
            self.offset_ns = self.counter * PERIOD_NS - self.now_ns()
            self.last_read = (self.counter - 1) & MASK64      # reads go on from the counter
            for timer in self.timers[:NUM_TIMERS]:
                if timer.cmp != MASK64:
                    self._set_timer(timer)
        elif old & CFG_ENABLE and not new & CFG_ENABLE:
            self.counter = max(self.ticks(), self.last_read)
            for timer in self.timers[:NUM_TIMERS]:
                self._del_timer(timer)
        if not old & CFG_LEGACY and new & CFG_LEGACY:
            # the PIT's output is cut off (the platform asks `legacy`), IRQ0 and IRQ8 dropped
            self.set_gsi(0, False)
            self.set_gsi(RTC_IRQ, False)
        elif old & CFG_LEGACY and not new & CFG_LEGACY:
            self.set_gsi(0, False)
            self.set_gsi(RTC_IRQ, self.rtc_level)

    def state(self) -> dict:
        return {"config": self.config, "isr": self.isr, "counter": self.main_counter(),
                "timers": [{"config": t.config, "comparator": t.cmp, "fsb": t.fsb, "period": t.period,
                            "expires_ns": t.expires_ns} for t in self.timers[:NUM_TIMERS]]}
