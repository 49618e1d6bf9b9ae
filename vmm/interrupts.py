"""The platform's interrupt sources as the CPU sees them: the i8259 pair on the INTR line, the i8254
on IRQ0 and the RTC on IRQ8, all on the virtual clock, and the devices fed by host input (a UART
that interrupts on receive), whose input wakes the run; plus the boot state QEMU's firmware leaves
them in."""

from __future__ import annotations

from typing import Callable, Optional

from vmm.clock import CYCLES_PER_PIT_TICK, VirtualClock
from vmm.devices.i8254 import PIT_BASE, PIT_IRQ, PIT_PORTS, I8254
from vmm.devices.i8259 import MASTER_BASE, PIC_PORTS, SLAVE_BASE, PicPair
from vmm.devices.mc146818 import RTC_BASE, RTC_PORTS

# What SeaBIOS leaves at the Multiboot entry under QEMU 7.2 (measured with a probe guest):
# master vectors 0x08-0x0F with IRQ0, 1, 2 and 6 unmasked, slave vectors 0x70-0x77, PIT channel 0
# in mode 2 with the full count (65536: 18.2 Hz), lo/hi access (read-back status 0x34).
BOOT_PIC = ((MASTER_BASE, 0x08, 0x04, 0xB8), (SLAVE_BASE, 0x70, 0x02, 0x8E))   # base, ICW2, ICW3, IMR
BOOT_PIT_CONTROL = 0x34


class _ClockedPorts:
    """A timer or interrupt-controller chip on the bus: brings the platform up to the current
    time before every access, and notes that the guest now depends on time."""

    def __init__(self, device, platform: "InterruptPlatform") -> None:
        self.device, self.platform = device, platform
        self.name = device.name
        self.access_width = getattr(device, "access_width", 4)

    def io_read(self, offset: int, size: int) -> int:
        self.platform.guest_uses_time()
        return self.device.io_read(offset, size)

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.platform.guest_uses_time()
        self.device.io_write(offset, size, value)
        self.platform.reprogrammed = True       # the next event may have moved


class InterruptPlatform:
    """PIC pair + PIT on one clock. Time is observable once the guest touches either chip or
    reads the TSC (`in_use`); until then no timer interrupt is raised, and the execution modes
    run without counting instructions (what an idle PIT costs nobody)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.pic = PicPair()
        self.pit = I8254(irq=lambda level: self.pic.set_irq(PIT_IRQ, level))
        self.in_use = False
        self.reprogrammed = False       # a chip was written since the run began
        self.on_first_use = []          # callbacks: a mode switching its instruction counting on
        self.rtc = None                 # vmm.devices.mc146818.MC146818, attached by the builder
        self.input_sources = []         # devices fed by host input: armed(), poll(), input_may_arrive(),
        # wait_input(timeout), on_input(callback)
        self._boot_state()

    def _boot_state(self) -> None:
        for base, icw2, icw3, imr in BOOT_PIC:
            chip = self.pic.master if base == MASTER_BASE else self.pic.slave
            for offset, value in ((0, 0x11), (1, icw2), (1, icw3), (1, 0x01), (1, imr)):
                chip.io_write(offset, 1, value)
        self.pit.io_write(3, 1, BOOT_PIT_CONTROL)
        self.pit.io_write(0, 1, 0)
        self.pit.io_write(0, 1, 0)

    def register(self, bus) -> None:
        bus.register(MASTER_BASE, PIC_PORTS, _ClockedPorts(self.pic.master, self))
        bus.register(SLAVE_BASE, PIC_PORTS, _ClockedPorts(self.pic.slave, self))
        bus.register(PIT_BASE, PIT_PORTS, _ClockedPorts(self.pit, self))

    def attach_rtc(self, rtc, bus) -> None:
        self.rtc = rtc
        bus.register(RTC_BASE, RTC_PORTS, _ClockedPorts(rtc, self))

    def device_irq(self, irq: int):
        """The IRQ line a device drives (an edge from an I/O access or from host input): the
        next interrupt window must see it, so the run that caused it ends after the access
        (`reprogrammed`), and an interrupt source makes time observable like the chips do."""
        def set_level(level: bool) -> None:
            self.pic.set_irq(irq, level)
            if level:
                self.reprogrammed = True
                if not self.in_use:
                    self.guest_uses_time()
        return set_level

    def other_timer_armed(self) -> bool:
        """Whether a timer besides the PIT will raise an interrupt (the RTC's enabled ones)."""
        return self.rtc is not None and self.rtc.next_event() is not None

    def _armed_inputs(self) -> list:
        return [source for source in self.input_sources if source.armed()]

    def watch_input(self, wake: Callable[[], None]) -> None:
        """Call `wake` (from the thread that received it) when host input arrives for a source
        that is armed while time is in use: the running guest's engine run must end so that the
        next sync polls the source (vmm/input_wake.py). Before time is in use the guest has not
        touched the PIC, which keeps IRQ 3 and 4 masked as the firmware left them: the input
        waits for the guest's next look at the UART."""
        for source in self.input_sources:
            source.on_input(lambda source=source: wake() if self.in_use and source.armed() else None)

    def wait_for_input(self, stop_due) -> bool:
        """The CPU idles (hlt, IF set) with nothing but host input to wake it: wait for input to
        reach an armed device, polling; False at once if none is armed or no input can come
        any more, or when `stop_due()` (the watchdog's time limit or Ctrl-C) turns true."""
        while True:
            sources = [source for source in self._armed_inputs() if source.input_may_arrive()]
            if not sources:
                return False
            for source in sources:
                source.poll()
            if self.pic.output:
                return True
            if stop_due():
                return False
            sources[0].wait_input(0.05)

    def guest_uses_time(self) -> None:
        if not self.in_use:
            self.in_use = True
            for callback in self.on_first_use:
                callback()
        self.sync()

    # -- time ----------------------------------------------------------------------------------
    def sync(self) -> None:
        """Bring the PIT to the clock's time, raising IRQ0 edges on the way."""
        ticks = self.clock.pit_ticks
        if ticks > self.pit.now:
            self.pit.advance(ticks - self.pit.now)
        if self.rtc is not None:
            self.rtc.advance()
        for source in self._armed_inputs():
            source.poll()

    def cycles_to_next_event(self) -> Optional[int]:
        """Guest cycles until the next timer edge (>= 1), or None if none is coming or time is
        not in use."""
        if not self.in_use:
            return None
        self.sync()
        now = self.clock.cycles
        events = []
        ticks = self.pit.next_event()
        if ticks is not None:
            events.append((self.pit.now + ticks) * CYCLES_PER_PIT_TICK - now)
        if self.rtc is not None and (due := self.rtc.next_event()) is not None:
            events.append(due - now)
        return max(1, min(events)) if events else None

    def reprograms_timer(self, port: int) -> bool:
        """Whether an OUT to `port` reprograms the PIT or the RTC: its next event may come sooner
        than the run's bound, so the run must end and be bounded anew."""
        return PIT_BASE <= port < PIT_BASE + PIT_PORTS or RTC_BASE <= port < RTC_BASE + RTC_PORTS

    # -- the INTR line -------------------------------------------------------------------------
    @property
    def intr_raised(self) -> bool:
        """INTR as the PIC pair drives it now (no clock sync: safe inside an I/O hook)."""
        return self.pic.output

    def pending(self) -> bool:
        """Whether INTR is raised (a vector would be acknowledged now)."""
        if self.in_use:
            self.sync()
        return self.pic.output

    def acknowledge(self) -> int:
        """The INTA cycle: the vector to deliver."""
        return self.pic.acknowledge()
