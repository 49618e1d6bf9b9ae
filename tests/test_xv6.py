"""An unmodified xv6 (../shared/guests/xv6) driven at its serial console as a user types: every
command's output must be what the same command prints under qemu-system-i386, which runs the same
image beside it (tests/xv6.py drives both). With `kernel`, the file system is a copy of fs.img on
the second IDE disk, and what the commands wrote must leave the copy byte for byte as QEMU leaves
its own copy. bench/bench_console.py times the same under each mode against QEMU."""

import hashlib
import shutil

import pytest

from tests.xv6 import PROMPT, QEMU, XV6, Console, qemu_command, session, vmm_command, xv6_missing

pytestmark = [
    pytest.mark.skipif(xv6_missing() is not None, reason=xv6_missing() or ""),
    pytest.mark.skipif(shutil.which(QEMU) is None, reason=f"{QEMU} is not installed (tools/run_tests.sh installs it)"),
]

# What a user tries first; `wc README` is README.md's own check (49 313 2191 under QEMU).
MEMFS_LINES = ["echo hi", "wc README", "echo hi there | wc", "ls", "mkdir d", "echo x > d/f", "cat d/f", "rm d/f"]
DISK_LINES = ["ls", "echo hello > f", "cat f", "mkdir d", "echo x > d/g", "cat d/g"]


@pytest.fixture(scope="module")
def memfs_under_qemu():
    transcript = session(qemu_command("kernelmemfs"), MEMFS_LINES, timeout=60)
    assert b"49 313 2191 README" in transcript[2], transcript    # QEMU itself ran the commands
    return transcript


@pytest.mark.parametrize("options", [("--mode", "bt"), ("--mode", "bt", "--paging", "nested"),
                                     ("--mode", "direct"), ("--mode", "trap"), ("--mode", "vt")],
                         ids=["bt-shadow", "bt-nested", "direct", "trap", "vt"])
def test_the_shell_of_kernelmemfs_answers_as_under_qemu(memfs_under_qemu, options):
    transcript = session(vmm_command("kernelmemfs", *options), MEMFS_LINES, timeout=120)
    for line, ours, qemus in zip(["(boot)"] + MEMFS_LINES, transcript, memfs_under_qemu):
        assert ours == qemus, f"{line!r}: {ours!r} where QEMU prints {qemus!r}"


# The engine's code buffer filled: Unicorn 2.1.1 flushes a full one itself, from inside a run, and
# under bt that run went wrong (xv6's usertests read a kernel stack back as zeros after 7 minutes;
# with a 2 MiB buffer its boot faulted at 0x8e000000, or the engine crashed under nested paging).
# The engine flushes it between runs before it can fill (Engine.flush_before_full).
@pytest.mark.parametrize("paging", ["shadow", "nested"])
def test_bt_with_a_small_engine_code_buffer_answers_as_under_qemu(memfs_under_qemu, paging, monkeypatch):
    monkeypatch.setenv("VMM_CODE_BUFFER_MIB", "2")
    lines = MEMFS_LINES[:3]
    transcript = session(vmm_command("kernelmemfs", "--mode", "bt", "--paging", paging), lines, timeout=120)
    assert transcript == memfs_under_qemu[:len(lines) + 1]


def test_kernel_on_an_ide_disk_writes_the_image_as_qemu_does(tmp_path):
    ours_image, qemus_image = tmp_path / "fs-vmm.img", tmp_path / "fs-qemu.img"
    shutil.copy(XV6 / "fs.img", ours_image)
    shutil.copy(XV6 / "fs.img", qemus_image)
    qemus = session(qemu_command("kernel", "-drive", f"file={qemus_image},index=1,media=disk,format=raw"),
                    DISK_LINES, timeout=60)
    assert b"hello" in qemus[3] and b"README" in qemus[1], qemus
    ours = session(vmm_command("kernel", "--drive", f"file={ours_image},if=ide,index=1"), DISK_LINES, timeout=120)
    for line, mine, theirs in zip(["(boot)"] + DISK_LINES, ours, qemus):
        assert mine == theirs, f"{line!r}: {mine!r} where QEMU prints {theirs!r}"
    digest = [hashlib.sha256(path.read_bytes()).hexdigest() for path in (ours_image, qemus_image, XV6 / "fs.img")]
    assert digest[0] == digest[1] != digest[2]       # the same writes, and some there were


@pytest.mark.parametrize("mode", ["bt", "direct", "trap", "vt"])
def test_xv6_finds_the_mp_table_and_takes_its_interrupts_through_the_apics(mode):
    # With SeaBIOS's MP table (vmm/mptable.py) xv6 goes the way it goes under QEMU: its mp.c finds
    # the floating pointer in the F segment, lapicinit runs the local APIC's timer (periodic,
    # vector 32) and masks LINT0, cutting the i8259 pair off, and the console's IRQ 4 comes through the I/O
    # APIC (vector 36). Before the table, xv6 ran on the PIC and the PIT. A byte typed ahead is
    # eaten by uartinit's read of the receiver, under QEMU too: " echo hi" reaches the shell. The run
    # ends at 10^8 guest instructions (idle time is skipped: the shell has answered by then).
    from tests.guests import run_image
    result, output, vm = run_image(str(XV6 / "kernelmemfs"), b" echo hi\n", mode=mode, mem_mib=256,
                                  max_instructions=100_000_000, timeout=120)
    assert b"init: starting sh\n$ hi\n$ " in output, (result.message, output[-300:])
    assert vm.interrupts.apic.lvt[0] == 0x20020                  # timer: periodic, vector 32
    assert vm.interrupts.ioapic.table[4] & 0x1FFFF == 0x24       # COM1: unmasked, vector 36
    assert vm.interrupts.apic.lvt[3] & 0x10000                    # LINT0 masked: no PIC interrupt
    assert vm.external_interrupts[0x20] > 0 and vm.external_interrupts[0x24] > 0
    assert set(vm.external_interrupts) <= {0x20, 0x24, 0x3F}     # nothing from the PIC (0x3F: spurious)


# usertests, xv6's own test of its kernel, typed at the shell: a pass is what it prints at the end.
# Minutes each (under load: bt 4 with shadow paging, 17 with nested; direct 2.5, trap 8, vt 3;
# QEMU 10 s): the slow group.
@pytest.mark.slow
@pytest.mark.parametrize("options", [("--mode", "bt"), ("--mode", "bt", "--paging", "nested"),
                                     ("--mode", "direct"), ("--mode", "trap"), ("--mode", "vt")],
                         ids=["bt-shadow", "bt-nested", "direct", "trap", "vt"])
def test_usertests_pass(options):
    console = Console(vmm_command("kernelmemfs", *options), timeout=1800)
    try:
        at = console.expect(PROMPT, 0)
        console.type("usertests")
        end = console.expect(b"ALL TESTS PASSED\n", at)
        assert b"panic" not in console.output[:end], console.output[-2000:]
    finally:
        console.close()
