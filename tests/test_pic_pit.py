"""The i8259A PIC pair and the i8254 PIT in isolation, and PIT channel 0 wired to PIC IRQ 0."""

import pytest

from vmm.bus import PortBus
from vmm.devices.i8254 import I8254, PIT_BASE, PIT_FREQ, PIT_PORTS
from vmm.devices.i8259 import PicPair

DIVISOR = 11932             # ~100 Hz


# -- PIC ----------------------------------------------------------------------------------------
def remapped_pics(int_out=None):
    """The Linux / xv6 initialization: vectors 0x20-0x2F, slave on IRQ 2, 8086 mode."""
    pics, bus = PicPair(int_out), PortBus()
    pics.register(bus)
    for port, value in [(0x20, 0x11), (0xA0, 0x11), (0x21, 0x20), (0xA1, 0x28),
                        (0x21, 0x04), (0xA1, 0x02), (0x21, 0x01), (0xA1, 0x01),
                        (0x21, 0x00), (0xA1, 0x00)]:
        bus.write(port, 1, value)
    return pics, bus


def pulse(pics, irq):
    pics.set_irq(irq, True)
    pics.set_irq(irq, False)


def eoi(bus, slave=False):
    if slave:
        bus.write(0xA0, 1, 0x20)
    bus.write(0x20, 1, 0x20)


def test_pic_initialization_sets_the_vector_bases_and_unmasks():
    pics, bus = remapped_pics()
    assert (pics.master.irq_base, pics.slave.irq_base) == (0x20, 0x28)
    assert pics.master.init_state == pics.slave.init_state == 0
    assert not pics.master.auto_eoi and bus.read(0x21, 1) == 0 and bus.read(0xA1, 1) == 0
    assert pics.pending() is None


def test_pic_single_mode_skips_icw3_and_icw4_is_optional():
    pics, bus = PicPair(), PortBus()
    pics.register(bus)
    bus.write(0x20, 1, 0x12)                   # single, no ICW4: ICW2 ends the sequence
    bus.write(0x21, 1, 0x47)                   # low three bits of the base are ignored
    assert pics.master.irq_base == 0x40 and pics.master.init_state == 0
    bus.write(0x21, 1, 0xFE)                   # so this is OCW1
    assert bus.read(0x21, 1) == 0xFE


def test_pic_auto_eoi_sets_no_isr_bit():
    pics, bus = PicPair(), PortBus()
    pics.register(bus)
    for port, value in [(0x20, 0x11), (0x21, 0x08), (0x21, 0x04), (0x21, 0x03)]:
        bus.write(port, 1, value)
    pulse(pics, 1)
    assert pics.acknowledge() == 0x09 and pics.master.isr == 0


def test_pic_masking_holds_a_request_until_unmasked():
    seen = []
    pics, bus = remapped_pics(seen.append)
    bus.write(0x21, 1, 0x02)                   # mask IRQ 1
    pulse(pics, 1)
    assert pics.pending() is None and not pics.output and seen == []
    bus.write(0x20, 1, 0x0A)                   # OCW3: read IRR
    assert bus.read(0x20, 1) == 0x02           # latched all the same
    bus.write(0x21, 1, 0x00)
    assert pics.pending() == 0x21 and pics.output and seen == [True]
    assert pics.acknowledge() == 0x21
    assert seen == [True, False]


def test_pic_lower_irq_wins_and_in_service_blocks_lower_priority():
    pics, bus = remapped_pics()
    pulse(pics, 5)
    pulse(pics, 3)
    assert pics.pending() == 0x23
    assert pics.acknowledge() == 0x23
    assert pics.pending() is None              # IRQ 5 waits behind in-service IRQ 3
    pulse(pics, 1)
    assert pics.acknowledge() == 0x21          # a higher priority nests
    eoi(bus)                                   # non-specific EOI ends the highest: IRQ 1
    assert pics.master.isr == 0x08 and pics.pending() is None
    eoi(bus)
    assert pics.acknowledge() == 0x25


def test_pic_specific_eoi():
    pics, bus = remapped_pics()
    pulse(pics, 4)
    pulse(pics, 6)
    assert pics.acknowledge() == 0x24
    bus.write(0x20, 1, 0x66)                   # specific EOI for IRQ 6: not in service, no-op
    assert pics.master.isr == 0x10
    bus.write(0x20, 1, 0x64)                   # specific EOI for IRQ 4
    assert pics.master.isr == 0 and pics.acknowledge() == 0x26


