"""The platform's one interrupt-controller model as the CPU sees it: the i8259 pair's INTR through the
local APIC's LINT0, the APIC's own vectors by priority, the I/O APIC on the ISA lines; the i8254 on
IRQ0, the RTC on IRQ8, the APIC timer and the firmware's (HPET, ACPI PM timer), all on the virtual
clock, the devices with a deadline of their own on it (the UART's character timeout: they say when
it moves, `deadline_moved`, and the platform fires it), and the devices fed by host input (a UART
that interrupts on receive), whose input wakes the run; plus the boot state QEMU's firmware leaves
them in. `pending()` and `acknowledge()` are the one place that decides the next vector."""

from __future__ import annotations

from typing import Callable, Optional

from vmm.clock import CPU_HZ, CYCLES_PER_PIT_TICK, VirtualClock
from vmm.devices.apic import APIC_BASE, APIC_SIZE, LVT_LINT0, LocalApic
from vmm.devices.i8254 import PIT_BASE, PIT_IRQ, PIT_PORTS, I8254
from vmm.devices.i8259 import MASTER_BASE, PIC_PORTS, SLAVE_BASE, PicPair
from vmm.devices.ioapic import IOAPIC_BASE, IOAPIC_SIZE, IoApic, isa_pin
from vmm.devices.mc146818 import RTC_BASE, RTC_PORTS
from vmm.devices.pcspk import PORT_B, PcSpeaker
from vmm.x86 import MSR_APIC_BASE

# What SeaBIOS leaves at the Multiboot entry under QEMU 7.2 (measured with a probe guest):
# master vectors 0x08-0x0F with IRQ0, 1, 2 and 6 unmasked, slave vectors 0x70-0x77, PIT channel 0
# in mode 2 with the full count (65536: 18.2 Hz), lo/hi access (read-back status 0x34).
BOOT_PIC = ((MASTER_BASE, 0x08, 0x04, 0xB8), (SLAVE_BASE, 0x70, 0x02, 0x8E))   # base, ICW2, ICW3, IMR
BOOT_PIT_CONTROL = 0x34
NS_PER_SECOND = 10 ** 9
CPUID_EDX_APIC = 1 << 9


class _ClockedPorts:
    """A timer or interrupt-controller chip on the bus: brings the platform up to the current
    time before every access (the PIT's count too: `chip_access`), notes that the guest now
    depends on time, and after a write has the timers' next events worked out anew."""

    def __init__(self, device, platform: "InterruptPlatform") -> None:
        self.device, self.platform = device, platform
        self.name = device.name
        self.access_width = getattr(device, "access_width", 4)

    def io_read(self, offset: int, size: int) -> int:
        platform = self.platform
        platform.chip_access(self.device)
        value = self.device.io_read(offset, size)
        if platform.reads_clock(self.device, offset) and platform.clock.in_flight() is None:
            platform.clock_read_by_in = True      # the run loop ends the run after this IN
        return value

    def io_write(self, offset: int, size: int, value: int) -> None:
        platform = self.platform
        platform.chip_access(self.device)
        self.device.io_write(offset, size, value)
        platform.reprogrammed = True            # the next event may have moved
        platform.timers_written()


class _ClockedMmio:
    """The local or I/O APIC on the MMIO bus. Its accesses come from inside the engine, where the
    run cannot be stopped (a stop there makes the engine run the access again): the platform is
    brought up to date without telling the modes, and a write that raised INTR or moved the
    APIC timer's next event asks the mode to end the run as soon as it safely can (`end_run`)."""

    def __init__(self, device, platform: "InterruptPlatform") -> None:
        self.device, self.platform = device, platform
        self.name = device.name

    def io_read(self, offset: int, size: int) -> int:
        self.platform.mmio_uses_time()
        return self.device.io_read(offset, size)

    def io_write(self, offset: int, size: int, value: int) -> None:
        platform = self.platform
        platform.mmio_uses_time()
        armed = platform.armed_events()
        self.device.io_write(offset, size, value)
        platform.timers_written()
        if platform.intr_raised or platform.nmi_pending or platform.armed_events() != armed:
            platform.end_run()      # (an NMI even while blocked: the mode must watch for the IRET)


