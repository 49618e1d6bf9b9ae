"""Debian's i386 kernel (../shared/guests/linux) with a busybox initramfs built here in pure Python
(newc cpio + gzip, no host tools), run under `vmm run` or qemu-system-i386 -kernel."""

from __future__ import annotations

import gzip
import io
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from tests.samples import REPO_ROOT

LINUX = REPO_ROOT.parent / "shared" / "guests" / "linux"
KERNEL = LINUX / "vmlinuz"
BUSYBOX = LINUX / "busybox"
QEMU = "qemu-system-i386"
MARKER = "VMM-LINUX-INIT-OK"

# The init script: busybox's applets installed as links, the pseudo file systems mounted, a
# marker, a few commands whose output is the same on every boot (and under QEMU), power off.
# What both init scripts begin with: busybox's applets installed as links, the pseudo file
# systems mounted, as a real system's init does.
INIT_SETUP = """#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
"""
INIT = INIT_SETUP + f"""echo {MARKER}
uname -s -r -m
cat /proc/cmdline
echo sum $((6 * 7))
ls /
echo hello > /tmp/file && cat /tmp/file
echo {MARKER}-END
poweroff -f
"""

SHELL_MARKER = "VMM-LINUX-SHELL"
# The interactive variant: /init mounts what a real system would, then starts busybox's shell
# on the console as a terminal, the way an init does: setsid makes it a session leader and
# cttyhack opens the console's real device (/dev/ttyS0, from /sys/class/tty/console/active) as
# its controlling terminal, so job control (`&`, `kill %1`) works. The prompt is ash's "/ # ".
SHELL_INIT = INIT_SETUP + f"""echo {SHELL_MARKER}
exec setsid cttyhack sh
"""
PROMPT = b"/ # "
# Typed on the serial console one line at a time, each once the prompt is back: fork/exec, pipes,
# signals (a trap, a job killed), timers (sleep), tmpfs, a fork/exec storm of 200 processes, and
# poweroff -f to end the run. `ls /` is shorter than the 8 bytes at which Linux sets the 16550A's
# receive FIFO to interrupt: it reaches the shell through the FIFO's character timeout
# (tests/test_uart_fifo_timeout.py).
SHELL_COMMANDS = [
    "echo hello from the shell",
    "uname -s -r -m",
    "ls /",
    "cat /proc/cpuinfo | grep -c processor",
    "mount -t tmpfs none /tmp && echo x > /tmp/f && cat /tmp/f",
    "echo one two three | wc -w",
    "sleep 1 && echo slept",
    "(sleep 5; echo late) &",
    "kill %1; sleep 1",     # (the job's end is reported at the next prompt: after it ended)
    "trap 'echo got USR1' USR1; kill -USR1 $$",
    "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; echo spawned $i",
    "echo status $?",
    "poweroff -f",
]

S_IFDIR, S_IFREG, S_IFCHR = 0o040000, 0o100000, 0o020000


def linux_missing() -> Optional[str]:
    """Why the Linux tests cannot run here, or None."""
    if not (KERNEL.exists() and BUSYBOX.exists()):
        return f"Debian's kernel and busybox are not in {LINUX} (see ../shared/guests/linux/README.md)"
    return None


