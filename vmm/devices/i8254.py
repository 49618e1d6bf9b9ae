"""The i8254 PIT as QEMU's hw/timer/i8254.c models it, on a virtual clock of integer PIT ticks."""

from __future__ import annotations

from typing import Callable, Optional

PIT_BASE = 0x40             # ports 0x40-0x43: channel 0-2 counters, then the control word
PIT_PORTS = 4
PIT_IRQ = 0
PIT_FREQ = 1193182          # input clock, Hz: one tick of the model's time base
CONTROL = 3

# Control word fields
CW_CHANNEL_SHIFT = 6
CW_READ_BACK = 3            # channel field 3 selects the read-back command
CW_ACCESS_SHIFT = 4
CW_MODE_SHIFT = 1
CW_BCD = 0x01
RB_NO_COUNT = 0x20          # read-back: bit clear = latch the count,
RB_NO_STATUS = 0x10         #            bit clear = latch the status
STATUS_OUT = 0x80

# Access modes (control word bits 5-4); also the read/write state machine's states
ACCESS_LATCH, RW_STATE_LSB, RW_STATE_MSB, RW_STATE_WORD0, RW_STATE_WORD1 = range(5)

MODE_INTERRUPT_ON_TERMINAL_COUNT, MODE_ONE_SHOT, MODE_RATE_GENERATOR = 0, 1, 2
MODE_SQUARE_WAVE, MODE_SOFTWARE_STROBE, MODE_HARDWARE_STROBE = 3, 4, 5
PERIODIC_MODES = (MODE_RATE_GENERATOR, MODE_SQUARE_WAVE)

# advance() emits every IRQ0 transition, except that an advance spanning more than this many
# periods skips whole periods in the middle: nobody acknowledges during one advance, so an
# edge-triggered PIC sees those pulses as one request anyway.
MAX_EMITTED_PERIODS = 1024