def test_pic_ocw3_selects_irr_or_isr_and_data_port_reads_imr():
    pics, bus = remapped_pics()
    pulse(pics, 0)
    pulse(pics, 6)
    assert bus.read(0x20, 1) == 0x41           # IRR is the default
    pics.acknowledge()
    bus.write(0x20, 1, 0x0B)                   # read ISR
    assert bus.read(0x20, 1) == 0x01 and bus.read(0x20, 1) == 0x01
    bus.write(0x20, 1, 0x0A)                   # read IRR
    assert bus.read(0x20, 1) == 0x40
    bus.write(0x21, 1, 0xB8)
    assert bus.read(0x21, 1) == 0xB8


def test_pic_edge_input_needs_a_new_rising_edge():
    pics, _bus = remapped_pics()
    pics.set_irq(3, True)
    assert pics.acknowledge() == 0x23
    pics.set_irq(3, True)                      # still high: no new edge
    assert pics.master.irr == 0


def test_pic_cascade_delivers_slave_vectors_through_irq2():
    pics, bus = remapped_pics()
    pulse(pics, 12)
    assert pics.master.irr == 0x04 and pics.slave.irr == 0x10
    assert pics.pending() == 0x2C
    assert pics.acknowledge() == 0x2C
    assert pics.slave.isr == 0x10 and pics.master.isr == 0x04
    assert pics.slave.irr == 0 and pics.master.irr == 0
    pulse(pics, 8)                             # outranks IRQ 12 on the slave, but without special
    assert pics.slave.output and pics.pending() is None    # fully nested mode master IRQ 2 is busy
    eoi(bus, slave=True)
    assert pics.master.isr == pics.slave.isr == 0
    assert pics.acknowledge() == 0x28


def test_pic_cascade_priority_sits_at_irq2():
    pics, bus = remapped_pics()
    for irq in (3, 14, 1):
        pulse(pics, irq)
    vectors = []
    for slave in (False, True, False):
        vectors.append(pics.acknowledge())
        eoi(bus, slave)
    assert vectors == [0x21, 0x2E, 0x23] and pics.pending() is None


def test_pic_masked_slave_line_and_masked_cascade():
    pics, bus = remapped_pics()
    bus.write(0xA1, 1, 0x01)                   # mask IRQ 8 on the slave
    pulse(pics, 8)
    assert pics.pending() is None and not pics.master.irr
    bus.write(0xA1, 1, 0x00)
    bus.write(0x21, 1, 0x04)                   # mask the cascade instead
    assert pics.slave.output and pics.pending() is None
    bus.write(0x21, 1, 0x00)
    assert pics.acknowledge() == 0x28


def test_pic_spurious_irq7_when_the_request_vanished():
    pics, bus = remapped_pics()
    pulse(pics, 4)
    bus.write(0x21, 1, 0x10)                   # masked between INTR and INTA
    assert pics.acknowledge() == 0x27
    assert pics.master.isr == 0                # a spurious IRQ 7 sets no ISR bit
    bus.write(0x20, 1, 0x0B)
    assert bus.read(0x20, 1) == 0


def test_pic_spurious_irq15_on_the_slave():
    pics, bus = remapped_pics()
    pulse(pics, 10)
    bus.write(0xA1, 1, 0x04)                   # the slave request vanishes; master IRR 2 stays
    assert pics.acknowledge() == 0x2F
    assert pics.slave.isr == 0 and pics.master.isr == 0x04   # QEMU: master ISR 2 still set


def test_pic_poll_mode_reads_and_acknowledges():
    pics, bus = remapped_pics()
    bus.write(0x20, 1, 0x0C)
    assert bus.read(0x20, 1) == 0              # nothing pending
    pulse(pics, 5)
    bus.write(0x20, 1, 0x0C)
    assert bus.read(0x20, 1) == 0x85 and pics.master.isr == 0x20 and not pics.master.irr


def test_pic_rotate_on_eoi_makes_the_served_line_lowest():
    pics, bus = remapped_pics()
    pulse(pics, 0)
    assert pics.acknowledge() == 0x20
    bus.write(0x20, 1, 0xA0)                   # rotate on non-specific EOI
    pulse(pics, 0)
    pulse(pics, 1)
    assert pics.acknowledge() == 0x21


def test_pic_rejects_lines_outside_0_to_15():
    with pytest.raises(ValueError):
        PicPair().set_irq(16, True)


