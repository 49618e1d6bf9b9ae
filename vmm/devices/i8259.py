"""The i8259A PIC pair as QEMU's hw/intc/i8259.c models it: ICW/OCW programming, cascade."""

from __future__ import annotations

from typing import Callable, Optional

MASTER_BASE = 0x20          # master ports 0x20-0x21, slave 0xA0-0xA1
SLAVE_BASE = 0xA0
PIC_PORTS = 2
CASCADE_IRQ = 2             # the slave's INT output drives master input 2
SPURIOUS_IRQ = 7            # what an INTA cycle reports when the request has vanished
NUM_IRQS = 16

# Offset 0 (command) decoding: bit 4 set = ICW1, else bit 3 set = OCW3, else OCW2.
ICW1_INIT = 0x10
ICW1_IC4 = 0x01             # ICW4 follows
ICW1_SNGL = 0x02            # single chip: no ICW3
ICW1_LTIM = 0x08            # level-triggered mode (QEMU: unimplemented, logged)
OCW3_SELECT = 0x08
OCW3_POLL = 0x04
OCW3_RR = 0x02              # the RIS bit (bit 0) is valid: select IRR (0) or ISR (1)
OCW3_RIS = 0x01
OCW3_ESMM = 0x40            # SMM (bit 5) is valid: set / clear special mask mode
OCW3_SMM = 0x20
ICW4_AEOI = 0x02
ICW4_SFNM = 0x10

# OCW2 commands (bits 7-5)
OCW2_ROTATE_AEOI_CLEAR, OCW2_EOI, OCW2_SPECIFIC_EOI = 0, 1, 3
OCW2_ROTATE_AEOI_SET, OCW2_ROTATE_EOI, OCW2_SET_PRIORITY, OCW2_ROTATE_SPECIFIC_EOI = 4, 5, 6, 7

# init_state: which initialization word the data port (offset 1) expects next
INIT_NONE, INIT_ICW2, INIT_ICW3, INIT_ICW4 = range(4)


class I8259:
    """One 8259A. Inputs are edge triggered unless the (portless) `elcr` bit for the line is set;
    `int_out` is called with the new INT output level whenever it changes."""

    access_width = 1        # byte registers

    def __init__(self, master: bool, name: Optional[str] = None,
                 int_out: Optional[Callable[[bool], None]] = None) -> None:
        self.master = master
        self.name = name or ("pic-master" if master else "pic-slave")
        self.int_out = int_out
        self.output = False
        self.elcr = 0           # QEMU keeps this across ICW1 and ties it to ports 0x4D0/0x4D1
        self.irr = 0
        self.reset()

    def reset(self) -> None:
        """Device reset: ELCR clears too (QEMU pic_reset)."""
        self.elcr = 0
        self._init_reset()

    def _init_reset(self) -> None:
        """What ICW1 resets (QEMU pic_reset_common): everything but ELCR; level IRR bits stay."""
        self.last_irr = 0
        self.irr &= self.elcr
        self.imr = 0
        self.isr = 0
        self.priority_add = 0
        self.irq_base = 0
        self.read_reg_select = 0
        self.poll = False
        self.special_mask = 0
        self.init_state = INIT_NONE
        self.auto_eoi = 0
        self.rotate_on_auto_eoi = 0
        self.special_fully_nested_mode = 0
        self.init4 = 0
        self.single_mode = 0
        self._update_irq()

    # -- priority logic ---------------------------------------------------------------------------
    def _get_priority(self, mask: int) -> int:
        """Highest priority (0 = highest, relative to the rotation) in `mask`; 8 if none."""
        if mask == 0:
            return 8
        priority = 0
        while not mask & (1 << ((priority + self.priority_add) & 7)):
            priority += 1
        return priority

    def get_irq(self) -> int:
        """The input (0-7) this chip wants to deliver, or -1 (QEMU pic_get_irq)."""
        priority = self._get_priority(self.irr & ~self.imr)
        if priority == 8:
            return -1
        # In-service priority; special mask mode ignores masked in-service lines, and in special
        # fully nested mode the master lets further slave requests through the cascade line.
        mask = self.isr
        if self.special_mask:
            mask &= ~self.imr
        if self.special_fully_nested_mode and self.master:
            mask &= ~(1 << CASCADE_IRQ)
        if priority < self._get_priority(mask):
            return (priority + self.priority_add) & 7
        return -1

    def _update_irq(self) -> None:
        level = self.get_irq() >= 0
        if level != self.output:
            self.output = level
            if self.int_out:
                self.int_out(level)

    # -- input side -------------------------------------------------------------------------------
    def set_irq(self, irq: int, level: bool) -> None:
        """Drive input line `irq` (0-7): a rising edge latches IRR (level inputs follow the line)."""
        mask = 1 << irq
        if self.elcr & mask:
            if level:
                self.irr |= mask
                self.last_irr |= mask
            else:
                self.irr &= ~mask
                self.last_irr &= ~mask
        elif level:
            if not self.last_irr & mask:
                self.irr |= mask
            self.last_irr |= mask
        else:
            self.last_irr &= ~mask
        self._update_irq()

    def intack(self, irq: int) -> None:
        """The chip's half of an INTA cycle for input `irq` (QEMU pic_intack)."""
        if self.auto_eoi:
            if self.rotate_on_auto_eoi:
                self.priority_add = (irq + 1) & 7
        else:
            self.isr |= 1 << irq
        if not self.elcr & (1 << irq):      # a level-triggered request stays until the line drops
            self.irr &= ~(1 << irq)
        self._update_irq()

    # -- guest side -------------------------------------------------------------------------------
    def io_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            if value & ICW1_INIT:
                self._init_reset()
                self.init_state = INIT_ICW2
                self.init4 = value & ICW1_IC4
                self.single_mode = value & ICW1_SNGL
                # ICW1_LTIM (level triggered) is not supported, as in QEMU: inputs stay edge.
            elif value & OCW3_SELECT:
                self._write_ocw3(value)
            else:
                self._write_ocw2(value)
        elif self.init_state == INIT_NONE:        # OCW1
            self.imr = value
            self._update_irq()
        elif self.init_state == INIT_ICW2:
            self.irq_base = value & 0xF8
            if self.single_mode:
                self.init_state = INIT_ICW4 if self.init4 else INIT_NONE
            else:
                self.init_state = INIT_ICW3
        elif self.init_state == INIT_ICW3:        # cascade wiring is fixed: the value is ignored
            self.init_state = INIT_ICW4 if self.init4 else INIT_NONE
        else:                                     # ICW4
            self.special_fully_nested_mode = 1 if value & ICW4_SFNM else 0
            self.auto_eoi = 1 if value & ICW4_AEOI else 0
            self.init_state = INIT_NONE

    def _write_ocw3(self, value: int) -> None:
        if value & OCW3_POLL:
            self.poll = True
        if value & OCW3_RR:
            self.read_reg_select = value & OCW3_RIS
        if value & OCW3_ESMM:
            self.special_mask = 1 if value & OCW3_SMM else 0

    def _write_ocw2(self, value: int) -> None:
        command = value >> 5
        if command in (OCW2_ROTATE_AEOI_CLEAR, OCW2_ROTATE_AEOI_SET):
            self.rotate_on_auto_eoi = command >> 2
        elif command in (OCW2_EOI, OCW2_ROTATE_EOI):
            priority = self._get_priority(self.isr)
            if priority != 8:
                irq = (priority + self.priority_add) & 7
                self.isr &= ~(1 << irq)
                if command == OCW2_ROTATE_EOI:
                    self.priority_add = (irq + 1) & 7
                self._update_irq()
        elif command == OCW2_SPECIFIC_EOI:
            self.isr &= ~(1 << (value & 7))
            self._update_irq()
        elif command == OCW2_SET_PRIORITY:
            self.priority_add = (value + 1) & 7
            self._update_irq()
        elif command == OCW2_ROTATE_SPECIFIC_EOI:
            irq = value & 7
            self.isr &= ~(1 << irq)
            self.priority_add = (irq + 1) & 7
            self._update_irq()
        # command 2 is a no-op

    def io_read(self, offset: int, size: int) -> int:
        if self.poll:                 # poll mode: the read is the INTA, on either port
            self.poll = False
            irq = self.get_irq()
            if irq < 0:
                return 0
            self.intack(irq)
            return irq | 0x80
        if offset == 0:
            return self.isr if self.read_reg_select else self.irr
        return self.imr


