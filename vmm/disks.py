"""Disk back ends (raw image file, copy-on-write overlay, memory) behind one sector interface, and `--drive` parsing."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import Optional

from vmm.errors import ConfigError

SECTOR_SIZE = 512


class DiskError(Exception):
    """A back end could not carry out a request (the controller turns it into the guest's error bits)."""


class Disk:
    """The interface every back end implements: whole 512-byte sectors, numbered from 0.
    `read`/`write` never go past `sectors` (the caller checks the range, as QEMU's
    ide_sect_range_ok does), `write` on a read-only disk raises DiskError, `flush` makes
    every write so far durable in the back end's file (if any), `close` flushes and lets go."""

    kind = "disk"
    sectors: int = 0
    read_only: bool = False
    path: Optional[str] = None

    def read(self, sector: int, count: int) -> bytes:
        raise NotImplementedError

    def write(self, sector: int, data: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()

    def _check(self, sector: int, count: int) -> None:
        if sector < 0 or count < 0 or sector + count > self.sectors:
            raise DiskError(f"sectors {sector}+{count} are past the end ({self.sectors} sectors)")

    def state(self) -> dict:
        return {"kind": self.kind, "path": self.path, "sectors": self.sectors, "read_only": self.read_only}


class MemoryDisk(Disk):
    """Sectors in host memory: what a run writes is gone when it ends."""

    kind = "memory"

    def __init__(self, sectors: int, data: bytes = b"", read_only: bool = False) -> None:
        self.sectors, self.read_only = sectors, read_only
        self._data = bytearray(sectors * SECTOR_SIZE)
        self._data[:len(data)] = data[:len(self._data)]

    def read(self, sector: int, count: int) -> bytes:
        self._check(sector, count)
        return bytes(self._data[sector * SECTOR_SIZE:(sector + count) * SECTOR_SIZE])

    def write(self, sector: int, data: bytes) -> None:
        if self.read_only:
            raise DiskError("the disk is read-only")
        self._check(sector, len(data) // SECTOR_SIZE)
        self._data[sector * SECTOR_SIZE:sector * SECTOR_SIZE + len(data)] = data


def _open_image(path: str, writable: bool) -> tuple[int, int]:
    """(file descriptor, sector count) of an image file, or a one-line ConfigError."""
    try:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
    except OSError as error:
        hint = " (add readonly to use it read-only)" if writable and error.errno in (13, 30) else ""
        raise ConfigError(f"--drive {path}: {error.strerror}{hint}") from None
    size = os.fstat(fd).st_size
    if size % SECTOR_SIZE or size == 0:
        os.close(fd)
        raise ConfigError(f"--drive {path}: {size} bytes is not a whole number of 512-byte sectors")
    return fd, size // SECTOR_SIZE


class RawImage(Disk):
    """A raw image file: sector n is the 512 bytes at offset n x 512. Writes go to the file at
    once (pwrite); flush is fsync, so what the guest flushed survives a host crash too."""

    kind = "raw"

    def __init__(self, path: str, read_only: bool = False) -> None:
        self.path, self.read_only = path, read_only
        self._fd, self.sectors = _open_image(path, not read_only)

    def read(self, sector: int, count: int) -> bytes:
        self._check(sector, count)
        data = os.pread(self._fd, count * SECTOR_SIZE, sector * SECTOR_SIZE)
        if len(data) != count * SECTOR_SIZE:        # the file shrank under us
            raise DiskError(f"{self.path}: short read at sector {sector}")
        return data

    def write(self, sector: int, data: bytes) -> None:
        if self.read_only:
            raise DiskError(f"{self.path} is read-only")
        self._check(sector, len(data) // SECTOR_SIZE)
        try:
            os.pwrite(self._fd, data, sector * SECTOR_SIZE)
        except OSError as error:
            raise DiskError(f"{self.path}: {error.strerror}") from None

    def flush(self) -> None:
        if self._fd is not None and not self.read_only:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
            self._fd = None


# An overlay file: a 512-byte header, then one 4-byte little-endian entry per base sector (0: the
# base's sector; n: the overlay's data sector n - 1), padded to a sector, then data sectors in the
# order they were first written. A data sector is written before the entry that points at it, so
# a run killed at any point leaves an overlay that reads either the old or the new sector.
OVERLAY_MAGIC = b"VMMCOW1\0"


class Overlay(Disk):
    """Copy-on-write over a base image that is only ever opened read-only, so no write of the
    guest and no killed run can change it. Written sectors live in memory (`overlay_path` None:
    gone when the run ends) or in an overlay file (created if missing, reused by later runs
    over the same base)."""

    kind = "overlay"

    def __init__(self, base_path: str, overlay_path: Optional[str] = None) -> None:
        self.path, self.overlay_path = base_path, overlay_path
        self._base_fd, self.sectors = _open_image(base_path, writable=False)
        self._map: dict[int, int] = {}          # base sector -> data sector (file) or index (memory)
        self._memory: list[bytes] = []
        self._fd: Optional[int] = None
        if overlay_path is not None:
            self._open_overlay(overlay_path)

    @property
    def _table_sectors(self) -> int:
        return (self.sectors * 4 + SECTOR_SIZE - 1) // SECTOR_SIZE

    def _open_overlay(self, path: str) -> None:
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            os.close(self._base_fd)
            raise ConfigError(f"--drive overlay={path}: {error.strerror}") from None
        header = os.pread(self._fd, SECTOR_SIZE, 0)
        if not header:
            os.pwrite(self._fd, OVERLAY_MAGIC + struct.pack("<Q", self.sectors) + bytes(SECTOR_SIZE - 16), 0)
            os.ftruncate(self._fd, (1 + self._table_sectors) * SECTOR_SIZE)
            return
        if header[:8] != OVERLAY_MAGIC or struct.unpack_from("<Q", header, 8)[0] != self.sectors:
            os.close(self._fd)
            os.close(self._base_fd)
            raise ConfigError(f"--drive overlay={path}: not an overlay of a {self.sectors}-sector base")
        table = os.pread(self._fd, self.sectors * 4, SECTOR_SIZE)
        for sector, (entry,) in enumerate(struct.iter_unpack("<I", table.ljust(self.sectors * 4, b"\0"))):
            if entry:
                self._map[sector] = entry - 1

    def _data_offset(self, index: int) -> int:
        return (1 + self._table_sectors + index) * SECTOR_SIZE

    def read(self, sector: int, count: int) -> bytes:
        self._check(sector, count)
        out = bytearray(os.pread(self._base_fd, count * SECTOR_SIZE, sector * SECTOR_SIZE))
        for i in range(count):
            index = self._map.get(sector + i)
            if index is None:
                continue
            data = (self._memory[index] if self._fd is None
                    else os.pread(self._fd, SECTOR_SIZE, self._data_offset(index)))
            out[i * SECTOR_SIZE:(i + 1) * SECTOR_SIZE] = data
        return bytes(out)

    def write(self, sector: int, data: bytes) -> None:
        self._check(sector, len(data) // SECTOR_SIZE)
        for i in range(len(data) // SECTOR_SIZE):
            chunk = data[i * SECTOR_SIZE:(i + 1) * SECTOR_SIZE]
            index = self._map.get(sector + i)
            if self._fd is None:
                if index is None:
                    self._map[sector + i] = len(self._memory)
                    self._memory.append(chunk)
                else:
                    self._memory[index] = chunk
                continue
            if index is None:
                index = len(self._map)
                os.pwrite(self._fd, chunk, self._data_offset(index))     # the data first, then its entry
                os.pwrite(self._fd, struct.pack("<I", index + 1), SECTOR_SIZE + (sector + i) * 4)
                self._map[sector + i] = index
            else:
                os.pwrite(self._fd, chunk, self._data_offset(index))

    def flush(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        self.flush()
        for fd in (self._fd, self._base_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._base_fd = None

    def state(self) -> dict:
        return {**super().state(), "overlay": self.overlay_path, "sectors_written": len(self._map)}


# -- --drive -----------------------------------------------------------------------------------
IDE_INDEXES = 2          # index 0-1: the primary channel's master and slave (no secondary channel)


@dataclass(frozen=True)
class DriveSpec:
    """One `--drive file=PATH,if=ide,index=N[,format=raw|overlay][,overlay=PATH][,readonly]`."""
    file: str
    index: int
    format: str = "raw"
    read_only: bool = False
    overlay: Optional[str] = None

    def open(self) -> Disk:
        if self.format == "overlay":
            return Overlay(self.file, self.overlay)
        return RawImage(self.file, self.read_only)


def _split_options(text: str) -> list[str]:
    """QEMU's option syntax: commas separate, ',,' is a comma inside a value."""
    parts, current, i = [], "", 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current += ","
                i += 2
                continue
            parts.append(current)
            current = ""
        else:
            current += text[i]
        i += 1
    parts.append(current)
    return parts


def _flag(key: str, value: Optional[str]) -> bool:
    if value is None or value in ("on", "true", "yes"):
        return True
    if value in ("off", "false", "no"):
        return False
    raise ConfigError(f"--drive {key}={value}: expected on or off")


def parse_drive(text: str, next_index: int = 0) -> DriveSpec:
    """One --drive value, or a one-line ConfigError. `index` defaults to `next_index`."""
    fields: dict[str, Optional[str]] = {}
    for part in _split_options(text):
        if not part:
            raise ConfigError(f"--drive {text!r}: empty option")
        key, sep, value = part.partition("=")
        if key in fields:
            raise ConfigError(f"--drive {text!r}: {key} given twice")
        fields[key] = value if sep else None
    known = {"file", "if", "index", "format", "readonly", "overlay", "media"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"--drive: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
    path = fields.get("file")
    if not path:
        raise ConfigError(f"--drive {text!r}: file=PATH is required")
    if fields.get("if", "ide") != "ide":
        raise ConfigError(f"--drive {path}: if={fields['if']} is not supported (only if=ide)")
    if fields.get("media", "disk") != "disk":
        raise ConfigError(f"--drive {path}: media={fields['media']} is not supported (only disks, no CD-ROM)")
    try:
        index = int(fields["index"]) if fields.get("index") is not None else next_index
    except ValueError:
        raise ConfigError(f"--drive {path}: index={fields['index']} is not a number") from None
    if index in (2, 3):
        raise ConfigError(f"--drive {path}: index={index} is on the secondary IDE channel, which is not "
                          f"modelled (index 0: primary master, 1: primary slave)")
    if not 0 <= index < IDE_INDEXES:
        raise ConfigError(f"--drive {path}: index={index} is out of range (0: primary master, 1: primary slave)")
    fmt = fields.get("format") or "raw"
    if fmt not in ("raw", "overlay"):
        raise ConfigError(f"--drive {path}: format={fmt} is not supported (raw or overlay)")
    read_only = _flag("readonly", fields["readonly"]) if "readonly" in fields else False
    overlay = fields.get("overlay")
    if overlay is not None and fmt != "overlay":
        raise ConfigError(f"--drive {path}: overlay=PATH needs format=overlay")
    if fmt == "overlay" and read_only:
        raise ConfigError(f"--drive {path}: format=overlay is writable by design; leave out readonly")
    return DriveSpec(path, index, fmt, read_only, overlay or None)


def open_drives(specs: list[DriveSpec]) -> dict[int, Disk]:
    """The back ends of the drives asked for, by IDE index; a one-line ConfigError (and nothing
    left open) if two share an index or a file, or a file cannot be used."""
    seen: dict[int, DriveSpec] = {}
    files: list[tuple[str, str]] = []
    for spec in specs:
        if spec.index in seen:
            raise ConfigError(f"--drive {spec.file}: index={spec.index} is already {seen[spec.index].file}")
        seen[spec.index] = spec
        for path in (spec.file, spec.overlay):
            if path is None:
                continue
            real = os.path.realpath(path)
            for other, other_real in files:
                if real == other_real or (os.path.exists(path) and os.path.exists(other)
                                          and os.path.samefile(path, other)):
                    raise ConfigError(f"--drive {path}: the same file as {other} (two drives on one "
                                      f"file would corrupt it)")
            files.append((path, real))
    disks: dict[int, Disk] = {}
    try:
        for spec in specs:
            disks[spec.index] = spec.open()
    except BaseException:
        for disk in disks.values():
            disk.close()
        raise
    return disks
