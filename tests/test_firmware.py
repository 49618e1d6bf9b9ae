"""The firmware tables and timers QEMU's pc with SeaBIOS gives a guest (issue 14): the MP tables
(vmm/mptable.py), the ACPI tables (vmm/acpi.py), the PIIX4's ACPI registers and PM timer, the APM
port (vmm/devices/acpi_pm.py) and the HPET (vmm/devices/hpet.py). Probe guests print what they
find; the expected output is what qemu-system-i386 7.2 printed for the same guest (QEMU_PLATFORM
of tests/guests.py, -m 32), and the needs_qemu tests re-run QEMU and compare. Unit
tests hold the devices to QEMU's models."""

from __future__ import annotations

import struct

import pytest

from tests.guests import EXIT0, HEX, MODES, idt_setup, needs_qemu, qemu_recorded, run_qemu_source, run_source
from vmm import acpi, mptable
from vmm.devices.acpi_pm import PM_TIMER_HZ, SCI_EN, TMR_EN, TMR_STS, AcpiPm
from vmm.devices.hpet import Hpet
from vmm.exits import StopReason


def dump(address: int, length: int) -> str:
    """Assembly that prints `length` bytes at `address` in hex, then a newline."""
    return f"""
    mov esi, {address:#x}
    mov edi, {address + length:#x}
dump_{address:x}:
    mov al, byte ptr [esi]
    call hex8
    inc esi
    cmp esi, edi
    jne dump_{address:x}
    call nl
"""


# -- the tables ----------------------------------------------------------------------------------
ZONE_32 = (32 << 20) - acpi.HIGH_ZONE_SIZE
FADT_32 = ZONE_32 + acpi.FACS_LENGTH + acpi.QEMU_DSDT_LENGTH
TABLES_PROBE = "    mov esp, 0x7000\n" + "".join(dump(address, length) for address, length in (
    (mptable.FLOATING_POINTER, 16 + 200),      # the floating pointer and the configuration table
    (acpi.RSDP_ADDRESS, 20),
    (ZONE_32, acpi.FACS_LENGTH),               # FACS
    (FADT_32, 116 + 120 + 56 + 40 + 52),       # FADT, MADT, HPET, WAET, RSDT, one after the other
)) + EXIT0 + HEX

# Recorded from qemu-system-i386 7.2 (-m 32, QEMU_PLATFORM): SeaBIOS 1.16.2's MP tables at
# 0xF5BA0, the RSDP at 0xF59D0, QEMU's FACS at the start of the high zone (0x1FE0000), and the
# FADT (0x1FE195A), MADT, HPET, WAET and RSDT tables behind its 0x191A-byte DSDT.
TABLES_EXPECTED = (
    "5f4d505fb05b0f000104860000000000"
    "50434d50c800041d424f434853435055302e3120202020202020202000000000000012000000e0fe000000000000140363060000"
    "fdab8107000000000000000001005043492020200101495341202020020011010000c0fe0300010000040009030000000100000203"
    "000000010100010300000001030003030000000104000403000000010600060300000001070007030000000108000803000000010c"
    "000c03000000010d000d03000000010e000e03000000010f000f0403000001000000040100000100ff01\n"
    "525344205054522093424f4348532000a61afe01\n"
    "46414353400000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000\n"
    "464143507400000001fd424f4348532042585043202020200100000042585043010000000000fe014000fe0101000900b2000000f1f0"
    "0000000600000000000004060000000000000000000008060000e0af0000000000000402000404000000ff0fff0f0000000000000000"
    "32000000a5800000"
    "4150494378000000018a424f4348532042585043202020200100000042585043010000000000e0fe010000000008000001000000010c"
    "00000000c0fe00000000020a0000020000000000020a0005050000000d00020a0009090000000d00020a000a0a0000000d00020a000b"
    "0b0000000d000406ff000001"
    "485045543800000001b4424f43485320425850432020202001000000425850430100000001a28680000000000000d0fe00000000000000"
    "00"
    "57414554280000000139424f43485320425850432020202001000000425850430100000002000000"
    "525344543400000001d5424f4348532042585043202020200100000042585043010000005a19fe01ce19fe01461afe017e1afe01\n"
).encode()