class PitChannel:
    """One counter. Time is in PIT ticks; the count runs from `count_load_time`."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.count = 0x10000
        self.count_load_time = 0
        self.latched_count = 0
        self.count_latched = 0          # 0 or the access mode the latch is read out in
        self.status_latched = False
        self.status = 0
        self.read_state = 0
        self.write_state = 0
        self.write_latch = 0
        self.rw_mode = 0
        self.mode = MODE_SQUARE_WAVE    # as programmed (0-7)
        self.bcd = 0                    # stored and reported; counting is always binary
        self.gate = index != 2

    def reset(self, now: int) -> None:
        self.mode = MODE_SQUARE_WAVE
        self.gate = self.index != 2
        self.count_load_time = now
        self.count = 0x10000

    @property
    def effective_mode(self) -> int:
        """Modes 6 and 7 are modes 2 and 3 (the 8254's 'X10' / 'X11' encodings)."""
        return self.mode - 4 if self.mode >= 6 else self.mode

    def get_count(self, now: int) -> int:
        """The counting element's value (QEMU pit_get_count)."""
        d = now - self.count_load_time
        mode = self.effective_mode
        if mode == MODE_SQUARE_WAVE:
            return self.count - ((2 * d) % self.count)    # QEMU: "may be incorrect for odd counts"
        if mode == MODE_RATE_GENERATOR:
            return self.count - (d % self.count)
        return (self.count - d) & 0xFFFF

    def get_out(self, now: int) -> bool:
        """The OUT pin (QEMU pit_get_out): mode 2 is high for the one tick the count wraps."""
        d = now - self.count_load_time
        mode = self.effective_mode
        if mode == MODE_INTERRUPT_ON_TERMINAL_COUNT:
            return d >= self.count
        if mode == MODE_ONE_SHOT:
            return d < self.count
        if mode == MODE_RATE_GENERATOR:
            return d != 0 and d % self.count == 0
        if mode == MODE_SQUARE_WAVE:
            return d % self.count < (self.count + 1) >> 1
        return d == self.count                              # modes 4 and 5

    def next_transition(self, now: int) -> Optional[int]:
        """The first time after `now` at which OUT changes, or None if it never will.
        QEMU's pit_get_next_transition_time in exact ticks (QEMU's +1 fudges its ns rounding)."""
        d = now - self.count_load_time
        count = self.count
        mode = self.effective_mode
        if mode in (MODE_INTERRUPT_ON_TERMINAL_COUNT, MODE_ONE_SHOT):
            at = count if d < count else None
        elif mode == MODE_RATE_GENERATOR:
            if count == 1:                   # high from the first tick on
                at = 1 if d < 1 else None
            elif d != 0 and d % count == 0:  # high now: falls a tick later
                at = d + 1
            else:
                at = (d // count + 1) * count
        elif mode == MODE_SQUARE_WAVE:
            if count == 1:                   # (count + 1) >> 1 == count: always high
                return None
            base = d - d % count
            half = (count + 1) >> 1
            at = base + half if d - base < half else base + count
        else:
            at = count if d < count else (count + 1 if d == count else None)
        return None if at is None else self.count_load_time + at

    def latch_count(self, now: int) -> None:
        if not self.count_latched:           # a second latch before the read changes nothing
            self.latched_count = self.get_count(now) & 0xFFFF
            self.count_latched = self.rw_mode

    def latch_status(self, now: int) -> None:
        if not self.status_latched:          # QEMU leaves the null count bit (6) clear
            self.status = ((STATUS_OUT if self.get_out(now) else 0) | (self.rw_mode << 4)
                           | (self.mode << 1) | self.bcd)
            self.status_latched = True


class I8254:
    """Three channels; channel 0's OUT drives `irq` (called with the new level on each change).
    The model never reads a clock: `advance(ticks)` moves its virtual time `now` forward and
    fires the IRQ0 transitions on the way; `next_event(now)` says how far the next rising edge is."""

    name = "pit"
    access_width = 1        # byte registers

    def __init__(self, irq: Optional[Callable[[bool], None]] = None) -> None:
        self.irq = irq
        self.irq_level = False
        self.now = 0
        self.channels = [PitChannel(i) for i in range(3)]
        self.reset()

    def reset(self) -> None:
        """QEMU pit_reset_common: mode 3, count 0x10000 (18.2 Hz), gate high except channel 2."""
        for channel in self.channels:
            channel.reset(self.now)

    # -- virtual time -----------------------------------------------------------------------------
    def advance(self, ticks: int) -> None:
        """Let `ticks` PIT input clocks pass, raising and lowering IRQ0 at the exact ticks."""
        if ticks < 0:
            raise ValueError("the PIT's virtual time cannot go backwards")
        target = self.now + ticks
        channel = self.channels[0]
        while True:
            if (channel.effective_mode in PERIODIC_MODES
                    and target - self.now > MAX_EMITTED_PERIODS * channel.count):
                periods = (target - self.now) // channel.count - MAX_EMITTED_PERIODS
                self.now += periods * channel.count        # same phase, pulses collapsed
            at = channel.next_transition(self.now)
            if at is None or at > target:
                break
            self.now = at
            self._set_irq(channel.get_out(at))
        self.now = target

    def next_event(self, now: Optional[int] = None) -> Optional[int]:
        """Ticks from `now` (default: the PIT's own `now`) to the next rising edge of IRQ0, always
        >= 1, so `advance(next_event())` ends exactly on the edge; None if no edge is coming."""
        if now is None:
            now = self.now
        channel = self.channels[0]
        level = self.irq_level if now == self.now else channel.get_out(now)
        at = now
        for _ in range(4):                   # at most a fall before the rise
            at = channel.next_transition(at)
            if at is None:
                return None
            out = channel.get_out(at)
            if out and not level:
                return at - now
            level = out
        return None

    def next_change(self) -> Optional[int]:
        """Ticks from `now` to channel 0's next OUT transition, rising or falling (None: never):
        until then `advance` moves nothing but `now`."""
        at = self.channels[0].next_transition(self.now)
        return None if at is None else at - self.now

    def channel_out(self, index: int) -> bool:
        """OUT of a channel now (channel 2's feeds port 0x61 bit 5)."""
        return self.channels[index].get_out(self.now)

    def set_gate(self, index: int, level: bool) -> None:
        """GATE input (QEMU pit_set_channel_gate): a rising edge restarts modes 1, 2, 3 and 5;
        a low gate does not stop counting (QEMU's 'XXX')."""
        channel = self.channels[index]
        restarts = channel.effective_mode not in (MODE_INTERRUPT_ON_TERMINAL_COUNT,
                                                  MODE_SOFTWARE_STROBE)
        if restarts and not channel.gate and level:
            channel.count_load_time = self.now
            self._update_channel(channel)
        channel.gate = bool(level)

    def _set_irq(self, level: bool) -> None:
        if level != self.irq_level:
            self.irq_level = level
            if self.irq:
                self.irq(level)

    def _update_channel(self, channel: PitChannel) -> None:
        if channel.index == 0:
            self._set_irq(channel.get_out(self.now))

    def _load_count(self, channel: PitChannel, value: int) -> None:
        channel.count = value or 0x10000
        channel.count_load_time = self.now
        self._update_channel(channel)       # mode 3 raises OUT at once; modes 0 and 2 lower it

    # -- guest side -------------------------------------------------------------------------------
    def io_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == CONTROL:
            self._write_control(value)
            return
        channel = self.channels[offset]
        state = channel.write_state
        if state == RW_STATE_MSB:
            self._load_count(channel, value << 8)
        elif state == RW_STATE_WORD0:
            channel.write_latch = value
            channel.write_state = RW_STATE_WORD1
        elif state == RW_STATE_WORD1:
            self._load_count(channel, channel.write_latch | (value << 8))
            channel.write_state = RW_STATE_WORD0
        else:                                # RW_STATE_LSB (and the never-programmed state 0)
            self._load_count(channel, value)

    def _write_control(self, value: int) -> None:
        select = value >> CW_CHANNEL_SHIFT
        if select == CW_READ_BACK:
            for index, channel in enumerate(self.channels):
                if value & (2 << index):
                    if not value & RB_NO_COUNT:
                        channel.latch_count(self.now)
                    if not value & RB_NO_STATUS:
                        channel.latch_status(self.now)
            return
        channel = self.channels[select]
        access = (value >> CW_ACCESS_SHIFT) & 3
        if access == ACCESS_LATCH:
            channel.latch_count(self.now)
            return
        channel.rw_mode = channel.read_state = channel.write_state = access
        channel.mode = (value >> CW_MODE_SHIFT) & 7
        channel.bcd = value & CW_BCD
        # As in QEMU the counter keeps running until the next count is written.

    @staticmethod
    def reads_clock(offset: int) -> bool:
        """A counter's read gives its count now (InterruptPlatform.reads_clock)."""
        return offset != CONTROL

    def io_read(self, offset: int, size: int) -> int:
        if offset == CONTROL:
            return 0                         # the control word is write-only
        channel = self.channels[offset]
        if channel.status_latched:
            channel.status_latched = False
            return channel.status
        if channel.count_latched:
            if channel.count_latched == RW_STATE_MSB:
                channel.count_latched = 0
                return channel.latched_count >> 8
            if channel.count_latched == RW_STATE_WORD0:
                channel.count_latched = RW_STATE_MSB
                return channel.latched_count & 0xFF
            channel.count_latched = 0
            return channel.latched_count & 0xFF
        count = channel.get_count(self.now)
        state = channel.read_state
        if state == RW_STATE_MSB:
            return (count >> 8) & 0xFF
        if state == RW_STATE_WORD0:
            channel.read_state = RW_STATE_WORD1
            return count & 0xFF
        if state == RW_STATE_WORD1:
            channel.read_state = RW_STATE_WORD0
            return (count >> 8) & 0xFF
        return count & 0xFF
