"""The PIIX3 IDE's bus-master DMA engine (BMIDE registers at BAR4: command, status, PRD table pointer, per channel) as QEMU's hw/ide/pci.c and piix.c, every PRD and buffer address remapped and checked (vmm/dma.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from vmm.dma import DmaRefused, DmaRemapper

if TYPE_CHECKING:
    from vmm.devices.ide import IdeChannel, IdeDrive

BM_CMD_START, BM_CMD_READ = 0x01, 0x08      # READ: the bus master reads memory (the disk is written)
BM_STATUS_DMAING, BM_STATUS_ERROR, BM_STATUS_INT = 0x01, 0x02, 0x04
BM_STATUS_DRIVE_CAPABLE = 0x60               # two bits the guest keeps there (drive 0/1 DMA capable)
PRD_ENTRY_SIZE = 8
PRD_EOT = 1 << 31
PRD_TABLE_LIMIT = 4096                       # QEMU's fail safe: a table is read for one page at most
CHANNEL_PORTS = 8                            # command/status at +0..+3, PRD table pointer at +4..+7


class BusMasterChannel:
    """One channel's bus master (QEMU's BMDMAState): the command register (start bit and
    direction), the status register (active, error, interrupt, the two capability bits), the
    PRD table pointer, and where the walk of the table stands. A DMA command from a drive waits
    here (`drive`) until the start bit is set, or runs at once if it already is; the transfer
    itself is the IDE channel's (dma_run), through `prepare` (the PRD walk) and the remapper.

    Memory is reached only through the remapper, and only while the function's bus-master
    enable is on (`may_master`): a PRD fetch or a buffer outside guest RAM, or any access with
    bus mastering off, is refused before anything moves (DmaRefused). QEMU has no such check
    (an unassigned PRD reads as zeros: 64 KiB to address 0; a buffer outside RAM is dropped);
    a refused transfer shows the guest what the PIIX datasheet gives for a master abort, the
    status register's error bit, on top of QEMU's DMA error (the drive's ABRT and its IRQ)."""

    def __init__(self, index: int, remapper: DmaRemapper, may_master: Callable[[], bool]) -> None:
        self.index = index
        self.remapper, self.may_master = remapper, may_master
        self.ide: Optional["IdeChannel"] = None   # the channel behind it (none for the secondary here)
        self.drive: Optional["IdeDrive"] = None   # the drive whose DMA command waits (QEMU's dma_cb)
        self.cmd = self.status = self.addr = 0
        self.cur_addr = self.cur_prd_last = self.cur_prd_addr = self.cur_prd_len = 0

    # -- the IDE channel's side (QEMU's IDEDMAOps) ------------------------------------------------
    def start_dma(self, drive: "IdeDrive") -> None:
        """A DMA command was issued (bmdma_start_dma): it runs now if the start bit is set."""
        self.drive = drive
        self.cur_prd_last = self.cur_prd_addr = self.cur_prd_len = 0
        if self.status & BM_STATUS_DMAING and self.ide is not None:
            self.ide.dma_run(drive)

    def interrupt(self) -> None:
        """The channel raised its IRQ (QEMU's bmdma_irq wraps the IDE bus's line)."""
        self.status |= BM_STATUS_INT

    def set_inactive(self, more: bool) -> None:
        """The command is over: Active stays set when the PRDs described more than it moved."""
        self.drive = None
        self.status = self.status | BM_STATUS_DMAING if more else self.status & ~BM_STATUS_DMAING

    def master_abort(self) -> None:
        self.status |= BM_STATUS_ERROR

    def _fetch(self, length: int, what: str) -> bytes:
        if not self.may_master():
            raise DmaRefused(self.cur_addr, length, what, "bus mastering is off (PCI command bit 2)")
        return self.remapper.read(self.cur_addr, length, what)

    def prepare(self, limit: int) -> tuple[list[tuple[int, int]], int]:
        """QEMU's bmdma_prepare_buf: walk the PRD table from where it stands until an entry with
        EOT or a page of table read; (the buffers for the first `limit` bytes as (address,
        length), every byte the entries describe). An entry's count is bits 15-1 (0: 64 KiB);
        bit 0 and bits 30-16 are ignored. Every entry fetched goes through the remapper."""
        sg, sg_size, described = [], 0, 0
        while True:
            if self.cur_prd_len == 0:
                if self.cur_prd_last or (self.cur_addr - self.addr) & 0xFFFFFFFF >= PRD_TABLE_LIMIT:
                    return sg, described
                entry = self._fetch(PRD_ENTRY_SIZE, "PRD table entry")
                self.cur_addr = (self.cur_addr + PRD_ENTRY_SIZE) & 0xFFFFFFFF
                address, count = int.from_bytes(entry[:4], "little"), int.from_bytes(entry[4:], "little")
                self.cur_prd_len = count & 0xFFFE or 0x10000
                self.cur_prd_addr = address
                self.cur_prd_last = count & PRD_EOT
            length = self.cur_prd_len
            take = min(limit - sg_size, length)
            if take:
                sg.append((self.cur_prd_addr, take))
                sg_size += take
            self.cur_prd_addr = (self.cur_prd_addr + length) & 0xFFFFFFFF
            self.cur_prd_len = 0
            described += length

    def map_buffers(self, sg: list[tuple[int, int]]) -> list[tuple[int, list[memoryview]]]:
        """Every buffer of a transfer remapped and checked before any byte moves."""
        if not self.may_master():
            address, length = sg[0]
            raise DmaRefused(address, length, "DMA buffer", "bus mastering is off (PCI command bit 2)")
        return [(address, self.remapper.map(address, length, "DMA buffer")) for address, length in sg]

    # -- registers (piix.c's bmdma_read/bmdma_write, pci.c's bmdma_cmd_writeb and addr ops) ------
    def cmd_write(self, value: int) -> None:
        if (value ^ self.cmd) & BM_CMD_START:
            if not value & BM_CMD_START:
                self.status &= ~BM_STATUS_DMAING    # transfers are over by now: nothing to cancel
            else:
                self.cur_addr = self.addr
                if not self.status & BM_STATUS_DMAING:
                    self.status |= BM_STATUS_DMAING
                    if self.drive is not None and self.ide is not None:
                        self.ide.dma_run(self.drive)
        self.cmd = value & (BM_CMD_START | BM_CMD_READ)

    def status_write(self, value: int) -> None:
        """The capability bits are the guest's, error and interrupt clear on a 1, active is read-only."""
        self.status = ((value & BM_STATUS_DRIVE_CAPABLE) | (self.status & BM_STATUS_DMAING)
                       | (self.status & ~value & (BM_STATUS_ERROR | BM_STATUS_INT)))

    def state(self) -> dict:
        return {"cmd": self.cmd, "status": self.status, "prd_table": self.addr, "cur_addr": self.cur_addr,
                "waiting_unit": self.drive.unit if self.drive is not None else None}


class BusMasterIde:
    """BAR4's 16 ports: the primary channel's registers at 0-7, the secondary's at 8-15 (no
    drives behind it here). In each, bytes 0 and 2 are command and status (byte accesses only:
    a wider one reads all ones, is dropped), 1 and 3 read 0xFF, 4-7 the PRD table pointer (any
    width; bits 1-0 read 0). An access not aligned to its width inside its 4-byte register reads
    0 and is dropped, as QEMU's memory core refuses it (measured: inw at +3 and inl at +5 read 0)."""

    name = "bmdma"
    access_width = 4

    def __init__(self, remapper: DmaRemapper, may_master: Callable[[], bool]) -> None:
        self.remapper = remapper
        self.channels = [BusMasterChannel(i, remapper, may_master) for i in range(2)]

    def io_read(self, offset: int, size: int) -> int:
        channel, register = self.channels[(offset >> 3) & 1], offset & 7
        if register & 3 & (size - 1):
            return 0
        if register >= 4:
            return (channel.addr >> (8 * (register - 4))) & ((1 << 8 * size) - 1)
        if size != 1:
            return (1 << 8 * size) - 1
        return {0: channel.cmd, 2: channel.status}.get(register, 0xFF)

    def io_write(self, offset: int, size: int, value: int) -> None:
        channel, register = self.channels[(offset >> 3) & 1], offset & 7
        if register & 3 & (size - 1):
            return
        if register >= 4:
            shift, mask = 8 * (register - 4), (1 << 8 * size) - 1
            channel.addr = ((channel.addr & ~(mask << shift)) | (((value & mask) << shift) & ~3)) & 0xFFFFFFFF
        elif size == 1 and register == 0:
            channel.cmd_write(value)
        elif size == 1 and register == 2:
            channel.status_write(value)

    def state(self) -> dict:
        return {"channels": [channel.state() for channel in self.channels], "remapper": self.remapper.state()}