# -- PIT ----------------------------------------------------------------------------------------
class Line:
    """Records IRQ0 level changes against the PIT's virtual time."""

    def __init__(self):
        self.pit = None
        self.changes = []

    def __call__(self, level):
        self.changes.append((self.pit.now, level))

    def rising(self):
        return [t for t, level in self.changes if level]


def programmed_pit(mode, divisor=DIVISOR):
    line = Line()
    pit = I8254(line)
    line.pit = pit
    pit.io_write(3, 1, 0x30 | mode << 1)                 # channel 0, lo/hi, `mode`, binary
    pit.io_write(0, 1, divisor & 0xFF)
    pit.io_write(0, 1, divisor >> 8)
    return pit, line


@pytest.mark.parametrize("step", [61, 997, DIVISOR, 5 * DIVISOR + 3, 50 * DIVISOR])
def test_pit_mode2_pulses_once_per_period(step):
    pit, line = programmed_pit(2)
    start = pit.now
    while pit.now < start + 50 * DIVISOR + 10:
        pit.advance(step)
    periods = 50
    assert line.rising()[:periods] == [start + k * DIVISOR for k in range(1, periods + 1)]
    # each pulse goes high then low, a tick later
    assert line.changes[:4] == [(start + DIVISOR, True), (start + DIVISOR + 1, False),
                                (start + 2 * DIVISOR, True), (start + 2 * DIVISOR + 1, False)]


