"""The ACPI registers of QEMU's PIIX4 power-management function where SeaBIOS puts them (PMBA 0x600: PM1a event and control blocks, the 24-bit PM timer; GPE0 at 0xAFE0) and the APM control port 0xB2/0xB3 (QEMU's hw/acpi/core.c, piix4.c, hw/isa/apm.c), on guest time."""

from __future__ import annotations

from typing import Callable, Optional

PM_BASE = 0x600                 # SeaBIOS writes it to the PIIX4 PM function's PMBA (00:01.3, 0x40)
PM_PORTS = 0x40                 # QEMU's "piix4-pm" I/O region: 64 bytes, three registers in it
PM_EVT, PM_CNT, PM_TMR = 0x00, 0x04, 0x08
GPE0_BASE, GPE0_LENGTH = 0xAFE0, 4
APM_BASE, APM_PORTS = 0xB2, 2
SCI_IRQ = 9
PM_TIMER_HZ = 3579545
NS_PER_SECOND = 10 ** 9

# PM1 status / enable bits (ACPI 1.0, QEMU's ACPI_BITMASK_*)
TMR_STS, GBL_STS, PWRBTN_STS, RTC_STS, WAK_STS = 1 << 0, 1 << 5, 1 << 8, 1 << 10, 1 << 15
TMR_EN, GBL_EN, PWRBTN_EN, RTC_EN = 1 << 0, 1 << 5, 1 << 8, 1 << 10
SCI_EVENTS = TMR_EN | GBL_EN | PWRBTN_EN | RTC_EN
# PM1 control
SCI_EN, SLP_EN = 1 << 0, 1 << 13
SLP_TYP_SHIFT = 10
S3_SLP_TYP, S4_SLP_TYP = 1, 2   # QEMU's piix4: SLP_TYP 0 is soft off, 1 suspend, its s4_val (2) S4
ACPI_ENABLE, ACPI_DISABLE = 0xF1, 0xF0
APM_CONTROL_AT_ENTRY = 0xB5     # what SeaBIOS last wrote to 0xB2 (measured under QEMU 7.2)
UNASSIGNED = 0xFFFFFFFF