test_mp_and_acpi_tables_are_qemus_byte_for_byte, test_tables_probe_under_qemu = qemu_recorded(TABLES_PROBE, TABLES_EXPECTED)


def _tables(ram_size: int) -> dict:
    return {name: data for name, (_address, data) in acpi.layout(ram_size).items()}


def test_every_table_checksums_to_zero_and_the_pointers_lead_to_each_other():
    placed = acpi.layout(256 << 20)
    for name, (_address, data) in placed.items():
        assert sum(data[:20] if name == "RSDP" else data) & 0xFF == 0 or name == "FACS", name
    rsdt_address = struct.unpack_from("<I", placed["RSDP"][1], 16)[0]
    assert rsdt_address == placed["RSDT"][0]
    rsdt = placed["RSDT"][1]
    entries = struct.unpack_from("<4I", rsdt, 36)
    assert entries == tuple(placed[name][0] for name in ("FACP", "APIC", "HPET", "WAET"))
    fadt = placed["FACP"][1]
    assert struct.unpack_from("<II", fadt, 36) == (placed["FACS"][0], placed["DSDT"][0])
    # PM1a event 0x600, control 0x604, timer 0x608, SCI 9: where kvm-unit-tests' vmexit reads
    assert struct.unpack_from("<H", fadt, 46)[0] == 9
    assert struct.unpack_from("<III", fadt, 56)[0] == 0x600 and struct.unpack_from("<I", fadt, 64)[0] == 0x604
    assert struct.unpack_from("<I", fadt, 76)[0] == 0x608
    mp = mptable.floating_pointer()
    assert sum(mp) & 0xFF == 0 and sum(mptable.config_table()) & 0xFF == 0


def test_the_dsdt_holds_qemus_sleep_packages():
    # QEMU 7.2's DSDT (recorded): Scope (\) { _S3 {1, 1, 0, 0}, _S4 {2, 2, 0, 0}, _S5 {0, 0, 0, 0} }
    qemus = bytes.fromhex("10295c00085f53335f12060401010000085f53345f1208040a020a020000085f53355f12060400000000")
    dsdt = acpi.dsdt()
    assert dsdt[:4] == b"DSDT" and dsdt[36:] == qemus and sum(dsdt) & 0xFF == 0
    assert len(dsdt) <= acpi.QEMU_DSDT_LENGTH


def test_the_tables_move_with_the_top_of_ram_as_seabios_allocates_them():
    # Measured under QEMU at -m 256: the same tables, the high zone at 0xFFE0000.
    placed = acpi.layout(256 << 20)
    assert placed["FACS"][0] == 0xFFE0000 and placed["RSDT"][0] == 0xFFE1AA6 and placed["RSDP"][0] == 0xF59D0


# -- PM registers, APM, HPET registers ---------------------------------------------------------------
def _in(port: int, width: str) -> str:
    register = {"b": "al", "w": "ax", "d": "eax"}[width]
    show = {"b": "hex8", "w": "hex16", "d": "hex32"}[width]
    return f"    mov dx, {port:#x}\n    in {register}, dx\n    call {show}\n    call space\n"


def _out(port: int, width: str, value: int) -> str:
    register = {"b": "al", "w": "ax", "d": "eax"}[width]
    return f"    mov dx, {port:#x}\n    mov {register}, {value:#x}\n    out dx, {register}\n"


