"""The platform's interrupt sources as the CPU sees them: the i8259 pair on the INTR line, the i8254
on IRQ0, both on the virtual clock; plus the boot state QEMU's firmware leaves them in."""

from __future__ import annotations

from typing import Optional

from vmm.clock import CYCLES_PER_PIT_TICK, VirtualClock
from vmm.devices.i8254 import PIT_BASE, PIT_IRQ, PIT_PORTS, I8254
from vmm.devices.i8259 import MASTER_BASE, PIC_PORTS, SLAVE_BASE, PicPair

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

    def cycles_to_next_event(self) -> Optional[int]:
        """Guest cycles until the next timer edge (>= 1), or None if none is coming or time is
        not in use."""
        if not self.in_use:
            return None
        self.sync()
        ticks = self.pit.next_event()
        if ticks is None:
            return None
        return max(1, (self.pit.now + ticks) * CYCLES_PER_PIT_TICK - self.clock.cycles)

    def reprograms_timer(self, port: int) -> bool:
        """Whether an OUT to `port` reprograms the PIT: its next event may come sooner than the
        run's bound, so the run must end and be bounded anew."""
        return PIT_BASE <= port < PIT_BASE + PIT_PORTS

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
