"""The IDE/ATA primary channel (0x1F0-0x1F7, 0x3F6, IRQ 14), master and slave hard disks, PIO and bus-master DMA, as QEMU's hw/ide/core.c."""

from __future__ import annotations

from typing import Callable, Optional

from vmm.disks import SECTOR_SIZE, Disk, DiskError
from vmm.dma import DmaRefused

IDE_BASE = 0x1F0             # command block: data, error/features, count, LBA 0-7/8-15/16-23, device, status/command
IDE_PORTS = 8
IDE_CONTROL = 0x3F6          # alternate status (read) / device control (write)
IDE_IRQ = 14

# Status bits (hw/ide/internal.h)
ERR_STAT, DRQ_STAT, SEEK_STAT, DF_STAT, READY_STAT, BUSY_STAT = 0x01, 0x08, 0x10, 0x20, 0x40, 0x80
ABRT_ERR = 0x04
# Device control bits
CTRL_NIEN, CTRL_SRST, CTRL_HOB = 0x02, 0x04, 0x80
DEV_ALWAYS_ON, DEV_SELECT, DEV_LBA, DEV_HEAD = 0xA0, 0x10, 0x40, 0x0F

MAX_MULT_SECTORS = 16        # QEMU's; also the power-on READ/WRITE MULTIPLE block size (ide_reset)
FIRMWARE_VERSION = "2.5+"    # QEMU_HW_VERSION
MODEL = "QEMU HARDDISK"

# End-of-transfer actions (QEMU's end_transfer_func)
_STOP, _READ, _WRITE, _DUMMY = "stop", "read", "write", "dummy"