REGISTERS_PROBE = "    mov esp, 0x7000\n" + "".join([
    _in(0x600, "w"), _in(0x602, "w"), _in(0x604, "w"), _in(0x606, "w"), _in(0x60C, "d"),
    _in(0x600, "d"), _in(0x601, "b"), _in(0x600, "b"), _in(0x604, "d"),
    _in(0xAFE0, "d"), _in(0xB2, "b"), _in(0xB3, "b"), "    call nl\n",
    _out(0x602, "w", 0xFFFF), _in(0x602, "w"), _out(0x600, "w", 0xFFFF), _in(0x600, "w"),
    _out(0x604, "w", 0xDFFF), _in(0x604, "w"), _out(0x604, "w", 0), _out(0xB2, "b", 0xF1), _in(0x604, "w"),
    _out(0xB2, "b", 0xF0), _in(0x604, "w"), _out(0xB3, "b", 0x12), _in(0xB3, "b"),
    _out(0x605, "b", 0x08), _in(0x604, "w"), _out(0xAFE0, "d", 0xFFFFFFFF), _in(0xAFE0, "d"), _in(0xAFE2, "w"),
    _out(0x602, "w", 0), "    call nl\n",
]) + """
    mov esi, 0xfed00000
hpet_global:
    mov eax, dword ptr [esi]
    call hex32
    call space
    add esi, 4
    cmp esi, 0xfed00020
    jne hpet_global
    call nl
    mov esi, 0xfed00100
hpet_timers:
    mov eax, dword ptr [esi]
    call hex32
    call space
    add esi, 4
    test esi, 0x1f
    jnz hpet_same_line
    call nl
hpet_same_line:
    cmp esi, 0xfed001a0
    jne hpet_timers
    mov eax, dword ptr [0xfed000f0]
    call hex32
    call space
    movzx eax, word ptr [0xfed00000]
    call hex32
    call space
    movzx eax, byte ptr [0xfed00001]
    call hex32
    call space
    mov dword ptr [0xfed00010], 1
    mov ebx, dword ptr [0xfed000f0]
    mov ecx, dword ptr [0xfed000f0]
    cmp ecx, ebx
    seta al
    call hex8
    call space
    mov eax, dword ptr [0xfed00010]
    call hex32
    call nl
""" + EXIT0 + HEX

# Recorded from qemu-system-i386 7.2: PM1 status reads TMR_STS (the overflow time starts at 0),
# enable and control 0 (SCI_EN clear: SeaBIOS leaves ACPI mode off), 0x606 and 0x60C unassigned,
# 4-byte accesses to the 2-byte registers 0, odd bytes of the event block 0, GPE0 0, APM control
# 0xB5 (SeaBIOS's last write). Then: enable keeps every bit, status is write-1-to-clear, control
# keeps all but SLP_EN, 0xF1/0xF0 at 0xB2 set/clear SCI_EN, 0xB3 reads back, a byte written at
# 0x605 lands in the low byte (QEMU ignores the address), GPE0 status clears and enable keeps.
# The HPET: ID 0x8086A201, period 10^7 fs, config and status 0; timers 0-2 with periodic and
# 64-bit capability routed to GSI 2 only (cap 4), comparators all ones; a fourth answers with
# zeros, the fifth reads 0; the halted counter 0; 2- and 1-byte reads 0; enabled, it moves.
REGISTERS_EXPECTED = (
    b"0001 0000 0000 ffff ffffffff 00000000 00 01 00000000 00000000 b5 00 \n"
    b"ffff 0000 dfff 0001 0000 12 0008 ffff0000 ffff \n"
    b"8086a201 00989680 00000000 00000000 00000000 00000000 00000000 00000000 \n"
    b"00000030 00000004 ffffffff ffffffff 00000000 00000000 00000000 00000000 \n"
    b"00000030 00000004 ffffffff ffffffff 00000000 00000000 00000000 00000000 \n"
    b"00000030 00000004 ffffffff ffffffff 00000000 00000000 00000000 00000000 \n"
    b"00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 \n"
    b"00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 \n"
    b"00000000 00000000 00000000 01 00000001\n"
)


test_pm_apm_and_hpet_registers_read_as_qemus, test_registers_probe_under_qemu = qemu_recorded(REGISTERS_PROBE, REGISTERS_EXPECTED)


# -- power off ------------------------------------------------------------------------------------------
POWER_OFF_PROBE = """
    mov esp, 0x7000
    mov al, 0x41
    call putc
    mov dx, 0x604
    mov ax, 0x2000
    out dx, ax
spin:
    jmp spin
""" + HEX