@pytest.mark.parametrize("step", [61, 5966, DIVISOR, 7 * DIVISOR + 1, 50 * DIVISOR])
def test_pit_mode3_square_wave_rises_once_per_period(step):
    pit, line = programmed_pit(3)
    start = pit.now
    assert line.changes == [(start, True)]          # loading the count raises OUT at once
    while pit.now < start + 50 * DIVISOR:
        pit.advance(step)
    rises = [t for t in line.rising() if t <= start + 50 * DIVISOR]
    assert rises == [start + k * DIVISOR for k in range(51)]
    falls = [t for t, level in line.changes if not level][:2]
    assert falls == [start + DIVISOR // 2, start + DIVISOR + DIVISOR // 2]


def test_pit_rising_edges_per_second_are_about_100():
    pit, line = programmed_pit(2)
    pit.advance(PIT_FREQ)
    assert len(line.rising()) == PIT_FREQ // DIVISOR == 99
    pit.advance(PIT_FREQ)
    assert len(line.rising()) == (2 * PIT_FREQ) // DIVISOR == 199


@pytest.mark.parametrize("mode", [2, 3])
def test_pit_next_event_lands_on_the_edge(mode):
    pit, line = programmed_pit(mode)
    pit.advance(123)
    for _ in range(20):
        before = len(line.rising())
        delta = pit.next_event()
        assert delta >= 1
        pit.advance(delta - 1)
        assert len(line.rising()) == before          # not yet
        pit.advance(1)
        assert len(line.rising()) == before + 1 and line.rising()[-1] == pit.now
        assert pit.now % DIVISOR == 0                # the count was loaded at tick 0
    # next_event(now) for another point in the timeline
    assert pit.next_event(pit.now + 5) == DIVISOR - 5


def test_pit_next_event_is_none_after_a_mode0_terminal_count():
    pit, line = programmed_pit(0, 1000)
    assert pit.next_event() == 1000
    pit.advance(5000)
    assert line.changes == [(1000, True)] and pit.next_event() is None


def test_pit_huge_advance_keeps_the_phase():
    pit, line = programmed_pit(2)
    pit.advance(100_000 * DIVISOR + 7)
    assert line.rising()[-1] == 100_000 * DIVISOR and pit.next_event() == DIVISOR - 7
    assert not pit.irq_level


def read_count_lohi(pit, channel=0):
    low = pit.io_read(channel, 1)
    return low | (pit.io_read(channel, 1) << 8)


def test_pit_counts_down_and_reads_low_then_high_byte():
    pit, _line = programmed_pit(2)
    assert read_count_lohi(pit) == DIVISOR
    pit.advance(1000)
    assert read_count_lohi(pit) == DIVISOR - 1000
    pit.advance(DIVISOR)                            # reloads each period
    assert read_count_lohi(pit) == DIVISOR - 1000


def test_pit_mode3_counts_down_by_two():
    pit, _line = programmed_pit(3)
    pit.advance(1000)
    assert read_count_lohi(pit) == DIVISOR - 2000


def test_pit_latch_freezes_the_count_until_read():
    pit, _line = programmed_pit(2)
    pit.advance(500)
    pit.io_write(3, 1, 0x00)                        # latch channel 0
    pit.advance(3000)
    pit.io_write(3, 1, 0x00)                        # a second latch is ignored
    assert pit.io_read(0, 1) == (DIVISOR - 500) & 0xFF
    pit.advance(3000)
    assert pit.io_read(0, 1) == (DIVISOR - 500) >> 8
    assert read_count_lohi(pit) == DIVISOR - 6500   # latch consumed: live count again


def test_pit_lobyte_and_hibyte_access_modes():
    pit = I8254()
    pit.io_write(3, 1, 0x94)                        # channel 2, lobyte only, mode 2
    pit.io_write(2, 1, 0x80)
    assert pit.channels[2].count == 0x80
    assert pit.io_read(2, 1) == 0x80 and pit.io_read(2, 1) == 0x80
    pit.io_write(3, 1, 0xA4)                        # channel 2, hibyte only, mode 2
    pit.io_write(2, 1, 0x12)
    assert pit.channels[2].count == 0x1200
    pit.advance(0x100)
    assert pit.io_read(2, 1) == 0x11 and pit.io_read(2, 1) == 0x11


def test_pit_zero_means_65536_and_reset_state():
    pit = I8254()
    assert [(c.mode, c.count, c.gate) for c in pit.channels] == [
        (3, 0x10000, True), (3, 0x10000, True), (3, 0x10000, False)]
    pit.io_write(3, 1, 0x74)                        # channel 1, lo/hi, mode 2
    pit.io_write(1, 1, 0)
    pit.io_write(1, 1, 0)
    assert pit.channels[1].count == 0x10000 and read_count_lohi(pit, 1) == 0


def test_pit_gate_rising_edge_restarts_the_count():
    pit = I8254()
    pit.io_write(3, 1, 0xB4)                        # channel 2, lo/hi, mode 2
    pit.io_write(2, 1, 0x00)
    pit.io_write(2, 1, 0x10)
    pit.advance(0x300)
    assert read_count_lohi(pit, 2) == 0xD00
    pit.set_gate(2, True)
    assert read_count_lohi(pit, 2) == 0x1000
    pit.advance(0x1000)
    assert pit.channel_out(2)                       # QEMU's one-tick mode 2 pulse


def test_pit_read_back_latches_status_and_count():
    pit, _line = programmed_pit(2)
    pit.advance(100)
    pit.io_write(3, 1, 0xC2)                        # read back count and status of channel 0
    assert pit.io_read(0, 1) == 0x34                # OUT low, lo/hi, mode 2, binary
    assert read_count_lohi(pit) == DIVISOR - 100
    assert pit.io_read(3, 1) == 0


def test_pit_on_the_bus():
    bus, pit = PortBus(), I8254()
    bus.register(PIT_BASE, PIT_PORTS, pit)
    bus.write(0x43, 1, 0x34)
    bus.write(0x40, 1, 0x9C)
    assert pit.channels[0].count == 0x10000         # half a lo/hi pair loads nothing
    bus.write(0x40, 1, 0x2E)
    assert pit.channels[0].count == 0x2E9C == DIVISOR
    bus.write(0x40, 2, 0x0102)                      # byte registers: a word reaches ports 0x40, 0x41
    assert pit.channels[1].count == 0x01 and pit.channels[0].write_state == 4


# -- PIT -> PIC ---------------------------------------------------------------------------------
def test_pit_irq0_reaches_the_cpu_as_vector_0x20():
    pics, bus = remapped_pics()
    pit = I8254(lambda level: pics.set_irq(0, level))
    bus.register(PIT_BASE, PIT_PORTS, pit)
    bus.write(0x43, 1, 0x34)
    bus.write(0x40, 1, DIVISOR & 0xFF)
    bus.write(0x40, 1, DIVISOR >> 8)
    assert pics.pending() is None
    ticks = 0
    for _ in range(3):
        delta = pit.next_event()
        pit.advance(delta - 1)
        assert pics.pending() is None
        pit.advance(1)
        ticks += delta
        assert pics.pending() == 0x20 and pics.acknowledge() == 0x20
        pit.advance(DIVISOR // 2)                   # the handler runs; no new edge meanwhile
        ticks += DIVISOR // 2
        assert pics.pending() is None
        bus.write(0x20, 1, 0x20)                    # EOI
    assert pit.now == ticks and pics.pending() is None
    pit.advance(3 * DIVISOR)                        # not acknowledged: three edges, one request
    assert pics.acknowledge() == 0x20 and pics.pending() is None