class AcpiPm:
    """PIIX4 PM's I/O space at PM_BASE (64 ports): PM1a_EVT (status, write 1 to clear; enable) at
    +0, PM1a_CNT at +4, PM_TMR at +8; the rest of the region unassigned (all ones), as QEMU's
    container. Accesses are QEMU's: PM1 event and control take 1- and 2-byte accesses (a byte is
    widened to a 2-byte access of its own address: the event block answers only at its even
    offsets, the control register ignores the address), 4-byte ones read 0 and are dropped; the
    timer answers any width at any of its four ports with its low bits.

    `now_ns()` is guest time (QEMU's virtual clock); `set_sci(level)` drives IRQ 9; a write of
    SLP_EN calls `power_off()` (SLP_TYP 0 and S4) or `suspend()` (S3), as QEMU's
    acpi_pm1_cnt_write requests a shutdown or a suspend."""

    name = "acpi_pm"
    access_width = 4

    def __init__(self, now_ns: Callable[[], int], set_sci: Optional[Callable[[bool], None]] = None,
                 power_off: Callable[[str], None] = lambda why: None,
                 suspend: Callable[[str], None] = lambda why: None) -> None:
        self.now_ns, self.set_sci = now_ns, set_sci
        self.power_off, self.suspend = power_off, suspend
        self.sts = 0
        self.en = 0
        self.cnt = 0
        self.overflow_time = 0          # PM timer ticks: TMR_STS is set once the count reaches it
        self.gpe = bytearray(GPE0_LENGTH)   # status (write 1 to clear) then enable, a byte each
        self.sci_level = False
        self.armed_ns: Optional[int] = None  # when the timer's overflow raises the SCI (TMR_EN)

    # -- the timer ---------------------------------------------------------------------------------
    def ticks(self) -> int:
        """QEMU's acpi_pm_tmr_get_clock: guest nanoseconds at 3.579545 MHz."""
        return self.now_ns() * PM_TIMER_HZ // NS_PER_SECOND

    def status(self) -> int:
        """PM1a_STS (QEMU's acpi_pm1_evt_get_sts): TMR_STS comes on when the count has reached the
        overflow time (bit 23 toggled since the last clear; 0 at reset, so it reads set at first)."""
        if self.ticks() >= self.overflow_time:
            self.sts |= TMR_STS
        return self.sts

    def _update_sci(self) -> None:
        """QEMU's pm_update_sci: the SCI is high while an enabled status is set (or a GPE); the
        overflow is armed while TMR_EN is set and TMR_STS clear."""
        status = self.status()
        level = bool(status & self.en & SCI_EVENTS) or bool(self.gpe[0] & self.gpe[2] or self.gpe[1] & self.gpe[3])
        if level != self.sci_level:
            self.sci_level = level
            if self.set_sci:
                self.set_sci(level)
        if self.en & TMR_EN and not status & TMR_STS:
            # the first nanosecond at which the count reaches the overflow time
            self.armed_ns = -(-self.overflow_time * NS_PER_SECOND // PM_TIMER_HZ)
        else:
            self.armed_ns = None

    def reads_clock(self, offset: int) -> bool:
        return PM_TMR <= offset < PM_TMR + 4

    def next_event_ns(self) -> Optional[int]:
        return self.armed_ns

    def advance(self, now_ns: int) -> None:
        if self.armed_ns is not None and now_ns >= self.armed_ns:
            self._update_sci()

    # -- ports ---------------------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        if PM_TMR <= offset < PM_TMR + 4:
            return self.ticks() & 0xFFFFFF
        if offset >= PM_TMR + 4:
            return UNASSIGNED
        if size == 4:
            return 0                    # wider than the register takes: QEMU's invalid access
        if offset < PM_EVT + 4:
            if offset == PM_EVT:
                return self.status()
            return self.en if offset == PM_EVT + 2 else 0
        if offset < PM_CNT + 2:
            return self.cnt >> (8 * (offset - PM_CNT))
        return UNASSIGNED

    def io_write(self, offset: int, size: int, value: int) -> None:
        if size == 4 or offset >= PM_TMR:
            return                      # the timer is read-only; the rest is unassigned
        if offset == PM_EVT:
            status = self.status()
            if status & value & TMR_STS:
                self.overflow_time = (self.ticks() + 0x800000) & ~0x7FFFFF
            self.sts &= ~value
            self._update_sci()
        elif offset == PM_EVT + 2:
            self.en = value & 0xFFFF
            self._update_sci()
        elif PM_CNT <= offset < PM_CNT + 2:
            self._write_control(value & 0xFFFF)

    def _write_control(self, value: int) -> None:
        """QEMU's acpi_pm1_cnt_write: SLP_EN is not kept; with it, SLP_TYP picks the state."""
        self.cnt = value & ~SLP_EN
        if value & SLP_EN:
            sleep_type = (value >> SLP_TYP_SHIFT) & 7
            if sleep_type == 0:
                self.power_off("ACPI S5: PM1a_CNT SLP_TYP 0 with SLP_EN")
            elif sleep_type == S4_SLP_TYP:
                self.power_off("ACPI S4: PM1a_CNT SLP_TYP 2 with SLP_EN (QEMU shuts down)")
            elif sleep_type == S3_SLP_TYP:
                self.suspend("ACPI S3 (suspend to RAM): PM1a_CNT SLP_TYP 1 with SLP_EN")

    def apm_control(self, value: int) -> None:
        """A write to the APM control port (0xB2): ACPI_ENABLE/ACPI_DISABLE set or clear SCI_EN
        (QEMU's apm_ctrl_changed; other values raise an SMI there, which is not modelled)."""
        if value == ACPI_ENABLE:
            self.cnt |= SCI_EN
        elif value == ACPI_DISABLE:
            self.cnt &= ~SCI_EN

    def gpe_port(self) -> "Gpe0":
        return Gpe0(self)

    def state(self) -> dict:
        return {"pm1_status": self.sts, "pm1_enable": self.en, "pm1_control": self.cnt,
                "timer_overflow": self.overflow_time, "gpe0": bytes(self.gpe).hex(), "sci": self.sci_level,
                "timer_armed_ns": self.armed_ns}


class Gpe0:
    """The PIIX4's GPE0 block at 0xAFE0 (QEMU's acpi_gpe_ioport_*: byte by byte, two status bytes
    (write 1 to clear) then two enable bytes). No general-purpose event is modelled, so status
    stays 0 but what the guest writes to enable reads back."""

    name = "acpi_gpe0"
    access_width = 1

    def __init__(self, pm: AcpiPm) -> None:
        self.pm = pm

    def io_read(self, offset: int, size: int) -> int:
        return self.pm.gpe[offset]

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset < 2:
            self.pm.gpe[offset] &= ~value & 0xFF
        else:
            self.pm.gpe[offset] = value & 0xFF
        self.pm._update_sci()


class Apm:
    """QEMU's APM device (hw/isa/apm.c) at 0xB2-0xB3: the control byte (a write goes to the PM's
    `apm_control`) and a status byte, both reading back what was last written."""

    name = "apm"
    access_width = 1

    def __init__(self, on_control: Callable[[int], None]) -> None:
        self.on_control = on_control
        self.control = APM_CONTROL_AT_ENTRY
        self.status = 0

    def io_read(self, offset: int, size: int) -> int:
        return self.control if offset == 0 else self.status

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.control = value & 0xFF
            self.on_control(self.control)
        else:
            self.status = value & 0xFF

    def state(self) -> dict:
        return {"control": self.control, "status": self.status}
