"""The CMOS RTC (MC146818 at 0x70/0x71) as QEMU's hw/rtc/mc146818rtc.c models it, on guest cycles."""

from __future__ import annotations

import calendar
import time
from typing import Callable, Optional

RTC_BASE = 0x70             # 0x70 index (bit 7: NMI mask, ignored as QEMU ignores it), 0x71 data
RTC_PORTS = 2
RTC_IRQ = 8                 # the slave PIC's input 0

SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = 0, 1, 2, 3, 4, 5
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32
IBM_PS2_CENTURY = 0x37
TIME_REGISTERS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)

REG_A_UIP = 0x80
REG_A_DV_MASK = 0x70        # divider: 0x20 = 32.768 kHz time base running; 0x60/0x70 = reset
REG_A_DV_NORMAL = 0x20
REG_B_SET, REG_B_PIE, REG_B_AIE, REG_B_UIE = 0x80, 0x40, 0x20, 0x10
REG_B_DM, REG_B_24H = 0x04, 0x02
REG_C_IRQF, REG_C_PF, REG_C_AF, REG_C_UF = 0x80, 0x40, 0x20, 0x10
REG_C_MASK = 0x70
REG_D_VRT = 0x80
ALARM_DONT_CARE = 0xC0      # an alarm byte with both top bits set matches every value

BASE_HZ = 32768             # the time base the periodic rates divide
UIP_SECONDS = 244e-6        # UIP is set this long before each update (QEMU's UIP_HOLD_LENGTH)

# The virtual clock's wall time at cycle 0 (--clock virtual): a fixed date, so every run of a
# guest sees the same times. Saturday 1 January 2000, 00:00:00 UTC.
VIRTUAL_START_EPOCH = calendar.timegm((2000, 1, 1, 0, 0, 0))

MIB = 1 << 20


def memory_bytes(ram_size: int) -> dict[int, int]:
    """The CMOS bytes QEMU's pc_cmos_init and SeaBIOS leave for `ram_size` bytes below 4 GiB
    (measured under qemu-system-i386 7.2 at -m 32 and -m 128): base memory 640 KiB (0x15-0x16),
    extended memory in KiB above 1 MiB capped at 65535 (0x17-0x18 and again 0x30-0x31), memory
    above 16 MiB in 64 KiB units (0x34-0x35), above 4 GiB in 64 KiB units (0x5b-0x5d: none here,
    RAM ends below 4 GiB), and the other fixed bytes: equipment (0x14: FPU, PS/2 mouse, VGA),
    boot order (0x3d, 0x38), CPUs - 1 (0x5f)."""
    extended = min((ram_size >> 10) - 1024, 0xFFFF)
    above_16m = min(max(ram_size - 16 * MIB, 0) >> 16, 0xFFFF)
    return {
        0x10: 0x00, 0x14: 0x06, 0x15: 0x80, 0x16: 0x02,
        0x17: extended & 0xFF, 0x18: extended >> 8, 0x30: extended & 0xFF, 0x31: extended >> 8,
        0x34: above_16m & 0xFF, 0x35: above_16m >> 8,
        0x38: 0x30, 0x3D: 0x12, 0x5B: 0, 0x5C: 0, 0x5D: 0, 0x5F: 0,
    }


