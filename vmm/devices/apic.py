"""The local APIC of the one CPU at 0xFEE00000 and its IA32_APIC_BASE MSR, as QEMU 7.2's userspace model (hw/intc/apic.c, apic_common.c) behaves after SeaBIOS: registers, priorities, EOI, self-IPIs and its timer on guest time."""

from __future__ import annotations

from typing import Callable, Optional

from vmm.x86 import MSR_APIC_BASE

APIC_BASE = 0xFEE00000
# QEMU's "apic-msi" region: the registers repeat every 4 KiB for reads; a write above 0xFFF, or to
# the first 16 bytes, is an MSI message (address, data), as on QEMU.
APIC_SIZE = 0x100000
APIC_BASE_BSP = 1 << 8
APIC_BASE_ENABLE = 1 << 11
APIC_VERSION = 0x14                     # QEMU's "version" property: an integrated (xAPIC) APIC
LVT_COUNT = 6                           # timer, thermal, performance, LINT0, LINT1, error
LVT_TIMER, LVT_THERMAL, LVT_PERF, LVT_LINT0, LVT_LINT1, LVT_ERROR = range(LVT_COUNT)
LVT_MASKED = 1 << 16
LVT_LEVEL_TRIGGER = 1 << 15
LVT_TIMER_PERIODIC = 1 << 17            # QEMU looks at no other mode bit: TSC-deadline (mode 2) is
                                        # not offered (CPUID.1:ECX[24] clear) and counts as one-shot
SVR_ENABLE = 1 << 8
SVR_DIRECTED_EOI = 1 << 12
ESR_ILLEGAL_ADDRESS = 1 << 7
# Delivery modes (LVT, ICR, MSI data, I/O APIC entries).
DM_FIXED, DM_LOWEST, DM_SMI, DM_NMI, DM_INIT, DM_SIPI, DM_EXTINT = 0, 1, 2, 4, 5, 6, 7
TRIGGER_EDGE, TRIGGER_LEVEL = 0, 1

# What SeaBIOS leaves behind it at the Multiboot entry under QEMU 7.2 (measured with a probe
# guest, tests/test_apic.py): the APIC software-enabled with spurious vector 0xFF, LINT0 in
# ExtINT mode (the PIC's INTR comes through it: virtual wire mode) and LINT1 as NMI, both marked
# level triggered, and the ICR as its last start-up IPI to the other processors left it.
BOOT_SPURIOUS = 0x1FF
BOOT_LINT0 = 0x8700
BOOT_LINT1 = 0x8400
BOOT_ICR = 0x000C4610


def _highest(bits: int) -> int:
    """The highest vector set in a 256-bit register (IRR, ISR, TMR), or -1."""
    return bits.bit_length() - 1