@pytest.mark.parametrize("mode", MODES)
def test_s5_powers_the_machine_off_as_qemu_does(tmp_path, mode):
    # SLP_TYP 0 (the DSDT's _S5) with SLP_EN: QEMU prints "A" and exits 0 (recorded); the run
    # ends with a reason of its own, status 0 as QEMU's. (QEMU's main loop carries the request
    # out a little later, the guest spinning meanwhile; the monitor stops at the OUT.)
    result, output, _vm = run_source(tmp_path, POWER_OFF_PROBE, mode=mode)
    assert (output, result.reason, result.exit_status) == (b"A", StopReason.POWERED_OFF, 0), result.message
    assert result.message == "guest powered off: ACPI S5: PM1a_CNT SLP_TYP 0 with SLP_EN"


@needs_qemu
def test_power_off_probe_under_qemu(tmp_path):
    proc = run_qemu_source(tmp_path, POWER_OFF_PROBE)
    assert (proc.stdout, proc.returncode) == (b"A", 0)


# -- HPET interrupts through the platform ------------------------------------------------------------
# Legacy replacement routing: timer 0 periodic on IRQ0 (the PIT cut off), then timer 1 one-shot in
# 32-bit mode on IRQ8; the PIC as SeaBIOS left it (IRQ0 -> vector 8, the slave's IRQ8 -> 0x70).
HPET_IRQ_PROBE = idt_setup({0x08: "irq0", 0x70: "irq8"}) + """
    mov esp, 0x7000
    mov al, 0x0a
    out 0x40, al
    mov al, 0
    out 0x40, al
    mov ecx, 0
    mov ebx, 0
    mov dword ptr [0xfed00100], 0x4c
    mov dword ptr [0xfed00108], 100000
    mov dword ptr [0xfed00010], 3
    mov al, 0xfa
    out 0x21, al
    mov al, 0xfe
    out 0xa1, al
    sti
wait0:
    hlt
    cmp ecx, 3
    jb wait0
    cli
    mov dword ptr [0xfed00100], 0
    mov eax, ecx
    call hex8
    call space
    mov eax, dword ptr [0xfed000f0]
    mov dword ptr [0xfed00128], eax
    add dword ptr [0xfed00128], 5000
    mov dword ptr [0xfed00120], 0x104
    sti
wait1:
    hlt
    cmp ebx, 1
    jb wait1
    cli
    mov eax, ebx
    call hex8
    call space
    mov eax, dword ptr [0xfed00120]
    call hex32
    call space
    mov eax, dword ptr [0xfed00020]
    call hex32
    call nl
""" + EXIT0 + """
irq0:
    inc ecx
    push eax
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd
irq8:
    inc ebx
    push eax
    mov al, 0x20
    out 0xa0, al
    out 0x20, al
    pop eax
    iretd
""" + HEX

# Recorded from qemu-system-i386 7.2: three IRQ0s from timer 0 (the PIT, programmed for a 10-tick
# period, is cut off: the count stays 3); then one IRQ8 from timer 1, its configuration 32-bit
# (0x104 | the capabilities), status 0 (edge-triggered). (QEMU's comparator after the periodic
# expiries depends on its host-timed clock: not printed.)
HPET_IRQ_EXPECTED = b"03 01 00000134 00000000\n"


test_hpet_legacy_routing_interrupts_as_qemus, test_hpet_irq_probe_under_qemu = qemu_recorded(HPET_IRQ_PROBE, HPET_IRQ_EXPECTED)


# -- unit tests against QEMU's models ----------------------------------------------------------------
class Nanoseconds:
    def __init__(self):
        self.ns = 0

    def __call__(self):
        return self.ns


def test_pm_timer_counts_guest_time_at_3_579545_mhz_in_24_bits():
    clock = Nanoseconds()
    pm = AcpiPm(clock)
    clock.ns = 10 ** 9
    assert pm.io_read(8, 4) == PM_TIMER_HZ
    clock.ns = (1 << 24) * 10 ** 9 // PM_TIMER_HZ + 10 ** 6        # past the wrap
    assert pm.io_read(8, 4) == pm.ticks() & 0xFFFFFF < 1 << 24
    assert pm.reads_clock(8) and not pm.reads_clock(0)


