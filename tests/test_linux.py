"""Debian's i386 kernel with a busybox initramfs (tests/linux.py): the initramfs builder, and the
boot to the init script's marker under QEMU (the reference) and the monitor."""

import gzip
import shutil
import stat

import pytest

from tests import linux

needs_linux = pytest.mark.skipif(linux.linux_missing() is not None, reason=linux.linux_missing() or "")
needs_qemu = pytest.mark.skipif(shutil.which(linux.QEMU) is None, reason=f"{linux.QEMU} is not installed")

# What the init script (tests/linux.py's INIT) prints under qemu-system-i386 7.2 -m 256 -kernel
# vmlinuz -initrd <it> -append console=ttyS0, from its marker to its end marker (recorded; every
# line is the same on every boot).
QEMU_INIT_OUTPUT = [
    linux.MARKER,
    "Linux 6.1.0-57-686 i686",
    "console=ttyS0",
    "sum 42",
    "bin   dev   init  proc  root  sbin  sys   tmp   usr",
    "hello",
]


# The shell session (tests/linux.py: SHELL_INIT, SHELL_COMMANDS typed at each prompt) as QEMU
# 7.2 shows it under the same command line, -serial stdio (shell_transcript: from the marker to
# the poweroff line, kernel log lines and ash's cursor queries left out). Recorded by
# test_qemu_runs_the_shell_session; every line is the same on every run.
QEMU_SHELL_TRANSCRIPT = [
    linux.SHELL_MARKER,
    "",
    "",
    "BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) built-in shell (ash)",
    "Enter 'help' for a list of built-in commands.",
    "",
    "/ # echo hello from the shell",
    "hello from the shell",
    "/ # uname -s -r -m",
    "Linux 6.1.0-57-686 i686",
    "/ # ls /",
    "bin   dev   init  proc  root  sbin  sys   tmp   usr",
    "/ # cat /proc/cpuinfo | grep -c processor",
    "1",
    "/ # mount -t tmpfs none /tmp && echo x > /tmp/f && cat /tmp/f",
    "x",
    "/ # echo one two three | wc -w",
    "3",
    "/ # sleep 1 && echo slept",
    "slept",
    "/ # (sleep 5; echo late) &",
    "/ # kill %1; sleep 1",
    "[1]+  Terminated                 (sleep 5; echo late)",
    "/ # trap 'echo got USR1' USR1; kill -USR1 $$",
    "got USR1",
    "/ # i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; echo spawned $i",
    "spawned 200",
    "/ # echo status $?",
    "status 0",
    "/ # poweroff -f",
]


def test_cpio_newc_round_trip():
    entries = [("dir", stat.S_IFDIR | 0o755, b"", (0, 0)), ("dir/file", stat.S_IFREG | 0o644, b"abcde", (0, 0)),
               ("dev/console", stat.S_IFCHR | 0o600, b"", (5, 1))]
    archive = linux.cpio_newc(entries)
    assert archive.startswith(b"070701") and len(archive) % 512 == 0
    assert linux.read_cpio_newc(archive) == entries
    # Each header and name, and each file's data, starts on a 4-byte boundary (newc's rule).
    assert archive[110:114] == b"dir\0" and archive.index(b"070701", 1) % 4 == 0


@needs_linux
def test_initramfs_holds_busybox_init_and_console():
    entries = {name: (mode, data, rdev) for name, mode, data, rdev in
               linux.read_cpio_newc(gzip.decompress(linux.initramfs()))}
    assert entries["bin/busybox"][1] == linux.BUSYBOX.read_bytes()
    assert entries["bin/busybox"][0] == stat.S_IFREG | 0o755
    assert entries["init"][1].startswith(b"#!/bin/busybox sh\n") and entries["init"][0] & 0o111
    assert entries["dev/console"][0] == stat.S_IFCHR | 0o600 and entries["dev/console"][2] == (5, 1)
    assert all(stat.S_ISDIR(entries[name][0]) for name in ("proc", "sys", "dev", "tmp", "bin"))
    assert linux.initramfs() == linux.initramfs()          # the same bytes every time