def _cpio_entry(name: str, mode: int, data: bytes = b"", inode: int = 0, rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One newc ("070701") record: the header's 13 hex fields, the NUL-terminated name and the
    data, each padded to 4 bytes (Documentation/driver-api/early-userspace/buffer-format.rst)."""
    encoded = name.encode() + b"\0"
    fields = (inode, mode, 0, 0, 2 if mode & S_IFDIR else 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    record = header + encoded
    record += b"\0" * (-len(record) % 4)
    record += data + b"\0" * (-len(data) % 4)
    return record


def cpio_newc(entries: list[tuple[str, int, bytes, tuple[int, int]]]) -> bytes:
    """A newc archive of (name, mode, data, (rdev major, minor)) entries, with its trailer."""
    out = io.BytesIO()
    for inode, (name, mode, data, rdev) in enumerate(entries, start=1):
        out.write(_cpio_entry(name, mode, data, inode, rdev))
    out.write(_cpio_entry("TRAILER!!!", 0))
    out.write(b"\0" * (-out.tell() % 512))
    return out.getvalue()


def initramfs(init: str = INIT, busybox: Path = BUSYBOX) -> bytes:
    """A gzipped newc initramfs: /bin/busybox, the /init script, the mount points and
    /dev/console (the kernel opens it for init's standard streams before devtmpfs is mounted)."""
    entries = [(directory, S_IFDIR | 0o755, b"", (0, 0))
               for directory in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root")]
    entries += [
        ("dev/console", S_IFCHR | 0o600, b"", (5, 1)),
        ("bin/busybox", S_IFREG | 0o755, busybox.read_bytes(), (0, 0)),
        ("init", S_IFREG | 0o755, init.encode(), (0, 0)),
    ]
    return gzip.compress(cpio_newc(entries), compresslevel=6, mtime=0)


def write_initramfs(path: Path, init: str = INIT) -> Path:
    path.write_bytes(initramfs(init))
    return path


def vmm_command(initrd: Path, *options: str, append: str = "console=ttyS0", mem: int = 256) -> list[str]:
    return [sys.executable, "-m", "vmm", "run", str(KERNEL), "--initrd", str(initrd), "--append", append,
            "--mem", str(mem), *options]


def qemu_command(initrd: Path, append: str = "console=ttyS0", mem: int = 256) -> list[str]:
    """As ../shared/guests/linux/README.md boots it."""
    return [QEMU, "-accel", "tcg", "-no-reboot", "-serial", "stdio", "-monitor", "none", "-display", "none",
            "-nic", "none", "-m", str(mem), "-kernel", str(KERNEL), "-initrd", str(initrd), "-append", append]


def run(command: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, cwd=REPO_ROOT)


def init_output(console: bytes) -> list[str]:
    """The init script's lines: from the marker to the end marker, carriage returns dropped."""
    text = console.decode(errors="replace").replace("\r", "")
    start = text.find(MARKER + "\n")
    if start < 0:
        return []
    end = text.find(MARKER + "-END", start)
    return text[start:end if end >= 0 else len(text)].splitlines()


class Conversation:
    """What a session on the serial console printed, and whether it got through its commands."""

    def __init__(self, console: bytes, typed: int, returncode: Optional[int], seconds: float) -> None:
        self.console, self.typed, self.returncode, self.seconds = console, typed, returncode, seconds


def converse(command: list[str], commands: list[str] = SHELL_COMMANDS, timeout: float = 600,
             marker: str = SHELL_MARKER, prompt: bytes = PROMPT) -> Conversation:
    """Run `command` (QEMU's or the monitor's, its stdin the console's input) and type each of
    `commands` at the shell once its prompt is back, as a person would: the same for both, and
    nothing sent before the shell runs (input typed earlier is the kernel's to drop or echo at
    will). Returns once the process ends (the last command powers off) or `timeout` passes (the
    process is then killed)."""
    started = time.perf_counter()
    deadline = started + timeout
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            cwd=REPO_ROOT)
    console = bytearray()

    def read_until(done) -> bool:
        while not done():
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.perf_counter()))
            if not ready:
                return False
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return False
            console.extend(chunk)
        return True

    typed = 0
    try:
        at = [-1]

        def shell_up() -> bool:
            at[0] = console.find(marker.encode())
            return at[0] >= 0 and console.count(prompt, at[0]) >= 1
        if read_until(shell_up):
            for typed, line in enumerate(commands, start=1):
                proc.stdin.write(line.encode() + b"\n")
                proc.stdin.flush()
                if typed == len(commands):
                    break
                if not read_until(lambda: console.count(prompt, at[0]) > typed):
                    break
        read_until(lambda: False)            # to the end of the output (the guest powers off)
        proc.wait(timeout=max(1.0, deadline - time.perf_counter()))
    except (subprocess.TimeoutExpired, BrokenPipeError):
        pass
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Conversation(bytes(console), typed, proc.returncode, time.perf_counter() - started)


_KERNEL_MESSAGE = re.compile(r"^\[ *\d+\.\d+\] ")


def shell_transcript(console: bytes, marker: str = SHELL_MARKER) -> list[str]:
    """The session as a person reads it: from the marker on, the shell's terminal queries (ash
    asks the cursor position, ESC [6n, before each prompt), carriage returns and the kernel's own
    log lines (timestamped) dropped, up to and including the `poweroff -f` line."""
    text = console.decode(errors="replace").replace("\x1b[6n", "").replace("\r", "")
    start = text.find(marker + "\n")
    if start < 0:
        return []
    lines = [line for line in text[start:].splitlines() if not _KERNEL_MESSAGE.match(line)]
    for index, line in enumerate(lines):
        if line.endswith("poweroff -f"):
            return lines[:index + 1]
    return lines


def read_cpio_newc(archive: bytes) -> list[tuple[str, int, bytes, tuple[int, int]]]:
    """The entries of a newc archive (up to its trailer), as cpio_newc takes them."""
    entries, at = [], 0
    while True:
        fields = [int(archive[at + 6 + 8 * index:at + 14 + 8 * index], 16) for index in range(13)]
        if archive[at:at + 6] != b"070701":
            raise ValueError(f"no newc header at {at:#x}")
        mode, size, rdev, namesize = fields[1], fields[6], (fields[9], fields[10]), fields[11]
        name_at = at + 110
        name = archive[name_at:name_at + namesize - 1].decode()
        data_at = name_at + namesize + (-(110 + namesize) % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append((name, mode, archive[data_at:data_at + size], rdev))
        at = data_at + size + (-size % 4)


if __name__ == "__main__":          # python -m tests.linux [--shell] initrd.gz: for a manual run
    shell = sys.argv[1:2] == ["--shell"]
    arguments = sys.argv[1 + shell:]
    if len(arguments) != 1 or linux_missing():
        sys.exit(linux_missing() or "usage: python -m tests.linux [--shell] OUTPUT.gz")
    write_initramfs(Path(arguments[0]), SHELL_INIT if shell else INIT)