def test_pm_timer_overflow_raises_the_sci_while_tmr_en_and_clearing_rearms_it():
    # QEMU's acpi_pm1_evt_get_sts / pm_update_sci: TMR_STS at the overflow time (bit 23 toggling)
    clock, levels = Nanoseconds(), []
    pm = AcpiPm(clock, levels.append)
    assert pm.io_read(0, 2) & TMR_STS                    # the overflow time starts at 0
    pm.io_write(0, 2, TMR_STS)                          # cleared: the next at tick 0x800000
    assert not pm.io_read(0, 2) & TMR_STS and pm.overflow_time == 0x800000
    pm.io_write(2, 2, TMR_EN)
    due = pm.next_event_ns()
    assert due == -(-0x800000 * 10 ** 9 // PM_TIMER_HZ) and levels == []
    clock.ns = due - 1
    pm.advance(clock.ns)
    assert levels == [] and not pm.io_read(0, 2) & TMR_STS
    clock.ns = due
    pm.advance(clock.ns)
    assert levels == [True] and pm.io_read(0, 2) & TMR_STS and pm.next_event_ns() is None
    pm.io_write(0, 2, TMR_STS)
    assert levels == [True, False] and pm.overflow_time == 0x1000000


def test_pm_control_sleep_types_as_qemus_piix4():
    calls = []
    pm = AcpiPm(Nanoseconds(), power_off=lambda why: calls.append(("off", why)),
                suspend=lambda why: calls.append(("suspend", why)))
    pm.io_write(4, 2, 7 << 10)                          # SLP_TYP without SLP_EN: only stored
    assert pm.io_read(4, 2) == 7 << 10 and calls == []
    pm.io_write(4, 2, 7 << 10 | 1 << 13)                # S7: nothing (QEMU ignores it)
    pm.io_write(4, 2, 1 << 10 | 1 << 13)                # S3
    pm.io_write(4, 2, 2 << 10 | 1 << 13)                # S4: QEMU shuts down
    pm.io_write(4, 2, 1 << 13)                          # S5
    assert [kind for kind, _ in calls] == ["suspend", "off", "off"]
    assert pm.io_read(4, 2) == 0                        # SLP_EN is never kept
    pm.apm_control(0xF1)
    assert pm.io_read(4, 2) == SCI_EN


def hpet():
    clock, lines = Nanoseconds(), []
    device = Hpet(clock, lambda gsi, level: lines.append((gsi, level)))
    return device, clock, lines


def test_hpet_counter_halts_resumes_and_is_written_while_halted():
    device, clock, _lines = hpet()
    device.io_write(0xF0, 4, 1000)
    device.io_write(0x10, 4, 1)
    clock.ns = 500
    assert device.io_read(0xF0, 4) == 1050 and device.io_read(0xF4, 4) == 0
    device.io_write(0x10, 4, 0)
    clock.ns = 10 ** 6
    assert device.io_read(0xF0, 4) >= 1050 and device.io_read(0xF0, 4) == device.io_read(0xF0, 4)
    assert device.io_read(0xF0, 2) == 0                 # QEMU takes 4-byte accesses only


def test_hpet_periodic_timer_on_its_route_and_level_status():
    device, clock, lines = hpet()
    device.io_write(0x100, 4, 0x4E | 2 << 9)            # level, enable, periodic, set value; GSI 2
    device.io_write(0x10C, 4, 0)                        # the comparator's high half (reset: all ones)
    device.io_write(0x100, 4, 0x4E | 2 << 9)            # set value again: the low half and period
    device.io_write(0x108, 4, 100)
    device.io_write(0x10, 4, 1)
    assert device.next_event_ns() == 1000
    clock.ns = 1000
    device.advance(clock.ns)
    assert lines == [(2, True)] and device.io_read(0x20, 4) == 1
    assert device.io_read(0x108, 4) == 200 and device.next_event_ns() == 2000
    device.io_write(0x20, 4, 1)                         # write 1 to clear: the line drops
    assert lines[-1] == (2, False) and device.io_read(0x20, 4) == 0
    clock.ns = 3500                                     # late: the comparator catches up
    device.advance(clock.ns)
    assert device.io_read(0x108, 4) == 400 and device.next_event_ns() == 4000


def test_hpet_32bit_one_shot_fires_at_the_wrap_first():
    device, clock, lines = hpet()
    device.io_write(0xF0, 4, 0xFFFFFF00)
    device.io_write(0x100, 4, 0x104)                    # 32-bit, enabled, edge, route 0
    device.io_write(0x108, 4, 0x10)                     # past the wrap
    device.io_write(0x10, 4, 1)
    assert device.next_event_ns() == 0xFF * 10          # the wrap (QEMU's wrap_flag)
    clock.ns = 0xFF * 10
    device.advance(clock.ns)
    assert lines[:2] == [(0, True), (0, False)]         # an edge pulses
    assert device.next_event_ns() == clock.ns + (0x10 - ((0xFFFFFF00 + 0xFF) & 0xFFFFFFFF) & 0xFFFFFFFF) * 10


def test_hpet_legacy_mode_routes_timers_0_and_1_and_cuts_the_rtc_off():
    device, clock, lines = hpet()
    rtc = []
    device.rtc_irq = rtc.append
    device.rtc_input(True)
    assert rtc == [True]
    device.io_write(0x10, 4, 3)                         # enabled, legacy replacement
    assert device.legacy and lines == [(0, False), (8, False)]
    device.rtc_input(False)
    assert rtc == [True]                                # cut off
    device.io_write(0x120, 4, 0x4)
    device.io_write(0x128, 4, 5)
    clock.ns = 50
    device.advance(clock.ns)
    assert lines[-2:] == [(8, True), (8, False)]        # timer 1 on IRQ8
    device.io_write(0x10, 4, 1)                         # legacy off: IRQ8 gets the RTC's level
    assert lines[-1] == (8, False)


# -- reading a free-running counter sees the instructions since the last read -----------------------
# 20,000 loop instructions between two reads of the PM timer, then of the HPET's counter (about 200
# us at the virtual clock's 100.2 MHz: 716 PM ticks, 20,000 HPET ticks). Each delta must be more
# than 1 us (any machine takes that long for 20,000 instructions) and under 10 ms. Before reads
# saw the instructions of the run going on (VirtualClock.now), both reads of a run bounded by
# nothing near (the PIT's next edge, 55 ms on) gave the time at its start: 0 PM ticks, and 1
# HPET tick (its reads never agree).
TIMED_LOOP_PROBE = """
    mov esp, 0x7000
    mov dword ptr [0xfed00010], 1
    mov dx, 0x608
    in eax, dx
    mov ebx, eax
    mov ecx, 10000
pm_loop:
    dec ecx
    jnz pm_loop
    in eax, dx
    sub eax, ebx
    and eax, 0xffffff
    cmp eax, 4
    seta al
    call hex8
    mov dx, 0x608
    in eax, dx
    sub eax, ebx
    and eax, 0xffffff
    cmp eax, 35795
    setb al
    call hex8
    mov ebx, dword ptr [0xfed000f0]
    mov ecx, 10000
hpet_loop:
    dec ecx
    jnz hpet_loop
    mov eax, dword ptr [0xfed000f0]
    sub eax, ebx
    cmp eax, 100
    seta al
    call hex8
    cmp eax, 1000000
    setb al
    call hex8
    call nl
""" + EXIT0 + HEX


@pytest.mark.parametrize("mode", MODES)
def test_counter_reads_see_the_instructions_run_since(tmp_path, mode):
    result, output, _vm = run_source(tmp_path, TIMED_LOOP_PROBE, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT, result.message
    assert output == b"01010101\n"


@needs_qemu
def test_timed_loop_probe_under_qemu(tmp_path):
    assert run_qemu_source(tmp_path, TIMED_LOOP_PROBE).stdout == b"01010101\n"