class InterruptPlatform:
    """The interrupt controllers and timers on one clock. Time is observable once the guest
    touches a chip (PIC, PIT, RTC, either APIC) or reads the TSC (`in_use`); until then no timer
    interrupt is raised, and the execution modes run without counting instructions (what an
    idle PIT costs nobody)."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.pic = PicPair()
        self.apic = LocalApic(self._now_ns)
        self.ioapic = IoApic(self.apic.deliver_irq, pic_read_irq=self.pic.acknowledge)
        self.apic.pic_output = lambda: self.pic.output
        self.apic.ioapic_eoi = self.ioapic.eoi
        self.apic.raise_nmi = self._raise_nmi
        # The CPU's NMI input (QEMU's CPU_INTERRUPT_NMI) and its NMI blocking, from an NMI's
        # delivery to the next IRET (HF2_NMI_MASK): NMIs come from the APIC (an NMI IPI, an LVT
        # entry or an I/O APIC entry in NMI mode).
        self.nmi_pending = False
        self.nmi_blocked = False
        self.pit = I8254(irq=self._pit_output)
        self.speaker = PcSpeaker(self.pit)      # port B: channel 2's gate and OUT
        self.hpet = None                # vmm.devices.hpet.Hpet: its legacy mode cuts the PIT off
        self.timers = []                # devices on guest nanoseconds: advance(ns), next_event_ns();
        # those whose deadline moves outside a chip write (the UARTs) say so: deadline_moved
        self._timer_ports = [(PIT_BASE, PIT_PORTS), (RTC_BASE, RTC_PORTS)]   # an OUT may move an event
        self.in_use = False
        self.reprogrammed = False       # a chip was written since the run began
        self.clock_read_by_in = False   # an IN read a free-running counter (reads_clock)
        self.on_first_use = []          # callbacks: a mode switching its instruction counting on
        self._first_use_pending = False  # time came into use inside an MMIO access: tell the modes
        # at the next sync, outside the engine
        self.end_run = lambda: None     # the mode's end_run_after_mmio (wired by the builder)
        self._pic_output = False        # the PIC's INT line as LINT0 last saw it (edges)
        self.rtc = None                 # vmm.devices.mc146818.MC146818, attached by the builder
        self.input_sources = []         # devices fed by host input: armed(), poll(), input_may_arrive(),
        # wait_input(timeout), on_input(callback)
        # The timers' schedule (`_schedule`), worked out when they were last brought to the clock:
        # the first cycle at which any of them changes a line or re-arms (`_due`: until then a
        # sync has nothing to do), and the cycle of the next interrupt event (`_next_event`,
        # None: none), which bounds the runs. A write to a chip makes both stale (`_due` 0).
        self._due = 0
        self._next_event: Optional[int] = None
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
        bus.register(PORT_B, 1, _ClockedPorts(self.speaker, self))

    def register_mmio(self, mmio) -> None:
        """The local APIC at 0xFEE00000 (QEMU's 1 MiB apic-msi region: it never moves with the
        APIC base MSR, as on QEMU) and the I/O APIC at 0xFEC00000 on the MMIO bus."""
        mmio.register(APIC_BASE, APIC_SIZE, _ClockedMmio(self.apic, self))
        mmio.register(IOAPIC_BASE, IOAPIC_SIZE, _ClockedMmio(self.ioapic, self))

    def set_isa_irq(self, irq: int, level: bool) -> None:
        """An ISA interrupt line, wired to the PIC pair and to the I/O APIC (QEMU's gsi_handler)."""
        self.pic.set_irq(irq, level)
        self.ioapic.set_irq(isa_pin(irq), level)

    def set_gsi(self, gsi: int, level: bool) -> None:
        """A global system interrupt (QEMU's gsi[]): 0-15 are the ISA lines, the others reach the
        I/O APIC alone (the HPET's routes)."""
        if gsi < 16:
            self.set_isa_irq(gsi, level)
        else:
            self.ioapic.set_irq(gsi, level)

    def _pit_output(self, level: bool) -> None:
        """The PIT's OUT0 on IRQ0, unless the HPET's legacy replacement routing has cut it off
        (QEMU's pit_enabled line)."""
        if self.hpet is None or not self.hpet.legacy:
            self.set_isa_irq(PIT_IRQ, level)

    def clocked_ports(self, device, base: int, count: int, bus, timer: bool = False) -> None:
        """A chip on the port bus whose accesses make time observable and sync the timers first
        (`timer`: an OUT to it may move its next event, so the run is bounded anew)."""
        bus.register(base, count, _ClockedPorts(device, self))
        if timer:
            self._timer_ports.append((base, count))

    def clocked_mmio(self, device, base: int, size: int, mmio) -> None:
        """A memory-mapped chip on guest time (the HPET), as the APICs are."""
        mmio.register(base, size, _ClockedMmio(device, self))

    def precise_now_ns(self) -> int:
        """Guest time as the instruction running sees it (VirtualClock.now: what the run going on
        executed included), for the free-running counters a guest times code with (the HPET's,
        the PM timer): with the time at the run's start, code timed between two reads in one
        run took no time, and a loop polling one saw it stand still until the run's bound."""
        return self.clock.now() * NS_PER_SECOND // CPU_HZ

    @staticmethod
    def reads_clock(device, offset: int) -> bool:
        """Whether this read was of a free-running counter (their `reads_clock`). In a run not
        counted (time came into use inside it) nothing says what ran: a PM timer read ends that
        run (`clock_read_by_in`, through the run loop) so that the next is counted; the HPET's
        reads never agree (vmm/devices/hpet.py)."""
        reads = getattr(device, "reads_clock", None)
        return reads is not None and reads(offset)

    def armed_events(self) -> tuple:
        """The APIC timer's and the other timers' next events: a write that changes one ends the run."""
        return (self.apic.next_time,) + tuple(timer.next_event_ns() for timer in self.timers)

    def attach_rtc(self, rtc, bus) -> None:
        self.rtc = rtc
        bus.register(RTC_BASE, RTC_PORTS, _ClockedPorts(rtc, self))

    def device_irq(self, irq: int):
        """The IRQ line a device drives (an edge from an I/O access or from host input): the
        next interrupt window must see it, so the run that caused it ends after the access
        (`reprogrammed`), and an interrupt source makes time observable like the chips do."""
        def set_level(level: bool) -> None:
            self.set_isa_irq(irq, level)
            if level:
                self.reprogrammed = True
                if not self.in_use:
                    self.guest_uses_time()
        return set_level

    def other_timer_armed(self) -> bool:
        """Whether a timer besides the PIT will raise an interrupt (the RTC's enabled ones, the
        APIC timer's unmasked LVT entry)."""
        return (self.rtc is not None and self.rtc.next_event() is not None) or self.apic.next_time is not None \
            or any(timer.next_event_ns() is not None for timer in self.timers)

    def _armed_inputs(self) -> list:
        return [source for source in self.input_sources if source.armed()]

    def poll_input(self) -> None:
        """Pull waiting host input into the armed sources (their IRQs rise): once in every
        interrupt window, after the run loop took the input wake's note (vmm/input_wake.py), and
        while hlt idles. Not at every sync: input is the host's, not guest time's, and between
        two windows its arrival ends the engine run (the wake) for the next window to poll."""
        for source in self.input_sources:
            if source.armed():
                source.poll()

    def watch_input(self, wake: Callable[[], None]) -> None:
        """Call `wake` (from the thread that received it) when host input arrives for a source
        that is armed while time is in use: the running guest's engine run must end so that the
        next interrupt window polls the source (vmm/input_wake.py). Before time is in use the
        guest has not touched the PIC, which keeps IRQ 3 and 4 masked as the firmware left them:
        the input waits for the guest's next look at the UART."""
        for source in self.input_sources:
            source.on_input(lambda source=source: wake() if self.in_use and source.armed() else None)

    def wait_for_input(self, stop_due) -> bool:
        """The CPU idles (hlt, IF set) with nothing but host input to wake it: wait for input to
        reach an armed device, polling; True once it raised INTR or set the device's deadline
        (bytes below the UART's FIFO trigger level: the character timeout is to come, and hlt
        idles on to it); False at once if none is armed or no input can come any more, or when
        `stop_due()` (the watchdog's time limit or Ctrl-C) turns true."""
        while True:
            sources = [source for source in self._armed_inputs() if source.input_may_arrive()]
            if not sources:
                return False
            for source in sources:
                source.poll()
            if self.intr_raised or any(source in self.timers and source.next_event_ns() is not None
                                       for source in sources):
                return True
            if stop_due():
                return False
            sources[0].wait_input(0.05)

    def guest_uses_time(self) -> None:
        if not self.in_use:
            self.in_use = True
            self._first_use_pending = True
        self.sync()

    def chip_access(self, device) -> None:
        """A chip's port is about to be read or written: time is in use, the timers are brought
        to the clock, and so is the PIT's count, which a sync leaves behind while no transition
        of its OUT is due (its ports and port B, channel 2's gate and OUT, are the only readers
        of it)."""
        self.guest_uses_time()
        if device is self.pit or device is self.speaker:
            # At the instruction's own time (VirtualClock.now), as QEMU reads its PIT: a guest
            # polling channel 2 in one run (Linux's PM-timer rate check and TSC calibration)
            # saw the count and OUT stand still until the run's bound, channel 0's next edge.
            ticks = self.clock.now() // CYCLES_PER_PIT_TICK
            if ticks > self.pit.now:
                self.pit.advance(ticks - self.pit.now)
                if ticks * CYCLES_PER_PIT_TICK >= self._due:
                    self._due = 0          # an edge the schedule waited for went by: work it out anew

    def timers_written(self) -> None:
        """A chip was written (a timer reprogrammed, an enable changed...): the schedule is
        stale, and the next sync works it out again. Nothing else moves a timer's next event but
        the timer firing (at `_due`) and a device saying its deadline moved (`deadline_moved`):
        no read of a chip (a latch, the RTC's flags, a counter), no interrupt acknowledge, no
        IRQ line (the timers' events do not depend on the PIC, the APICs' requests or the
        devices' lines)."""
        self._due = 0

    def deadline_moved(self, at_ns: Optional[int]) -> None:
        """A device in `timers` set its deadline to `at_ns` guest nanoseconds, or dropped it
        (None), outside a chip write: the UART's character timeout, set by a byte received or a
        read of its receiver buffer (from a port access inside a run, an interrupt window's
        input poll, hlt's wait for input). The schedule is stale; a deadline set brings time
        into use (it must move for the deadline to come: a guest that polls IIR for the timeout
        touches no chip), and a counted run going on, bounded before it was set, ends as soon
        as the mode can without a stop inside the access (`end_run`), so that the next run is
        bounded by it and it fires at its exact cycle. A deadline dropped needs nothing more: a
        run it bounded ends early and its sync finds nothing due."""
        self._due = 0
        if at_ns is None:
            return
        if not self.in_use:
            self.guest_uses_time()      # (the modes end the run, not counted, as for a chip access)
        elif (self._next_event is None or self._cycles_at(at_ns) < self._next_event) \
                and self.clock.in_flight() is not None:
            self.end_run()

    def mmio_uses_time(self) -> None:
        """guest_uses_time from inside an MMIO access: the modes hear of it at the next sync. A
        run without a count cannot be ended from inside the access: the next OUT asks the mode
        to end it (`reprogrammed`; bt can, the untranslated modes wait for the run's end)."""
        if not self.in_use:
            self.in_use = True
            self._first_use_pending = True
            self.reprogrammed = True
        self._advance()

    # -- time ----------------------------------------------------------------------------------
    def _now_ns(self) -> int:
        """Guest time in nanoseconds (QEMU's virtual clock, on which its APIC timer counts)."""
        return self.clock.cycles * NS_PER_SECOND // CPU_HZ

    @staticmethod
    def _cycles_at(ns: int) -> int:
        """The first guest cycle at or after `ns` nanoseconds."""
        return -(-ns * CPU_HZ // NS_PER_SECOND)

    def sync(self) -> None:
        """Bring the timers to the clock's time (IRQ0 edges, the RTC's flags, the APIC timer's
        expiries on the way), and tell the modes if time just came into use."""
        if self._first_use_pending:
            self._first_use_pending = False
            for callback in self.on_first_use:
                callback()
        cycles = self.clock.cycles              # (_advance, inline: 4 or 5 syncs an exit)
        if cycles >= self._due:
            self._advance_to(cycles)

    def _advance(self) -> None:
        """Before `_due` no timer would change anything: a sync costs a comparison, however many
        callers ask between two exits (the run budget, the window, rdtsc, every chip access).
        The timers then lag behind the clock without anyone seeing it: the PIT's count only
        (`chip_access` brings it up for the PIT's ports), the RTC's flags, which it brings up to
        date itself on every access, and the free-running counters read the clock themselves."""
        cycles = self.clock.cycles
        if cycles >= self._due:
            self._advance_to(cycles)

    def _advance_to(self, cycles: int) -> None:
        ticks = cycles // CYCLES_PER_PIT_TICK
        if ticks > self.pit.now:
            self.pit.advance(ticks - self.pit.now)
        if self.rtc is not None:
            self.rtc.advance()
        ns = cycles * NS_PER_SECOND // CPU_HZ
        if self.apic.next_time is not None:
            self.apic.advance(ns)
        for timer in self.timers:
            if timer.next_event_ns() is not None:
                timer.advance(ns)
        self._schedule()

    def _schedule(self) -> None:
        """With the timers at the clock's time: the next interrupt event of each (the PIT's next
        rising edge, the RTC's enabled interrupts, the APIC timer's expiry, the HPET's and the
        PM timer's) and the first cycle at which any timer does anything (the events, and the
        PIT's OUT falling too). Both stay true until the clock reaches `_due` (then the
        timers fire and re-arm, and this runs again) or a chip is written (`timers_written`)."""
        pit = self.pit
        change = pit.next_change()
        due = float("inf") if change is None else (pit.now + change) * CYCLES_PER_PIT_TICK
        events = []
        ticks = pit.next_event()
        if ticks is not None:
            events.append((pit.now + ticks) * CYCLES_PER_PIT_TICK)
        if self.rtc is not None and (at := self.rtc.next_event()) is not None:
            events.append(at)
        if self.apic.next_time is not None:
            events.append(self._cycles_at(self.apic.next_time))
        for timer in self.timers:
            if (ns := timer.next_event_ns()) is not None:
                events.append(self._cycles_at(ns))
        self._next_event = min(events) if events else None
        self._due = due if self._next_event is None else min(due, self._next_event)

    def cycles_to_next_event(self) -> Optional[int]:
        """Guest cycles until the next timer edge (>= 1), or None if none is coming or time is
        not in use."""
        if not self.in_use:
            return None
        self.sync()
        if self._next_event is None:
            return None
        return max(1, self._next_event - self.clock.cycles)

    def reprograms_timer(self, port: int) -> bool:
        """Whether an OUT to `port` reprograms a timer (the PIT, the RTC, the ACPI PM's enables):
        its next event may come sooner than the run's bound, so the run must end and be bounded anew."""
        return any(base <= port < base + count for base, count in self._timer_ports)

    # -- the INTR line -------------------------------------------------------------------------
    @property
    def intr_raised(self) -> bool:
        """The CPU's INTR line now, as the local APIC drives it: one of its own vectors above the
        processor priority, or the PIC pair's INTR through LINT0 (no clock sync: safe inside an
        I/O hook or an MMIO access). Nothing requested anywhere (the PIC's INT low, the APIC's
        IRR empty) is the common case, and answered first."""
        output = self.pic.master.output
        if not output and not self.apic.irr:
            self._pic_output = False
            return False
        if output and not self._pic_output and self.apic.accepts_pic():
            self.apic.local_deliver(LVT_LINT0)     # a rise on LINT0: a fixed vector is requested
        self._pic_output = output
        return self.apic.intr

    def pending(self) -> bool:
        """Whether INTR is raised (a vector would be acknowledged now)."""
        if self.in_use:
            self.sync()
        return self.intr_raised

    # -- NMIs ----------------------------------------------------------------------------------
    def _raise_nmi(self) -> None:
        self.nmi_pending = True

    @property
    def nmi_ready(self) -> bool:
        """An NMI waits and is not blocked: the CPU takes it at the next instruction boundary,
        whatever IF and the interrupt shadows say (QEMU's x86_cpu_pending_interrupt)."""
        return self.nmi_pending and not self.nmi_blocked

    def take_nmi(self) -> None:
        """The NMI is delivered: blocked until the handler's IRET."""
        self.nmi_pending, self.nmi_blocked = False, True

    def iret_executed(self) -> None:
        """The guest executed IRET: NMIs are no longer blocked."""
        self.nmi_blocked = False

    def acknowledge(self) -> int:
        """The INTA cycle (QEMU's cpu_get_pic_interrupt): the APIC's vector if it has one above
        the processor priority and the PIC is not raising an ExtINT, else the PIC's."""
        vector = self.apic.get_interrupt()
        return vector if vector >= 0 else self.pic.acknowledge()

    # -- the CPU's view of the APIC: its MSR and CPUID bit -------------------------------------
    def read_msr(self, number: int) -> Optional[int]:
        """The value of an MSR the platform's devices own (None: not theirs)."""
        return self.apic.read_msr() if number == MSR_APIC_BASE else None

    def write_msr(self, number: int, value: int) -> bool:
        """Write an MSR the platform's devices own; False if it is not theirs."""
        if number != MSR_APIC_BASE:
            return False
        self.apic.write_msr(value)
        return True

    def cpuid(self, leaf: int, values: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """CPUID as the platform shows it: leaf 1's APIC bit goes with the APIC's global enable
        (QEMU clears it for good when the base MSR disables the APIC)."""
        if leaf == 1 and not self.apic.cpuid_apic:
            eax, ebx, ecx, edx = values
            return eax, ebx, ecx, edx & ~CPUID_EDX_APIC
        return values