def _to_bcd(value: int) -> int:
    return ((value // 10) << 4) | (value % 10)


def _from_bcd(value: int) -> int:
    return ((value >> 4) & 0x0F) * 10 + (value & 0x0F)


class MC146818:
    """Guest time is `clock()` cycles at `hz` per second; wall time is `start_epoch` at cycle 0
    plus what the guest wrote since. The chip is brought up to date lazily: on every access and
    when the platform syncs it (`advance`), at which the update-ended, alarm and periodic
    flags of every boundary crossed are set; `next_event` is the next cycle at which an enabled
    interrupt is due, so the run loop bounds the guest's run there as it does for the PIT."""

    name = "rtc"
    access_width = 1

    def __init__(self, clock: Callable[[], int], hz: int, start_epoch: int, ram_size: int,
                 set_irq: Optional[Callable[[bool], None]] = None) -> None:
        self.clock, self.hz, self.set_irq = clock, hz, set_irq
        self.index = 0
        self.cmos = bytearray(128)
        for address, value in memory_bytes(ram_size).items():
            self.cmos[address] = value
        self.cmos[REG_A] = 0x26         # 32.768 kHz divider running, rate 6 (1024 Hz)
        self.cmos[REG_B] = REG_B_24H    # BCD, 24-hour, no interrupt enabled
        self.cmos[REG_D] = REG_D_VRT
        now = clock()
        self.base_epoch, self.base_cycles = start_epoch, now    # wall second base_epoch began at base_cycles
        self.frozen: Optional[int] = None       # the wall second while SET or the divider holds time
        self.period_start = now                 # the periodic rate's phase
        self.synced = now
        self.irq_level = False
        century = _to_bcd(time.gmtime(start_epoch).tm_year // 100)
        self.cmos[IBM_PS2_CENTURY] = century
        self._store_time(start_epoch)

    # -- time ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.frozen is None

    def _seconds(self, cycles: int) -> int:
        if self.frozen is not None:
            return self.frozen
        return self.base_epoch + (cycles - self.base_cycles) // self.hz

    def _period_ticks(self) -> int:
        """The periodic interrupt's period in 32.768 kHz ticks (0: none), as QEMU decodes rates
        1 and 2 (they are rates 8 and 9 at this time base)."""
        rate = self.cmos[REG_A] & 0x0F
        if rate == 0:
            return 0
        if rate <= 2:
            rate += 7
        return 1 << (rate - 1)

    def _periodic_on(self) -> bool:
        return bool(self.cmos[REG_B] & REG_B_PIE) and self._period_ticks() != 0 and \
            self.cmos[REG_A] & REG_A_DV_MASK == REG_A_DV_NORMAL

    def _tick32(self, cycles: int) -> int:
        return (cycles - self.period_start) * BASE_HZ // self.hz

    def _cycles_of_tick32(self, tick: int) -> int:
        return self.period_start + -(-tick * self.hz // BASE_HZ)

    def advance(self) -> None:
        """Bring the flags up to the clock: UF (and AF on an alarm match) for each second that
        ended, PF for each periodic tick; IRQF and the IRQ line where they are enabled."""
        now = self.clock()
        if now <= self.synced:
            return
        before, self.synced = self.synced, now
        flags = 0
        if self.running and not self.cmos[REG_B] & REG_B_SET:
            first, last = self._seconds(before), self._seconds(now)
            if last > first:
                flags |= REG_C_UF
                # Alarm: every second that ended is compared (at most a day of them: the alarm
                # repeats daily at the latest).
                for second in range(max(first + 1, last - 86400), last + 1):
                    if self._alarm_matches(second):
                        flags |= REG_C_AF
                        break
        if self._periodic_on():
            period = self._period_ticks()
            if self._tick32(now) // period > self._tick32(before) // period:
                flags |= REG_C_PF
        if flags:
            self.cmos[REG_C] |= flags
            self._update_irq()

    def next_event(self) -> Optional[int]:
        """The cycle at which the next enabled interrupt becomes due, or None."""
        now = self.clock()
        events = []
        enables = self.cmos[REG_B]
        if enables & (REG_B_UIE | REG_B_AIE) and self.running and not enables & REG_B_SET:
            events.append(self.base_cycles + ((now - self.base_cycles) // self.hz + 1) * self.hz)
        if self._periodic_on():
            period = self._period_ticks()
            events.append(self._cycles_of_tick32((self._tick32(now) // period + 1) * period))
        return min(events) if events else None

    def _alarm_matches(self, second: int) -> bool:
        t = time.gmtime(second)
        for register, value in ((SECONDS_ALARM, t.tm_sec), (MINUTES_ALARM, t.tm_min), (HOURS_ALARM, t.tm_hour)):
            alarm = self.cmos[register]
            if alarm & ALARM_DONT_CARE == ALARM_DONT_CARE:
                continue
            if register == HOURS_ALARM:
                if self._decode_hours(alarm) != value:
                    return False
            elif self._decode(alarm) != value:
                return False
        return True

    # -- register encoding (BCD or binary, 12 or 24 hours: register B) -------------------------
    def _encode(self, value: int) -> int:
        return value if self.cmos[REG_B] & REG_B_DM else _to_bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[REG_B] & REG_B_DM else _from_bcd(value)

    def _encode_hours(self, hour: int) -> int:
        if self.cmos[REG_B] & REG_B_24H:
            return self._encode(hour)
        twelve = hour % 12 or 12
        return self._encode(twelve) | (0x80 if hour >= 12 else 0)

    def _decode_hours(self, value: int) -> int:
        if self.cmos[REG_B] & REG_B_24H:
            return self._decode(value & 0x7F)
        hour = self._decode(value & 0x7F) % 12
        return hour + 12 if value & 0x80 else hour

    def _store_time(self, second: int) -> None:
        t = time.gmtime(second)
        self.cmos[SECONDS] = self._encode(t.tm_sec)
        self.cmos[MINUTES] = self._encode(t.tm_min)
        self.cmos[HOURS] = self._encode_hours(t.tm_hour)
        self.cmos[DAY_OF_WEEK] = self._encode((t.tm_wday + 1) % 7 + 1)     # 1 = Sunday
        self.cmos[DAY_OF_MONTH] = self._encode(t.tm_mday)
        self.cmos[MONTH] = self._encode(t.tm_mon)
        self.cmos[YEAR] = self._encode(t.tm_year % 100)
        self.cmos[CENTURY] = self._encode(t.tm_year // 100)

    def _registers_time(self) -> int:
        """The wall second the time registers hold (what the guest wrote), as QEMU's rtc_set_time."""
        year = self._decode(self.cmos[YEAR]) + self._decode(self.cmos[CENTURY]) * 100
        fields = (year, self._decode(self.cmos[MONTH]), self._decode(self.cmos[DAY_OF_MONTH]),
                  self._decode_hours(self.cmos[HOURS]), self._decode(self.cmos[MINUTES]),
                  self._decode(self.cmos[SECONDS]))
        try:
            return calendar.timegm(fields + (0, 0, 0))
        except (ValueError, OverflowError):
            return self._seconds(self.clock())     # nonsense written: the clock keeps its time

    def _set_time(self, now: int) -> None:
        """The registers become the time, keeping the phase within the second (QEMU's offset)."""
        phase = (now - self.base_cycles) % self.hz if self.running else 0
        self.base_epoch, self.base_cycles = self._registers_time(), now - phase

    # -- guest side ----------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF            # the index register is write-only (QEMU reads 0xff)
        self.advance()
        index = self.index
        if index in TIME_REGISTERS and not self.cmos[REG_B] & REG_B_SET:
            self._store_time(self._seconds(self.clock()))
        if index == REG_A:
            value = self.cmos[REG_A] & ~REG_A_UIP
            return value | (REG_A_UIP if self._update_in_progress() else 0)
        if index == REG_C:
            value = self.cmos[REG_C]
            self.cmos[REG_C] = 0
            self._update_irq()
            return value
        return self.cmos[index]

    def _update_in_progress(self) -> bool:
        if not self.running or self.cmos[REG_B] & REG_B_SET:
            return False
        into_second = (self.clock() - self.base_cycles) % self.hz
        return into_second >= self.hz - int(UIP_SECONDS * self.hz)

    def io_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F
            return
        self.advance()
        now, index = self.clock(), self.index
        if index in TIME_REGISTERS:
            if not self.cmos[REG_B] & REG_B_SET:
                self._store_time(self._seconds(now))
            self.cmos[index] = value
            if self.running and not self.cmos[REG_B] & REG_B_SET:
                self._set_time(now)
            elif not self.running:
                self.frozen = self._registers_time()
        elif index == REG_A:
            self._write_a(value, now)
        elif index == REG_B:
            self._write_b(value, now)
        elif index in (REG_C, REG_D):
            pass                   # read-only
        else:
            self.cmos[index] = value

    def _write_a(self, value: int, now: int) -> None:
        old = self.cmos[REG_A]
        self.cmos[REG_A] = value & ~REG_A_UIP
        holding = value & REG_A_DV_MASK in (0x60, 0x70)
        if holding and self.running:
            self.frozen = self._seconds(now)            # divider reset: time stops
        elif not holding and not self.running and not self.cmos[REG_B] & REG_B_SET:
            # Divider released: the first update comes half a second later (datasheet, QEMU).
            self.base_epoch, self.base_cycles = self.frozen, now - self.hz // 2
            self.frozen = None
        if (old ^ value) & 0x0F or holding:
            self.period_start = now

    def _write_b(self, value: int, now: int) -> None:
        old = self.cmos[REG_B]
        if value & REG_B_SET:
            if not old & REG_B_SET:
                self._store_time(self._seconds(now))    # the registers hold the time it stopped at
                if self.running:
                    self.frozen = self._seconds(now)
            value &= ~REG_B_UIE
        elif old & REG_B_SET:
            self.frozen = None if self.cmos[REG_A] & REG_A_DV_MASK == REG_A_DV_NORMAL else self.frozen
            self.cmos[REG_B] = value                # decode what was written in the new format
            if self.running:
                self.base_epoch, self.base_cycles = self._registers_time(), now
            else:
                self.frozen = self._registers_time()
        if not old & REG_B_PIE and value & REG_B_PIE:
            self.period_start = now
        # An interrupt flag already set when its enable comes on raises IRQF at once, and one
        # whose enable goes off drops it (QEMU).
        self.cmos[REG_B] = value
        self._update_irq()

    def _update_irq(self) -> None:
        if self.cmos[REG_C] & self.cmos[REG_B] & REG_C_MASK:
            self.cmos[REG_C] |= REG_C_IRQF
        else:
            self.cmos[REG_C] &= ~REG_C_IRQF
        level = bool(self.cmos[REG_C] & REG_C_IRQF)
        if level != self.irq_level:
            self.irq_level = level
            if self.set_irq:
                self.set_irq(level)

    def state(self) -> dict:
        return {"index": self.index, "cmos": bytes(self.cmos).hex(), "base_epoch": self.base_epoch,
                "base_cycles": self.base_cycles, "frozen": self.frozen, "period_start": self.period_start,
                "synced": self.synced, "irq": self.irq_level}