class PicPair:
    """The PC's master/slave pair, slave INT on master input 2. `int_out` sees the master's INT
    output (the CPU's INTR line) change; the monitor may poll `pending()` instead."""

    def __init__(self, int_out: Optional[Callable[[bool], None]] = None) -> None:
        self.master = I8259(master=True, int_out=int_out)
        self.slave = I8259(master=False,
                           int_out=lambda level: self.master.set_irq(CASCADE_IRQ, level))

    def register(self, bus, master_base: int = MASTER_BASE, slave_base: int = SLAVE_BASE) -> None:
        bus.register(master_base, PIC_PORTS, self.master)
        bus.register(slave_base, PIC_PORTS, self.slave)

    def reset(self) -> None:
        self.slave.reset()
        self.master.reset()

    def set_irq(self, irq: int, level: bool) -> None:
        """Drive ISA line `irq` (0-15); 8-15 reach the master through its input 2."""
        if not 0 <= irq < NUM_IRQS:
            raise ValueError(f"PIC input {irq} is outside 0-15")
        if irq < 8:
            self.master.set_irq(irq, bool(level))
        else:
            self.slave.set_irq(irq - 8, bool(level))

    @property
    def output(self) -> bool:
        """The master's INT output: the CPU's INTR line."""
        return self.master.output

    def pending(self) -> Optional[int]:
        """The vector `acknowledge()` would return now, or None if INTR is low. No side effects."""
        irq = self.master.get_irq()
        if irq < 0:
            return None
        if irq == CASCADE_IRQ:
            irq2 = self.slave.get_irq()
            return self.slave.irq_base + (irq2 if irq2 >= 0 else SPURIOUS_IRQ)
        return self.master.irq_base + irq

    def acknowledge(self) -> int:
        """The INTA cycle (QEMU pic_read_irq): the vector, with ISR set and edge IRR cleared.
        With no request left the master answers spurious IRQ 7 (base + 7) and sets no ISR bit; a
        cascade request gone from the slave gives slave base + 7, yet master ISR 2 is still set."""
        irq = self.master.get_irq()
        if irq < 0:
            return self.master.irq_base + SPURIOUS_IRQ
        if irq == CASCADE_IRQ:
            irq2 = self.slave.get_irq()
            if irq2 >= 0:
                self.slave.intack(irq2)
            else:
                irq2 = SPURIOUS_IRQ
            vector = self.slave.irq_base + irq2
        else:
            vector = self.master.irq_base + irq
        self.master.intack(irq)
        return vector
