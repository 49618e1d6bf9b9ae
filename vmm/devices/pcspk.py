"""The PC speaker's port B (0x61) as QEMU's hw/audio/pcspk.c models it: PIT channel 2's gate and
OUT, which Linux and firmware time themselves with (the TSC calibration against the PIT, the
ACPI PM timer's rate check: channel 2 counts down in mode 0 while the guest polls bit 5), the
speaker's data enable, and a refresh bit that toggles on every read. No sound."""

from __future__ import annotations

PORT_B = 0x61
GATE2, SPEAKER_DATA, REFRESH, OUT2 = 0x01, 0x02, 0x10, 0x20


class PcSpeaker:
    """Port B over the PIT's channel 2. The platform brings the PIT to the clock before each
    access (InterruptPlatform.chip_access), so OUT is read, and the gate set, at the
    instruction's own time."""

    name = "pcspk"
    access_width = 1
    PIT_CHANNEL = 2

    def __init__(self, pit) -> None:
        self.pit = pit
        self.data_on = 0
        self.refresh = 0

    def io_read(self, offset: int, size: int) -> int:
        self.refresh ^= REFRESH                 # QEMU's dummy_refresh_clock
        channel = self.pit.channels[self.PIT_CHANNEL]
        return ((GATE2 if channel.gate else 0) | self.data_on << 1 | self.refresh
                | (OUT2 if self.pit.channel_out(self.PIT_CHANNEL) else 0))

    @staticmethod
    def reads_clock(offset: int) -> bool:
        """Every read: bit 5 is channel 2's OUT now (InterruptPlatform.reads_clock)."""
        return True

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.data_on = value >> 1 & 1
        self.pit.set_gate(self.PIT_CHANNEL, bool(value & GATE2))

    def state(self) -> dict:
        return {"gate2": self.pit.channels[self.PIT_CHANNEL].gate, "data_on": self.data_on}
