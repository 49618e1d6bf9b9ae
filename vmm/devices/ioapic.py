"""The I/O APIC at 0xFEC00000 (QEMU 7.2's hw/intc/ioapic.c): version 0x20 with 24 pins, every entry masked until the guest programs it; the ISA IRQs arrive on pins as on QEMU's pc machine (IRQ0 on pin 2) and leave as messages to the local APIC."""

from __future__ import annotations

from typing import Callable

IOAPIC_BASE = 0xFEC00000
IOAPIC_SIZE = 0x1000
IOAPIC_VERSION = 0x20
IOAPIC_PINS = 24
IOREGSEL, IOWIN, IOAPIC_EOI = 0x00, 0x10, 0x40
REG_ID, REG_VER, REG_ARB, REG_REDTBL = 0x00, 0x01, 0x02, 0x10
ENTRY_MASKED = 1 << 16
ENTRY_LEVEL = 1 << 15
ENTRY_REMOTE_IRR = 1 << 14
ENTRY_DELIVERY_STATUS = 1 << 12
ENTRY_READ_ONLY = ENTRY_REMOTE_IRR | ENTRY_DELIVERY_STATUS
DM_EXTINT = 7


def isa_pin(irq: int) -> int:
    """The pin an ISA IRQ reaches (QEMU's ioapic_set_irq: GSIs are the IRQs but for IRQ0 on 2)."""
    return 2 if irq == 0 else irq


class IoApic:
    """QEMU's I/O APIC register for register. `deliver(dest, dest_mode, delivery_mode, vector,
    trigger)` is the message to the local APICs (QEMU writes it as an MSI); `pic_read_irq()`
    acknowledges the PIC for an ExtINT entry, as QEMU does when it services one."""

    name = "ioapic"

    def __init__(self, deliver: Callable[[int, int, int, int, int], None],
                 pic_read_irq: Callable[[], int] = lambda: 0) -> None:
        self.deliver = deliver
        self.pic_read_irq = pic_read_irq
        self.id = 0
        self.ioregsel = 0
        self.irr = 0
        self.levels = 0                      # each input pin's line as last driven (state only)
        self.table = [ENTRY_MASKED] * IOAPIC_PINS

    # -- inputs -------------------------------------------------------------------------------------
    def set_irq(self, pin: int, level: bool) -> None:
        """Drive input `pin`. QEMU's ioapic_set_irq: a level-triggered pin requests while its line
        is high (again once the EOI clears remote IRR); an edge-triggered one each time its line
        is driven high, raised already or not (QEMU keeps no line state for them: a device that
        raises its IRQ again, as QEMU's serial does on every register access with an interrupt
        pending, requests again), and not while it is masked (the 82093AA ignores edges on
        masked pins)."""
        if not 0 <= pin < IOAPIC_PINS:
            return
        mask = 1 << pin
        self.levels = self.levels | mask if level else self.levels & ~mask
        entry = self.table[pin]
        if entry & ENTRY_LEVEL:
            if level:
                self.irr |= mask
                if not entry & ENTRY_REMOTE_IRR:
                    self.service()
            else:
                self.irr &= ~mask
        elif level and not entry & ENTRY_MASKED:
            self.irr |= mask
            self.service()

    def service(self) -> None:
        """QEMU's ioapic_service: every requesting unmasked pin sends its message; a level-
        triggered one sets remote IRR and sends nothing more until the EOI."""
        for pin in range(IOAPIC_PINS):
            mask = 1 << pin
            if not self.irr & mask:
                continue
            entry = self.table[pin]
            if entry & ENTRY_MASKED:
                continue
            if entry & ENTRY_LEVEL:
                if entry & ENTRY_REMOTE_IRR:
                    continue
                self.table[pin] |= ENTRY_REMOTE_IRR
            else:
                self.irr &= ~mask
            delivery_mode = (entry >> 8) & 7
            vector = self.pic_read_irq() if delivery_mode == DM_EXTINT else entry & 0xFF
            self.deliver((entry >> 56) & 0xFF, (entry >> 11) & 1, delivery_mode, vector & 0xFF,
                         int(bool(entry & ENTRY_LEVEL)))

    def eoi(self, vector: int) -> None:
        """QEMU's ioapic_eoi_broadcast: the local APIC's EOI of a level-triggered `vector` clears
        remote IRR of the entries holding it; a line still high requests again."""
        for pin in range(IOAPIC_PINS):
            entry = self.table[pin]
            if entry & 0xFF != vector or not entry & ENTRY_LEVEL or not entry & ENTRY_REMOTE_IRR:
                continue
            self.table[pin] = entry & ~ENTRY_REMOTE_IRR
            if not entry & ENTRY_MASKED and self.irr & (1 << pin):
                self.service()

    # -- registers ------------------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        offset &= 0xFF
        if offset == IOREGSEL:
            return self.ioregsel
        if offset != IOWIN or size != 4:
            return 0
        if self.ioregsel in (REG_ID, REG_ARB):
            return self.id << 24
        if self.ioregsel == REG_VER:
            return IOAPIC_VERSION | (IOAPIC_PINS - 1) << 16
        index = (self.ioregsel - REG_REDTBL) >> 1
        if 0 <= index < IOAPIC_PINS:
            return (self.table[index] >> (32 if self.ioregsel & 1 else 0)) & 0xFFFFFFFF
        return 0

    def io_write(self, offset: int, size: int, value: int) -> None:
        offset &= 0xFF
        if offset == IOREGSEL:
            self.ioregsel = value & 0xFF
            return
        if offset == IOAPIC_EOI:
            if size == 4:                # the explicit EOI of version 0x20
                self.eoi(value & 0xFF)
            return
        if offset != IOWIN or size != 4:
            return
        if self.ioregsel == REG_ID:
            self.id = (value >> 24) & 0xF
            return
        index = (self.ioregsel - REG_REDTBL) >> 1
        if not 0 <= index < IOAPIC_PINS:
            return                       # version, arbitration: read-only
        entry = self.table[index]
        read_only = entry & ENTRY_READ_ONLY
        if self.ioregsel & 1:
            entry = (entry & 0xFFFFFFFF) | (value & 0xFFFFFFFF) << 32
        else:
            entry = (entry & ~0xFFFFFFFF) | (value & 0xFFFFFFFF)
        entry = (entry & ~ENTRY_READ_ONLY) | read_only
        if not entry & ENTRY_LEVEL:      # an edge-triggered entry has no remote IRR (QEMU keeps
            entry &= ~ENTRY_REMOTE_IRR   # Linux's edge/level toggle working this way)
        self.table[index] = entry
        self.service()

    def state(self) -> dict:
        return {"id": self.id, "version": IOAPIC_VERSION | (IOAPIC_PINS - 1) << 16, "ioregsel": self.ioregsel,
                "irr": self.irr, "redirection": [entry for entry in self.table]}
