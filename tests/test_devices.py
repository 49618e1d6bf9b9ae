"""Device models and the port bus in isolation (the sample guests drive them end to end)."""

import pytest

from vmm.bus import PortBus
from vmm.console import BufferConsole
from vmm.devices.debug_exit import DebugExit
from vmm.devices.uart16550 import (IER_DLM, IIR_FCR, LCR, LSR, MCR, MSR, RBR_THR_DLL, SCR,
                                   Uart16550)
from vmm.errors import BusError


class Recorder:
    name = "recorder"

    def __init__(self):
        self.accesses = []

    def io_read(self, offset, size):
        self.accesses.append(("r", offset, size))
        return 0x12345678

    def io_write(self, offset, size, value):
        self.accesses.append(("w", offset, size, value))


def test_bus_hands_devices_offsets_and_masks_to_the_access_size():
    bus, device = PortBus(), Recorder()
    bus.register(0x100, 4, device)
    assert bus.read(0x102, 1) == 0x78 and bus.read(0x100, 2) == 0x5678
    bus.write(0x103, 4, 0xAABBCCDD)
    assert device.accesses == [("r", 2, 1), ("r", 0, 2), ("w", 3, 4, 0xAABBCCDD)]
    # every device on the bus and "unassigned" are listed, accessed or not
    assert bus.counters() == {"recorder": {"reads": 2, "writes": 1}, "unassigned": {"reads": 0, "writes": 0}}


@pytest.mark.parametrize("base, length", [(0x100, 4), (0xFE, 3), (0x103, 1), (0xF0, 0x20)])
def test_bus_rejects_overlapping_ranges(base, length):
    bus = PortBus()
    bus.register(0x100, 4, Recorder())
    with pytest.raises(BusError, match="overlap recorder"):
        bus.register(base, length, Recorder())


def test_bus_rejects_ranges_outside_the_port_space():
    with pytest.raises(BusError, match="outside the port space"):
        PortBus().register(0xFFFE, 4, Recorder())


def test_unassigned_ports_read_all_ones():
    bus = PortBus()
    assert [bus.read(0x80, size) for size in (1, 2, 4)] == [0xFF, 0xFFFF, 0xFFFFFFFF]


def test_debug_exit_reports_the_written_value():
    values = []
    DebugExit(values.append).io_write(0, 4, 0x1FF)
    assert values == [0x1FF]


def uart(input_bytes=b""):
    console = BufferConsole(input_bytes)
    return Uart16550(console), console


def test_uart_transmits_byte_for_byte_and_thr_stays_empty():
    device, console = uart()
    for byte in b"\x00\n\xff":
        device.io_write(RBR_THR_DLL, 1, byte)
        assert device.io_read(LSR, 1) == 0x60
    assert console.output == b"\x00\n\xff"


def test_uart_divisor_latch_is_behind_dlab():
    device, _console = uart()
    device.io_write(LCR, 1, 0x83)
    device.io_write(RBR_THR_DLL, 1, 0x01)
    device.io_write(IER_DLM, 1, 0x02)
    assert (device.io_read(RBR_THR_DLL, 1), device.io_read(IER_DLM, 1)) == (0x01, 0x02)
    device.io_write(LCR, 1, 0x03)
    device.io_write(IER_DLM, 1, 0xFF)
    assert device.io_read(IER_DLM, 1) == 0x0F and device.divisor == 0x0201


def test_uart_thr_empty_interrupt_is_acknowledged_by_reading_iir():
    device, _console = uart()
    assert device.io_read(IIR_FCR, 1) == 0x01
    device.io_write(IER_DLM, 1, 0x02)
    assert device.irq_level and device.io_read(IIR_FCR, 1) == 0x02
    assert device.io_read(IIR_FCR, 1) == 0x01 and not device.irq_level
    device.io_write(RBR_THR_DLL, 1, 0x41)             # transmitting re-arms it
    assert device.io_read(IIR_FCR, 1) == 0x02


def test_uart_fifo_enable_shows_in_iir():
    device, _console = uart()
    device.io_write(IIR_FCR, 1, 0xC7)
    assert device.io_read(IIR_FCR, 1) == 0xC1
    device.io_write(IIR_FCR, 1, 0x00)
    assert device.io_read(IIR_FCR, 1) == 0x01


def test_uart_receives_console_input_one_byte_at_a_time_without_fifo():
    device, _console = uart(b"hi")
    assert device.io_read(LSR, 1) == 0x61
    assert device.io_read(RBR_THR_DLL, 1) == ord("h")
    assert device.io_read(LSR, 1) & 1 and device.io_read(RBR_THR_DLL, 1) == ord("i")
    assert device.io_read(LSR, 1) == 0x60


def test_uart_received_data_interrupt():
    device, _console = uart(b"x")
    device.io_write(IER_DLM, 1, 0x01)
    assert device.io_read(IIR_FCR, 1) == 0x04
    device.io_read(RBR_THR_DLL, 1)
    assert device.io_read(IIR_FCR, 1) == 0x01


def test_uart_loopback_and_overrun():
    device, console = uart(b"ignored in loopback")
    device.io_write(MCR, 1, 0x1F)
    assert device.io_read(MCR, 1) == 0x1F and device.io_read(MSR, 1) == 0xF0
    device.io_write(RBR_THR_DLL, 1, 0x5A)
    device.io_write(RBR_THR_DLL, 1, 0x5B)             # RBR not read: overrun
    assert device.io_read(LSR, 1) == 0x63 and device.io_read(LSR, 1) == 0x61   # OE clears on read
    assert device.io_read(RBR_THR_DLL, 1) == 0x5B and console.output == b""
    device.io_write(MCR, 1, 0x08)
    assert device.io_read(MSR, 1) == 0xB0


def test_uart_scratch_register():
    device, _console = uart()
    device.io_write(SCR, 1, 0xA5)
    assert device.io_read(SCR, 1) == 0xA5


def test_wide_accesses_to_byte_devices_are_split_across_ports():
    # As QEMU does: `in eax, dx` at 0x3F8 reads RBR, IER, IIR and LCR; 0x3FE+2 reaches MSR, SCR.
    device, _console = uart()
    bus = PortBus()
    bus.register(0x3F8, 8, device)
    assert bus.read(0x3F8, 4) == 0x00010000          # IIR "no interrupt" in byte 2
    bus.write(0x3FE, 2, 0xA500)
    assert device.scr == 0xA5
    assert bus.read(0x3FE, 4) == 0xFFFFA5B0           # MSR, SCR, then two unassigned ports