def geometry(disk: Disk) -> tuple[int, int, int]:
    """(cylinders, heads, sectors) as QEMU's hd_geometry_guess (hw/block/hd-geometry.c) makes
    them: from the MBR's partition table if it has a plausible one with at most 16 heads, else
    16 heads, 63 sectors and as many cylinders as fit (2 to 16383)."""
    total = disk.sectors
    mbr = disk.read(0, 1)
    if mbr[510:512] == b"\x55\xaa":
        for entry in range(4):
            p = mbr[0x1BE + 16 * entry:0x1BE + 16 * (entry + 1)]
            nr_sects = int.from_bytes(p[12:16], "little")
            end_head, end_sector = p[5], p[6]
            if nr_sects and end_head:
                heads, sectors = end_head + 1, end_sector & 63
                if sectors == 0:
                    continue
                cylinders = total // (heads * sectors)
                if not 1 <= cylinders <= 16383:
                    continue
                if heads <= 16:
                    return cylinders, heads, sectors
                break               # a BIOS LBA translation: the standard geometry below
    return min(max(total // (16 * 63), 2), 16383), 16, 63


def _padded(text: str, length: int) -> list[int]:
    """An ATA string: space-padded, two characters a word, the first in the high byte (padstr)."""
    raw = text.encode().ljust(length, b" ")[:length]
    return [(raw[i] << 8) | raw[i + 1] for i in range(0, length, 2)]


def identify_words(disk: Disk, cylinders: int, heads: int, sectors: int, serial: str) -> list[int]:
    """IDENTIFY DEVICE as QEMU 7.2's ide_identify fills it for an ide-hd with its defaults (write
    cache on, discard granularity 512, 512-byte physical blocks), built once with the power-on
    multiple count, as SeaBIOS's IDENTIFY at boot leaves it cached (QEMU never refreshes word 59)."""
    w = [0] * 256
    w[0] = 0x0040
    w[1], w[3], w[4], w[5], w[6] = cylinders, heads, 512 * sectors, 512, sectors
    w[10:20] = _padded(serial, 20)
    w[20], w[21], w[22] = 3, 512, 4
    w[23:27] = _padded(FIRMWARE_VERSION, 8)
    w[27:47] = _padded(MODEL, 40)
    w[47] = 0x8000 | MAX_MULT_SECTORS
    w[48] = 1                                   # dword I/O
    w[49] = (1 << 11) | (1 << 9) | (1 << 8)     # IORDY, LBA, DMA
    w[51], w[52], w[53] = 0x200, 0x200, 0x7
    w[54], w[55], w[56] = cylinders, heads, sectors
    old = cylinders * heads * sectors
    w[57], w[58] = old & 0xFFFF, (old >> 16) & 0xFFFF
    w[59] = 0x100 | MAX_MULT_SECTORS
    lba28 = min(disk.sectors, (1 << 28) - 1)
    w[60], w[61] = lba28 & 0xFFFF, lba28 >> 16
    w[62], w[63], w[64] = 0x07, 0x07, 0x03
    w[65] = w[66] = w[67] = w[68] = 120
    w[69] = 1 << 14                             # determinate TRIM
    w[80], w[81] = 0xF0, 0x16
    w[82] = (1 << 14) | (1 << 5) | 1
    w[83] = (1 << 14) | (1 << 13) | (1 << 12) | (1 << 10)
    w[84] = 1 << 14
    w[85] = (1 << 14) | (1 << 5) | 1            # write cache enabled
    w[86] = (1 << 13) | (1 << 12) | (1 << 10)
    w[87] = 1 << 14
    w[88] = 0x3F | (1 << 13)
    w[93] = 1 | (1 << 14) | 0x2000
    for i in range(4):
        w[100 + i] = (disk.sectors >> (16 * i)) & 0xFFFF
    w[106] = 0x6000
    w[169] = 1                                  # TRIM supported
    return w


class IdeDrive:
    """One device on the channel (IDEState): its task-file registers, status, transfer buffer."""

    def __init__(self, unit: int, disk: Optional[Disk]) -> None:
        self.unit, self.disk = unit, disk
        if disk is not None:
            self.cylinders, self.heads, self.sectors = geometry(disk)
            self.identify = identify_words(disk, self.cylinders, self.heads, self.sectors, f"QM{unit + 1:05d}")
        else:
            self.cylinders = self.heads = self.sectors = 0
            self.identify = None
        self.buffer = bytearray(MAX_MULT_SECTORS * SECTOR_SIZE + 4)
        self.counters = {"commands": 0, "sectors_read": 0, "sectors_written": 0, "flushes": 0, "errors": 0,
                         "dma_transfers": 0, "dma_refused": 0}
        self.reset()

    def reset(self) -> None:
        """QEMU's ide_reset: registers cleared, the signature in place, data port reads 0xFFFF."""
        self.mult_sectors = MAX_MULT_SECTORS
        self.feature = self.error = self.nsector = self.sector = self.lcyl = self.hcyl = 0
        self.hob_feature = self.hob_sector = self.hob_nsector = self.hob_lcyl = self.hob_hcyl = 0
        self.select = DEV_ALWAYS_ON
        self.status = READY_STAT | SEEK_STAT
        self.lba48 = False
        self.req_nb_sectors = 0
        self.dma_write = False           # the DMA command's direction (QEMU's dma_cmd)
        self.set_signature()
        self.end_transfer = _DUMMY
        self.dummy_transfer_stop()

    def set_signature(self) -> None:
        self.select &= ~DEV_HEAD
        self.nsector = self.sector = 1
        self.lcyl = self.hcyl = 0 if self.disk is not None else 0xFF

    def dummy_transfer_stop(self) -> None:
        self.data_ptr = self.data_end = 0
        self.buffer[0:4] = b"\xff\xff\xff\xff"

    # -- addressing (ide_get_sector / ide_set_sector) --------------------------------------------
    def get_sector(self) -> int:
        if self.select & DEV_LBA:
            if self.lba48:
                return ((self.hob_hcyl << 40) | (self.hob_lcyl << 32) | (self.hob_sector << 24)
                        | (self.hcyl << 16) | (self.lcyl << 8) | self.sector)
            return ((self.select & DEV_HEAD) << 24) | (self.hcyl << 16) | (self.lcyl << 8) | self.sector
        return (((self.hcyl << 8) | self.lcyl) * self.heads * self.sectors
                + (self.select & DEV_HEAD) * self.sectors + (self.sector - 1))

    def set_sector(self, number: int) -> None:
        if self.select & DEV_LBA:
            if self.lba48:
                self.sector, self.lcyl, self.hcyl = number & 0xFF, (number >> 8) & 0xFF, (number >> 16) & 0xFF
                self.hob_sector, self.hob_lcyl = (number >> 24) & 0xFF, (number >> 32) & 0xFF
                self.hob_hcyl = (number >> 40) & 0xFF
            else:
                self.select = (self.select & ~DEV_HEAD) | ((number >> 24) & DEV_HEAD)
                self.hcyl, self.lcyl, self.sector = (number >> 16) & 0xFF, (number >> 8) & 0xFF, number & 0xFF
        else:
            cylinder, rest = divmod(number, self.heads * self.sectors)
            self.hcyl, self.lcyl = (cylinder >> 8) & 0xFF, cylinder & 0xFF
            self.select = (self.select & ~DEV_HEAD) | ((rest // self.sectors) & DEV_HEAD)
            self.sector = (rest % self.sectors) + 1

    def range_ok(self, sector: int, count: int) -> bool:
        return 0 <= sector <= self.disk.sectors and count <= self.disk.sectors - sector

    def state(self) -> dict:
        return {name: getattr(self, name) for name in (
            "unit", "feature", "error", "nsector", "sector", "lcyl", "hcyl", "hob_feature", "hob_sector",
            "hob_nsector", "hob_lcyl", "hob_hcyl", "select", "status", "lba48", "mult_sectors",
            "req_nb_sectors", "data_ptr", "data_end", "end_transfer", "dma_write")} | {
            "buffer": bytes(self.buffer[:self.data_end]).hex(),
            "disk": self.disk.state() if self.disk is not None else None}


_COMMAND_NAMES = {
    0x20: "READ SECTORS", 0x21: "READ SECTORS", 0x24: "READ SECTORS EXT", 0x29: "READ MULTIPLE EXT",
    0x30: "WRITE SECTORS", 0x31: "WRITE SECTORS", 0x34: "WRITE SECTORS EXT", 0x39: "WRITE MULTIPLE EXT",
    0x3C: "WRITE VERIFY", 0x40: "VERIFY", 0x41: "VERIFY", 0x42: "VERIFY EXT", 0x10: "RECALIBRATE",
    0x70: "SEEK", 0x90: "EXECUTE DEVICE DIAGNOSTIC", 0x91: "INITIALIZE DEVICE PARAMETERS",
    0xC4: "READ MULTIPLE", 0xC5: "WRITE MULTIPLE", 0xC6: "SET MULTIPLE MODE", 0xE7: "FLUSH CACHE",
    0xEA: "FLUSH CACHE EXT", 0xEC: "IDENTIFY DEVICE", 0xEF: "SET FEATURES", 0x27: "READ NATIVE MAX EXT",
    0xF8: "READ NATIVE MAX", 0x98: "CHECK POWER MODE", 0xE5: "CHECK POWER MODE",
    0xC8: "READ DMA", 0xC9: "READ DMA", 0x25: "READ DMA EXT", 0xCA: "WRITE DMA", 0xCB: "WRITE DMA",
    0x35: "WRITE DMA EXT",
}


class IdeChannel:
    """The primary channel's command block (this object, at 0x1F0) and its control register
    (`control`, at 0x3F6), as QEMU's IDEBus: two IdeDrive slots, the selected unit, the device
    control byte, the IRQ line. Transfers complete at once (QEMU's asynchronous block layer
    finishes them before the guest can look, as far as the guest can tell). DMA commands go
    through the bus master (`dma`: the PIIX3 IDE function's, vmm/devices/bmdma.py; without one,
    as in the unit tests, they are aborted)."""

    name = "ide"
    access_width = 4

    def __init__(self, disks: dict[int, Disk], irq: Callable[[int], None],
                 trace: Optional[Callable[[str], None]] = None) -> None:
        self.drives = [IdeDrive(unit, disks.get(unit)) for unit in range(2)]
        self.irq, self.trace = irq, trace
        self.unit = 0
        self.cmd = 0
        self.irq_level = 0
        self.control = _ControlPort(self)
        self.dma = None                 # the bus master (BusMasterChannel), set by the machine
        self._boot_state()
        self._commands = {
            0x10: (self._nop, True), 0x20: (self._read_pio, False), 0x21: (self._read_pio, False),
            0x24: (self._read_pio, False), 0x27: (self._read_native_max, True), 0x29: (self._read_multiple, False),
            0x30: (self._write_pio, False), 0x31: (self._write_pio, False), 0x34: (self._write_pio, False),
            0x39: (self._write_multiple, False), 0x3C: (self._write_pio, False), 0x40: (self._verify, True),
            0x41: (self._verify, True), 0x42: (self._verify, True), 0x70: (self._nop, True),
            0x90: (self._diagnostic, False), 0x91: (self._nop, True), 0x94: (self._nop, False),
            0x95: (self._nop, False), 0x96: (self._nop, False), 0x97: (self._nop, False),
            0x98: (self._check_power_mode, True), 0x99: (self._nop, False), 0xC4: (self._read_multiple, False),
            0xC5: (self._write_multiple, False), 0xC6: (self._set_multiple_mode, True), 0xE0: (self._nop, False),
            0xE1: (self._nop, False), 0xE2: (self._nop, False), 0xE3: (self._nop, False),
            0xE5: (self._check_power_mode, True), 0xE6: (self._nop, False), 0xE7: (self._flush, False),
            0xEA: (self._flush, False), 0xEC: (self._identify, False), 0xEF: (self._set_features, True),
            0xF8: (self._read_native_max, True), 0xC8: (self._read_dma, False), 0xC9: (self._read_dma, False),
            0x25: (self._read_dma, False), 0xCA: (self._write_dma, False), 0xCB: (self._write_dma, False),
            0x35: (self._write_dma, False),
        }   # command -> (handler, SET_DSC); handlers return True when the command completes at once

    def _boot_state(self) -> None:
        """The registers as SeaBIOS's ATA probe leaves them at a Multiboot entry under QEMU 7.2
        (measured with a probe guest): the slave selected last, count, sector and cylinder 0,
        nIEN clear, and an absent master beside a present slave showing the probe's abort."""
        self.unit = 1
        for s in self.drives:
            s.select = DEV_ALWAYS_ON | DEV_SELECT
            s.nsector = s.sector = s.lcyl = s.hcyl = 0
        master, slave = self.drives
        if master.disk is None and slave.disk is not None:
            master.status, master.error = READY_STAT | ERR_STAT, ABRT_ERR

    @property
    def active(self) -> IdeDrive:
        return self.drives[self.unit]

    @property
    def _no_drives(self) -> bool:
        return self.drives[0].disk is None and self.drives[1].disk is None

    def _absent(self, s: IdeDrive) -> bool:
        return self._no_drives or (s.unit == 1 and s.disk is None)

    # -- the interrupt line --------------------------------------------------------------------
    def set_irq(self) -> None:
        if not self.cmd & CTRL_NIEN:
            if self.dma is not None:    # the bus master sees every interrupt of its channel, PIO too
                self.dma.interrupt()
            self.irq_level = 1
            self.irq(1)

    def lower_irq(self) -> None:
        if self.irq_level:
            self.irq_level = 0
            self.irq(0)

    # -- ports -----------------------------------------------------------------------------------
    def io_read(self, offset: int, size: int) -> int:
        if offset == 0 and size in (2, 4):
            return self._data_read(size)
        if size == 2:            # QEMU's portio splits a word access where only byte handlers exist
            return self._register_read(offset) | (self._register_read(offset + 1) << 8 if offset < 7 else 0xFF00)
        if size == 4:
            return 0xFFFFFFFF
        return self._register_read(offset)

    def io_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size in (2, 4):
            self._data_write(size, value)
        elif size == 2:
            self._register_write(offset, value & 0xFF)
            if offset < 7:
                self._register_write(offset + 1, value >> 8)
        elif size == 1:
            self._register_write(offset, value)

    def _register_read(self, reg: int) -> int:
        s, hob = self.active, self.cmd & CTRL_HOB
        if reg == 0:
            return 0xFF
        if reg == 7:
            value = 0 if self._absent(s) else s.status
            self.lower_irq()
            return value
        if reg == 1:
            return 0 if self._absent(s) else (s.hob_feature if hob else s.error)
        if self._no_drives:
            return 0
        if reg == 6:
            return s.select
        return {2: (s.hob_nsector if hob else s.nsector & 0xFF), 3: (s.hob_sector if hob else s.sector),
                4: (s.hob_lcyl if hob else s.lcyl), 5: (s.hob_hcyl if hob else s.hcyl)}[reg]

    def alternate_status(self) -> int:
        s = self.active
        return 0 if self._absent(s) else s.status

    def _register_write(self, reg: int, value: int) -> None:
        s = self.active
        if reg != 7 and s.status & (BUSY_STAT | DRQ_STAT):
            return                      # ignored while busy with the previous command
        if reg == 0:
            return
        self.cmd &= ~CTRL_HOB
        if reg == 7:
            self.lower_irq()
            self.execute(value)
            return
        field = {1: "feature", 2: "nsector", 3: "sector", 4: "lcyl", 5: "hcyl"}.get(reg)
        for drive in self.drives:       # both devices see every register write
            if field is not None:
                setattr(drive, "hob_" + field, getattr(drive, field) & 0xFF)
                setattr(drive, field, value)
            else:
                drive.select = value | DEV_ALWAYS_ON
        if reg == 6:
            self.unit = 1 if value & DEV_SELECT else 0

    def control_write(self, value: int) -> None:
        """Device control: nIEN masks the IRQ; SRST going to 1 resets both devices (QEMU's
        ide_bus_perform_srst, done at once here) and leaves their signatures."""
        start_reset = not self.cmd & CTRL_SRST and value & CTRL_SRST
        self.cmd = value
        if start_reset:
            for s in self.drives:
                s.status |= BUSY_STAT
                s.reset()
                self._diagnostic(s, 0x90)
            self.cmd &= ~CTRL_SRST
            if self.trace:
                self.trace("ide: software reset")

    # -- data port (ide_data_readw/readl, writew/writel) --------------------------------------------
    def _data_read(self, size: int) -> int:
        s = self.active
        if not s.status & DRQ_STAT or s.end_transfer == _WRITE:
            return 0
        if s.data_ptr + size > s.data_end:
            return 0
        value = int.from_bytes(s.buffer[s.data_ptr:s.data_ptr + size], "little")
        s.data_ptr += size
        if s.data_ptr >= s.data_end:
            s.status &= ~DRQ_STAT
            self._end_transfer(s)
        return value

    def _data_write(self, size: int, value: int) -> None:
        s = self.active
        if not s.status & DRQ_STAT or s.end_transfer != _WRITE:
            return
        if s.data_ptr + size > s.data_end:
            return
        s.buffer[s.data_ptr:s.data_ptr + size] = value.to_bytes(size, "little")
        s.data_ptr += size
        if s.data_ptr >= s.data_end:
            s.status &= ~DRQ_STAT
            self._end_transfer(s)

    def _end_transfer(self, s: IdeDrive) -> None:
        action = s.end_transfer
        if action == _READ:
            self._sector_read(s)
        elif action == _WRITE:
            self._sector_write(s)
        elif action == _DUMMY:
            s.dummy_transfer_stop()
        else:
            self._transfer_stop(s)

    def _transfer_start(self, s: IdeDrive, size: int, end: str) -> None:
        s.data_ptr, s.data_end = 0, size
        if not s.status & ERR_STAT:
            s.status |= DRQ_STAT
        s.end_transfer = end

    def _transfer_stop(self, s: IdeDrive) -> None:
        s.end_transfer = _STOP
        s.data_ptr = s.data_end = 0
        s.status &= ~DRQ_STAT

    def _abort(self, s: IdeDrive) -> None:
        self._transfer_stop(s)
        s.status = READY_STAT | ERR_STAT
        s.error = ABRT_ERR

    def _rw_error(self, s: IdeDrive) -> None:
        s.counters["errors"] += 1
        self._abort(s)
        self.set_irq()

    # -- commands (ide_exec_cmd and the cmd_* handlers) ---------------------------------------------
    def execute(self, command: int) -> None:
        s = self.active
        if s.unit == 1 and s.disk is None:
            return                      # commands to a slave that is not there are ignored
        if s.status & (BUSY_STAT | DRQ_STAT):
            return                      # only an ATAPI DEVICE RESET is taken while busy
        s.counters["commands"] += 1
        if self.trace:
            self.trace(f"ide: unit {s.unit} command {command:#04x} "
                       f"{_COMMAND_NAMES.get(command, 'unsupported')} {self._where(s)}")
        entry = self._commands.get(command)
        if entry is None or s.disk is None:
            self._abort(s)
            self.set_irq()
            return
        handler, set_dsc = entry
        s.status = READY_STAT | BUSY_STAT
        s.error = 0
        if handler(s, command):
            s.status &= ~BUSY_STAT
            if set_dsc and not s.error:
                s.status |= SEEK_STAT
            self.set_irq()

    def _where(self, s: IdeDrive) -> str:
        mode = "lba" if s.select & DEV_LBA else "chs"
        count = s.nsector or 256
        if s.heads == 0 and mode == "chs":
            return f"count {count}"
        return f"{mode} sector {s.get_sector()} count {count}"

    def _lba48_transform(self, s: IdeDrive, lba48: bool) -> None:
        s.lba48 = lba48
        if not lba48:
            if not s.nsector:
                s.nsector = 256
        elif not s.nsector and not s.hob_nsector:
            s.nsector = 65536
        else:
            s.nsector = (s.hob_nsector << 8) | (s.nsector & 0xFF)

    def _nop(self, s: IdeDrive, command: int) -> bool:
        return True

    def _identify(self, s: IdeDrive, command: int) -> bool:
        s.buffer[:SECTOR_SIZE] = b"".join(word.to_bytes(2, "little") for word in s.identify)
        s.status = READY_STAT | SEEK_STAT
        self._transfer_start(s, SECTOR_SIZE, _STOP)
        self.set_irq()
        return False

    def _diagnostic(self, s: IdeDrive, command: int) -> bool:
        s.set_signature()
        s.status = READY_STAT | SEEK_STAT
        s.error = 0x01                  # device 0 passed, device 1 passed or absent
        self.set_irq()
        return False

    def _verify(self, s: IdeDrive, command: int) -> bool:
        self._lba48_transform(s, command == 0x42)
        return True

    def _check_power_mode(self, s: IdeDrive, command: int) -> bool:
        s.nsector = 0xFF                # active or idle
        return True

    def _read_native_max(self, s: IdeDrive, command: int) -> bool:
        self._lba48_transform(s, command == 0x27)
        s.set_sector(s.disk.sectors - 1)
        return True

    def _set_multiple_mode(self, s: IdeDrive, command: int) -> bool:
        count = s.nsector & 0xFF
        if count and (count > MAX_MULT_SECTORS or count & (count - 1)):
            self._abort(s)
        else:
            s.mult_sectors = count
        return True

    def _set_features(self, s: IdeDrive, command: int) -> bool:
        feature = s.feature
        if feature in (0x02, 0x82):     # write cache on / off: IDENTIFY word 85 follows
            s.identify[85] = (1 << 14) | (1 << 5) | 1 if feature == 0x02 else (1 << 14) | 1
            return True
        if feature in (0xCC, 0x66, 0xAA, 0x55, 0x05, 0x85, 0x69, 0x67, 0x96, 0x9A, 0x42, 0xC2):
            return True
        if feature == 0x03:             # set transfer mode: the mode shows in words 62, 63, 88
            mode, value = s.nsector >> 3, s.nsector & 7
            words = {0: (0x07, 0x07, 0x3F), 1: (0x07, 0x07, 0x3F), 2: (0x07 | (1 << (value + 8)), 0x07, 0x3F),
                     4: (0x07, 0x07 | (1 << (value + 8)), 0x3F), 8: (0x07, 0x07, 0x3F | (1 << (value + 8)))}.get(mode)
            if words is not None:
                s.identify[62], s.identify[63], s.identify[88] = words
                return True
        self._abort(s)
        return True

    def _read_pio(self, s: IdeDrive, command: int) -> bool:
        self._lba48_transform(s, command == 0x24)
        s.req_nb_sectors = 1
        self._sector_read(s)
        return False

    def _read_multiple(self, s: IdeDrive, command: int) -> bool:
        if not s.mult_sectors:
            self._abort(s)
            return True
        self._lba48_transform(s, command == 0x29)
        s.req_nb_sectors = s.mult_sectors
        self._sector_read(s)
        return False

    def _write_pio(self, s: IdeDrive, command: int) -> bool:
        self._lba48_transform(s, command == 0x34)
        s.req_nb_sectors = 1
        s.status = SEEK_STAT | READY_STAT
        self._transfer_start(s, SECTOR_SIZE, _WRITE)
        return False

    def _write_multiple(self, s: IdeDrive, command: int) -> bool:
        if not s.mult_sectors:
            self._abort(s)
            return True
        self._lba48_transform(s, command == 0x39)
        s.req_nb_sectors = s.mult_sectors
        s.status = SEEK_STAT | READY_STAT
        self._transfer_start(s, SECTOR_SIZE * min(s.nsector, s.req_nb_sectors), _WRITE)
        return False

    def _flush(self, s: IdeDrive, command: int) -> bool:
        try:
            s.disk.flush()
        except (DiskError, OSError):
            self._rw_error(s)
            return False
        s.counters["flushes"] += 1
        s.status = READY_STAT | SEEK_STAT
        self.set_irq()
        return False

    # -- PIO sector transfers (ide_sector_read / ide_sector_write and their callbacks) ----------------
    def _sector_read(self, s: IdeDrive) -> None:
        s.status = READY_STAT | SEEK_STAT
        s.error = 0
        sector, count = s.get_sector(), s.nsector
        if count == 0:
            self._transfer_stop(s)
            return
        count = min(count, s.req_nb_sectors)
        if not s.range_ok(sector, count):
            self._rw_error(s)
            return
        try:
            data = s.disk.read(sector, count)
        except (DiskError, OSError):
            self._rw_error(s)
            return
        s.buffer[:len(data)] = data
        s.counters["sectors_read"] += count
        s.set_sector(sector + count)
        s.nsector -= count
        self._transfer_start(s, count * SECTOR_SIZE, _READ)
        self.set_irq()

    def _sector_write(self, s: IdeDrive) -> None:
        s.status = READY_STAT | SEEK_STAT | BUSY_STAT
        sector = s.get_sector()
        count = min(s.nsector, s.req_nb_sectors)
        if not s.range_ok(sector, count):
            self._rw_error(s)
            return
        try:
            s.disk.write(sector, bytes(s.buffer[:count * SECTOR_SIZE]))
        except (DiskError, OSError):
            self._rw_error(s)
            return
        s.counters["sectors_written"] += count
        s.status &= ~BUSY_STAT
        s.nsector -= count
        s.set_sector(sector + count)
        if s.nsector == 0:
            self._transfer_stop(s)
        else:
            self._transfer_start(s, SECTOR_SIZE * min(s.nsector, s.req_nb_sectors), _WRITE)
        self.set_irq()

    # -- bus-master DMA (cmd_read_dma / cmd_write_dma, ide_sector_start_dma, ide_dma_cb) ---------
    def _read_dma(self, s: IdeDrive, command: int) -> bool:
        return self._start_dma(s, command, write=False, lba48=command == 0x25)

    def _write_dma(self, s: IdeDrive, command: int) -> bool:
        return self._start_dma(s, command, write=True, lba48=command == 0x35)

    def _start_dma(self, s: IdeDrive, command: int, write: bool, lba48: bool) -> bool:
        if self.dma is None:
            self._abort(s)
            return True
        self._lba48_transform(s, lba48)
        s.status = READY_STAT | SEEK_STAT | DRQ_STAT
        s.dma_write = write
        self.dma.start_dma(s)       # runs now if the bus master's start bit is already set
        return False

    def dma_run(self, s: IdeDrive) -> None:
        """The bus master has both the command and its start bit: move every sector now, as
        QEMU's ide_dma_cb does in one scatter-gather list. The PRD table is walked first (the
        buffers for the whole count, and every byte its entries describe); PRDs too short for
        the count end the command with nothing moved, Active cleared and no interrupt; a sector
        range past the disk's end or a failed back end is QEMU's DMA error (ABRT, IRQ). Every
        PRD and buffer is remapped and checked before a byte moves: a refusal is that DMA error
        with the bus master's error bit set, counted (`dma_refused`) and traced (-d disk).
        Active stays set after a transfer whose PRDs described more than it moved."""
        bm = self.dma
        sector, count = s.get_sector(), s.nsector
        size = count * SECTOR_SIZE
        try:
            sg, described = bm.prepare(size)
            if sum(length for _address, length in sg) < size:
                if self.trace:
                    self.trace(f"ide: unit {s.unit} DMA stopped: the PRDs describe {described} bytes, "
                               f"the command needs {size}")
                s.status = READY_STAT | SEEK_STAT
                bm.set_inactive(False)
                return
            if not s.range_ok(sector, count):
                self._dma_error(s)
                return
            buffers = bm.map_buffers(sg)
        except DmaRefused as refusal:
            self._dma_refused(s, refusal)
            return
        try:
            if s.dma_write:
                s.disk.write(sector, b"".join(bm.remapper.read_views(views) for _address, views in buffers))
            else:
                data, done = s.disk.read(sector, count), 0
                for address, views in buffers:
                    length = sum(len(view) for view in views)
                    bm.remapper.write_views(address, views, data[done:done + length])
                    done += length
        except (DiskError, OSError):
            self._dma_error(s)
            return
        s.counters["sectors_written" if s.dma_write else "sectors_read"] += count
        s.counters["dma_transfers"] += 1
        if self.trace:
            self.trace(f"ide: unit {s.unit} DMA {'write' if s.dma_write else 'read'} of {count} sectors at "
                       f"{sector}: {len(sg)} buffers, " + ", ".join(f"{a:#x}+{n:#x}" for a, n in sg[:8])
                       + (" ..." if len(sg) > 8 else ""))
        s.set_sector(sector + count)
        s.nsector = 0
        s.status = READY_STAT | SEEK_STAT
        self.set_irq()
        bm.set_inactive(described > size)

    def _dma_error(self, s: IdeDrive) -> None:
        """QEMU's ide_dma_error: the command aborted, the bus master inactive, the IRQ raised."""
        s.counters["errors"] += 1
        self._abort(s)
        self.dma.set_inactive(False)
        self.set_irq()

    def _dma_refused(self, s: IdeDrive, refusal: DmaRefused) -> None:
        s.counters["dma_refused"] += 1
        if self.trace:
            self.trace(f"ide: unit {s.unit} DMA refused: {refusal}")
        self.dma.master_abort()
        self._dma_error(s)

    # -- the machine's side ----------------------------------------------------------------------
    def close(self) -> None:
        """Flush and close every back end (the run's end: what the guest wrote is in the files)."""
        for s in self.drives:
            if s.disk is not None:
                s.disk.close()

    def counters(self) -> dict:
        """Per drive (ide0: primary master, ide1: primary slave), for every attached drive."""
        return {f"ide{s.unit}": dict(s.counters) for s in self.drives if s.disk is not None}

    def state(self) -> dict:
        return {"unit": self.unit, "device_control": self.cmd, "irq": self.irq_level,
                "drives": [s.state() for s in self.drives]}


class _ControlPort:
    """0x3F6: alternate status on reads (the IRQ stays as it is), device control on writes."""

    name = "ide"
    access_width = 1

    def __init__(self, channel: IdeChannel) -> None:
        self.channel = channel

    def io_read(self, offset: int, size: int) -> int:
        return self.channel.alternate_status()

    def io_write(self, offset: int, size: int, value: int) -> None:
        self.channel.control_write(value)