@needs_linux
@needs_qemu
def test_qemu_boots_the_initramfs_to_its_marker(tmp_path):
    """The reference: QEMU runs the init script to its end and powers off."""
    initrd = linux.write_initramfs(tmp_path / "initrd.gz")
    proc = linux.run(linux.qemu_command(initrd), timeout=120)
    assert linux.init_output(proc.stdout) == QEMU_INIT_OUTPUT, proc.stdout[-2000:]
    assert b"reboot: Power down" in proc.stdout


@needs_linux
@pytest.mark.slow
# Direct and vt since their rdtsc reads guest time (Engine.intercept_rdtsc: it was the host's TSC,
# against which Linux calibrated its TSC and APIC timer, and the boot crawled) and since the page
# fault Unicorn takes after a run for an exit in Linux's freed __init text is undone (the first
# user-space page fault was a double fault: tests/test_rdtsc.py).
@pytest.mark.parametrize("options", [("--mode", "bt"),
                                     ("--mode", "bt", "--paging", "nested"),
                                     ("--mode", "direct"),
                                     ("--mode", "vt")],
                         ids=["bt-shadow", "bt-nested", "direct", "vt"])
def test_debian_boots_to_the_init_script_and_powers_off(tmp_path, options):
    """The unmodified kernel decompresses, boots, runs busybox's /init, whose output is QEMU's,
    and powers off through ACPI (S5): the run ends powered_off, status 0 (about 5 minutes each
    on the loaded 2-core machine)."""
    initrd = linux.write_initramfs(tmp_path / "initrd.gz")
    report = tmp_path / "report.json"
    proc = linux.run(linux.vmm_command(initrd, *options, "--report", str(report)), timeout=3600)
    assert linux.init_output(proc.stdout) == QEMU_INIT_OUTPUT, proc.stdout[-3000:]
    assert b"reboot: Power down" in proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_shell_transcript_reads_the_session_as_a_person_does():
    console = (b"[    1.000000] early\r\n" + linux.SHELL_MARKER.encode() + b"\r\n/ # \x1b[6necho hi\r\nhi\r\n"
               b"[    2.500000] a kernel message\r\n/ # \x1b[6npoweroff -f\r\n[    3.000000] reboot: Power down\r\n")
    assert linux.shell_transcript(console) == [linux.SHELL_MARKER, "/ # echo hi", "hi", "/ # poweroff -f"]
    assert linux.shell_transcript(b"no marker") == []


@needs_linux
@needs_qemu
def test_qemu_runs_the_shell_session(tmp_path):
    """The reference: QEMU boots the shell initramfs, the commands are typed at its prompts on
    the serial line (tests/linux.py's converse, as for the monitor), poweroff -f ends it."""
    initrd = linux.write_initramfs(tmp_path / "initrd.gz", linux.SHELL_INIT)
    session = linux.converse(linux.qemu_command(initrd), timeout=180)
    assert linux.shell_transcript(session.console) == QEMU_SHELL_TRANSCRIPT, session.console[-3000:]
    assert session.typed == len(linux.SHELL_COMMANDS) and session.returncode == 0
    assert b"reboot: Power down" in session.console


@needs_linux
@pytest.mark.slow
@pytest.mark.parametrize("options", [("--mode", "bt", "--tcache-size", "32767"), ("--mode", "direct"), ("--mode", "vt")],
                         ids=["bt-shadow", "direct", "vt"])
def test_shell_session_on_the_serial_console(tmp_path, options):
    """Issue 15: the kernel boots to busybox's interactive shell on ttyS0, each command typed on
    the monitor's stdin (COM1's input) at its prompt runs (fork/exec, pipes, signals, sleep's
    timers, tmpfs, a 200-process fork/exec storm) with QEMU's output, and poweroff -f ends the
    run with status 0."""
    initrd = linux.write_initramfs(tmp_path / "initrd.gz", linux.SHELL_INIT)
    session = linux.converse(linux.vmm_command(initrd, *options), timeout=3600)
    assert linux.shell_transcript(session.console) == QEMU_SHELL_TRANSCRIPT, session.console[-3000:]
    assert session.typed == len(linux.SHELL_COMMANDS)
    assert b"reboot: Power down" in session.console
    assert session.returncode == 0