class LocalApic:
    """One CPU's local APIC, register for register QEMU's. Time comes from `now_ns()`: guest time in
    nanoseconds, QEMU's virtual clock, at which the timer counts once per (1 << count_shift) ns.
    Nothing here is pushed to the CPU: INTR (`intr`) is asked for when the CPU looks, as the run
    loop's interrupt window does. `ioapic_eoi(vector)` receives the EOI of a level-triggered
    interrupt (QEMU's ioapic_eoi_broadcast), `pic_output()` is the PIC pair's INT line on LINT0."""

    name = "apic"

    def __init__(self, now_ns: Callable[[], int]) -> None:
        self.now_ns = now_ns
        self.ioapic_eoi: Callable[[int], None] = lambda vector: None
        self.pic_output: Callable[[], bool] = lambda: False        # the PIC pair's INT line
        self.raise_nmi: Callable[[], None] = lambda: None          # the CPU's NMI pin
        self.unmodelled: dict[str, int] = {}       # deliveries the monitor drops (SMI, INIT)
        self.reset()
        # SeaBIOS's state at the Multiboot entry (see BOOT_*).
        self.spurious_vec = BOOT_SPURIOUS
        self.lvt[LVT_LINT0], self.lvt[LVT_LINT1] = BOOT_LINT0, BOOT_LINT1
        self.icr = [BOOT_ICR, 0]

    def reset(self) -> None:
        """QEMU's apic_reset_common for the bootstrap processor (then apic_init_reset)."""
        self.apicbase = APIC_BASE | APIC_BASE_BSP | APIC_BASE_ENABLE
        self.id = 0
        self.arb_id = 0
        self.cpuid_apic = True                     # CPUID.1:EDX[9]: cleared for good with the global enable
        self.tpr = 0
        self.spurious_vec = 0xFF
        self.log_dest = 0
        self.dest_mode = 0xF
        self.isr = self.tmr = self.irr = 0         # 256-bit registers as integers: bit n is vector n
        self.lvt = [LVT_MASKED] * LVT_COUNT
        self.lvt[LVT_LINT0] = DM_EXTINT << 8       # the BSP's LINT0 as QEMU resets it
        self.esr = 0
        self.icr = [0, 0]
        self.divide_conf = 0
        self.count_shift = 0
        self.initial_count = 0
        self.initial_count_load_time = 0
        self.next_time: Optional[int] = None       # ns of the timer's next expiry (None: not armed)

    # -- IA32_APIC_BASE and CPUID ------------------------------------------------------------------
    @property
    def globally_enabled(self) -> bool:
        return bool(self.apicbase & APIC_BASE_ENABLE)

    def read_msr(self) -> int:
        return self.apicbase

    def write_msr(self, value: int) -> None:
        """QEMU 7.2's apic_set_base: the base may move (the registers stay at 0xFEE00000, as on
        QEMU), the BSP bit is the CPU's; clearing the enable bit disables the APIC for good (a
        later write cannot set it again: QEMU follows the P6 family), clears CPUID's APIC bit and
        the software enable."""
        self.apicbase = (value & 0xFFFFF000) | (self.apicbase & (APIC_BASE_BSP | APIC_BASE_ENABLE))
        if not value & APIC_BASE_ENABLE:
            self.apicbase &= ~APIC_BASE_ENABLE
            self.cpuid_apic = False
            self.spurious_vec &= ~SVR_ENABLE

    # -- priorities (apic_get_ppr, apic_irq_pending) -------------------------------------------
    @property
    def ppr(self) -> int:
        isrv = max(_highest(self.isr), 0) >> 4
        return self.tpr if self.tpr >> 4 >= isrv else isrv << 4

    def irq_pending(self) -> int:
        """QEMU's apic_irq_pending: the highest requested vector if it beats the processor priority
        (> 0), -1 if one waits below it, 0 if none (or the APIC is software-disabled)."""
        if not self.spurious_vec & SVR_ENABLE:
            return 0
        irrv = _highest(self.irr)
        if irrv < 0:
            return 0
        ppr = self.ppr
        if ppr and (irrv & 0xF0) <= (ppr & 0xF0):
            return -1
        return irrv

    def accepts_pic(self) -> bool:
        """QEMU's apic_accept_pic_intr: the PIC's INTR is taken through LINT0 when the APIC is
        globally disabled or LINT0 is unmasked (in whatever mode)."""
        return not self.globally_enabled or not self.lvt[LVT_LINT0] & LVT_MASKED

    def pic_intr(self) -> bool:
        """Whether the PIC pair's INTR reaches the CPU's INTR pin now: accepted, and LINT0
        delivering it as ExtINT (QEMU's apic_local_deliver drops it while LINT0 is masked, even
        with the APIC globally disabled)."""
        lint0 = self.lvt[LVT_LINT0]
        return self.pic_output() and self.accepts_pic() and not lint0 & LVT_MASKED \
            and (lint0 >> 8) & 7 == DM_EXTINT

    @property
    def intr(self) -> bool:
        """The CPU's INTR line as QEMU raises CPU_INTERRUPT_HARD: an APIC vector above the
        processor priority, or the PIC's INTR through LINT0."""
        return self.irq_pending() > 0 or self.pic_intr()

    def get_interrupt(self) -> int:
        """QEMU's apic_get_interrupt at the CPU's interrupt acknowledge: the APIC's vector (IRR to
        ISR), the spurious vector if the request fell below the priority meanwhile, or -1 when the
        PIC is to answer (nothing here, or an ExtINT from the PIC, which ignores priorities)."""
        if not self.spurious_vec & SVR_ENABLE:
            return -1
        vector = self.irq_pending()
        if vector == 0 or (self.pic_output() and self.accepts_pic() and self._pic_delivered()):
            return -1
        if vector < 0:
            return self.spurious_vec & 0xFF
        self.irr &= ~(1 << vector)
        self.isr |= 1 << vector
        return vector

    def _pic_delivered(self) -> bool:
        """QEMU's apic_check_pic, once the PIC's INTR is accepted: LINT0 delivers it (an ExtINT
        raises INTR; a fixed vector is requested here)."""
        self.local_deliver(LVT_LINT0)
        return True

    # -- requests ---------------------------------------------------------------------------------
    def set_irq(self, vector: int, trigger: int) -> None:
        """QEMU's apic_set_irq: request `vector` (TMR records a level-triggered one)."""
        bit = 1 << vector
        self.irr |= bit
        if trigger:
            self.tmr |= bit
        else:
            self.tmr &= ~bit

    def local_deliver(self, lvt_index: int) -> None:
        """QEMU's apic_local_deliver: an LVT source fires through its entry."""
        lvt = self.lvt[lvt_index]
        if lvt & LVT_MASKED:
            return
        mode = (lvt >> 8) & 7
        if mode == DM_FIXED:
            level = lvt_index in (LVT_LINT0, LVT_LINT1) and lvt & LVT_LEVEL_TRIGGER
            self.set_irq(lvt & 0xFF, TRIGGER_LEVEL if level else TRIGGER_EDGE)
        elif mode == DM_NMI:
            self.raise_nmi()
        elif mode != DM_EXTINT:                   # ExtINT: INTR follows the PIC (pic_intr)
            self._unmodelled(mode)

    def _unmodelled(self, mode: int) -> None:
        name = {DM_SMI: "smi", DM_INIT: "init"}.get(mode, f"mode {mode}")
        self.unmodelled[name] = self.unmodelled.get(name, 0) + 1

    def _matches(self, dest: int, dest_mode: int) -> bool:
        """QEMU's apic_get_delivery_bitmask for the one APIC: physical destination (its ID or
        0xFF) or logical (flat model: a bit in common; cluster model: same cluster, a bit)."""
        if dest_mode == 0:
            return dest == 0xFF or dest == self.id
        if self.dest_mode == 0xF:
            return bool(dest & self.log_dest)
        if self.dest_mode == 0:
            return (dest & 0xF0) == (self.log_dest & 0xF0) and bool(dest & self.log_dest & 0x0F)
        return False

    def deliver_irq(self, dest: int, dest_mode: int, delivery_mode: int, vector: int, trigger: int) -> None:
        """An interrupt message on the APIC bus (QEMU's apic_deliver_irq: an I/O APIC entry or an
        MSI), to this APIC if the destination names it."""
        if self._matches(dest, dest_mode):
            self._bus_deliver(delivery_mode, vector, trigger)

    def _bus_deliver(self, delivery_mode: int, vector: int, trigger: int) -> None:
        if delivery_mode in (DM_FIXED, DM_LOWEST, DM_EXTINT):
            self.set_irq(vector, trigger)
        elif delivery_mode == DM_NMI:
            self.raise_nmi()
        elif delivery_mode in (DM_SMI, DM_INIT):
            self._unmodelled(delivery_mode)

    def _send_ipi(self) -> None:
        """QEMU's apic_deliver for an ICR write: the destination shorthand, then the message."""
        low = self.icr[0]
        shorthand = (low >> 18) & 3
        delivery_mode, vector, trigger = (low >> 8) & 7, low & 0xFF, (low >> 15) & 1
        if shorthand == 0:
            to_self = self._matches((self.icr[1] >> 24) & 0xFF, (low >> 11) & 1)
        else:
            to_self = shorthand in (1, 2)          # self, all including self; 3: all but self
        if delivery_mode == DM_INIT and not (low >> 14) & 1 and trigger:
            if to_self:                          # INIT level de-assert: arbitration IDs
                self.arb_id = self.id
            return
        if not to_self:
            return                               # no other processor
        if delivery_mode == DM_SIPI:
            return                               # the BSP never waits for a start-up IPI
        self._bus_deliver(delivery_mode, vector, trigger)

    def _send_msi(self, address: int, data: int) -> None:
        """QEMU's apic_send_msi: an MSI message written into the APIC's range."""
        self.deliver_irq((address >> 12) & 0xFF, (address >> 2) & 1, (data >> 8) & 7, data & 0xFF,
                         (data >> 15) & 1)

    def eoi(self) -> None:
        """QEMU's apic_eoi: the highest in-service vector ends; a level-triggered one is broadcast
        to the I/O APIC (unless directed EOI, which QEMU's 9-bit SVR never enables)."""
        isrv = _highest(self.isr)
        if isrv < 0:
            return
        self.isr &= ~(1 << isrv)
        if not self.spurious_vec & SVR_DIRECTED_EOI and self.tmr >> isrv & 1:
            self.ioapic_eoi(isrv)

    # -- the timer (apic_next_timer, apic_get_current_count) --------------------------------------
    def _next_timer(self, now: int) -> Optional[int]:
        """The ns of the next expiry after `now` (None: none): one-shot, one tick after the count
        reaches 0; periodic, every initial_count + 1 ticks from the load."""
        if self.lvt[LVT_TIMER] & LVT_MASKED:
            return None
        ticks = (now - self.initial_count_load_time) >> self.count_shift
        period = self.initial_count + 1
        if self.lvt[LVT_TIMER] & LVT_TIMER_PERIODIC:
            if not self.initial_count:
                return None
            ticks = (ticks // period + 1) * period
        else:
            if ticks >= self.initial_count:
                return None
            ticks = period
        return self.initial_count_load_time + (ticks << self.count_shift)

    def _timer_update(self, now: int) -> None:
        self.next_time = self._next_timer(now)

    def current_count(self) -> int:
        ticks = (self.now_ns() - self.initial_count_load_time) >> self.count_shift
        if self.lvt[LVT_TIMER] & LVT_TIMER_PERIODIC:
            return (self.initial_count - ticks % (self.initial_count + 1)) & 0xFFFFFFFF
        return 0 if ticks >= self.initial_count else self.initial_count - ticks

    def advance(self, now: int) -> bool:
        """Guest time reached `now` ns: a timer expiry on the way fires through the timer's LVT
        entry (several are one request: IRR is one bit). Whether one fired."""
        if self.next_time is None or self.next_time > now:
            return False
        self.local_deliver(LVT_TIMER)
        self._timer_update(now)
        return True

    # -- registers ----------------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        if size == 8:                    # split as QEMU's memory core splits it (4 bytes at most)
            return self.io_read(offset, 4) | self.io_read(offset + 4, 4) << 32
        if size < 4:                     # QEMU's apic_mem_read: narrower reads give 0
            return 0
        index = (offset >> 4) & 0xFF
        if index == 0x02:
            return self.id << 24
        if index == 0x03:
            return APIC_VERSION | (LVT_COUNT - 1) << 16
        if index == 0x08:
            return self.tpr
        if index == 0x09:
            return 0                     # arbitration priority: QEMU does no arbitration
        if index == 0x0A:
            return self.ppr
        if index == 0x0B:
            return 0                     # EOI
        if index == 0x0D:
            return self.log_dest << 24
        if index == 0x0E:
            return self.dest_mode << 28 | 0x0FFFFFFF
        if index == 0x0F:
            return self.spurious_vec
        if 0x10 <= index <= 0x27:
            register = (self.isr, self.tmr, self.irr)[(index - 0x10) >> 3]
            return (register >> (32 * (index & 7))) & 0xFFFFFFFF
        if index == 0x28:
            return self.esr
        if index in (0x30, 0x31):
            return self.icr[index & 1]
        if 0x32 <= index <= 0x37:
            return self.lvt[index - 0x32]
        if index == 0x38:
            return self.initial_count
        if index == 0x39:
            return self.current_count()
        if index == 0x3E:
            return self.divide_conf
        self.esr |= ESR_ILLEGAL_ADDRESS
        return 0

    def io_write(self, offset: int, size: int, value: int) -> None:
        if size == 8:
            self.io_write(offset, 4, value & 0xFFFFFFFF)
            self.io_write(offset + 4, 4, value >> 32)
            return
        if size < 4:                     # QEMU's apic_mem_write ignores narrower writes
            return
        index = (offset >> 4) & 0xFF
        if offset > 0xFFF or index == 0:
            self._send_msi(APIC_BASE + offset, value)
            return
        if index == 0x02:
            self.id = (value >> 24) & 0xFF
        elif index in (0x03, 0x09, 0x0A, 0x39) or 0x10 <= index <= 0x28:
            pass                         # read-only: version, APR, PPR, ISR/TMR/IRR, ESR, current count
        elif index == 0x08:
            self.tpr = value & 0xFF
        elif index == 0x0B:
            self.eoi()
        elif index == 0x0D:
            self.log_dest = (value >> 24) & 0xFF
        elif index == 0x0E:
            self.dest_mode = (value >> 28) & 0xF
        elif index == 0x0F:
            self.spurious_vec = value & 0x1FF
        elif index == 0x30:
            self.icr[0] = value
            self._send_ipi()
        elif index == 0x31:
            self.icr[1] = value
        elif 0x32 <= index <= 0x37:
            n = index - 0x32
            self.lvt[n] = value
            if n == LVT_TIMER:
                self._timer_update(self.now_ns())
            elif n == LVT_LINT0 and self.pic_output() and self.accepts_pic():
                self.local_deliver(LVT_LINT0)         # QEMU's apic_check_pic
        elif index == 0x38:
            self.initial_count = value
            self.initial_count_load_time = self.now_ns()
            self._timer_update(self.initial_count_load_time)
        elif index == 0x3E:
            # QEMU leaves the armed expiry where it was: only later reads and loads see the new divisor
            self.divide_conf = value & 0xB
            v = (self.divide_conf & 3) | ((self.divide_conf >> 1) & 4)
            self.count_shift = (v + 1) & 7
        else:
            self.esr |= ESR_ILLEGAL_ADDRESS

    def state(self) -> dict:
        def vectors(bits: int) -> list[int]:
            return [vector for vector in range(256) if bits >> vector & 1]
        return {
            "apic_base": self.apicbase, "id": self.id, "version": APIC_VERSION | (LVT_COUNT - 1) << 16,
            "tpr": self.tpr, "ppr": self.ppr, "ldr": self.log_dest << 24, "dfr": self.dest_mode << 28 | 0x0FFFFFFF,
            "spurious": self.spurious_vec, "isr": vectors(self.isr), "tmr": vectors(self.tmr),
            "irr": vectors(self.irr), "esr": self.esr, "icr": self.icr[1] << 32 | self.icr[0],
            "lvt": {name: self.lvt[i] for i, name in enumerate(("timer", "thermal", "perf", "lint0", "lint1", "error"))},
            "timer": {"initial_count": self.initial_count, "divide_config": self.divide_conf,
                      "current_count": self.current_count(), "next_expiry_ns": self.next_time},
            "cpuid_apic": self.cpuid_apic, "unmodelled_deliveries": dict(sorted(self.unmodelled.items())),
        }
