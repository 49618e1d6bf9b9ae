"""Keys typed on the PS/2 keyboard (issue 14): host bytes become key strokes (vmm/keyboard.py),
the keyboard's scan codes go through the i8042's translation to the guest at port 0x60 under IRQ 1
(vmm/devices/i8042.py), typed input wakes a running guest as COM1's does (vmm/input_wake.py).
The guests' expected output is what qemu-system-i386 7.2 printed for them when its monitor's
`sendkey` pressed the same keys (the QEMU tests here do it again)."""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.guests import HEX, QEMU_PLATFORM, idt_setup, needs_qemu
from tests.samples import REPO_ROOT, build_samples as bs
from vmm.builder import MachineConfig, build_machine
from vmm.console import BufferConsole
from vmm.devices.i8042 import I8042
from vmm.keyboard import StrokeDecoder, key_events, scan_codes, translate

MODES = ("bt", "direct", "trap", "vt")

# -- terminal bytes to keys, keys to scan codes ---------------------------------------------------


def test_terminal_bytes_become_us_layout_strokes():
    decode = StrokeDecoder().feed
    assert decode(b"aZ5%\r\n\t\x7f\x08 ") == [("a",), ("shift", "z"), ("5",), ("shift", "5"), ("ret",), ("ret",),
                                              ("tab",), ("backspace",), ("backspace",), ("spc",)]
    assert decode(b"\x03\x1a\x01") == [("ctrl", "c"), ("ctrl", "z"), ("ctrl", "a")]
    assert decode(b"\x1b[A\x1b[B\x1bOC\x1b[D\x1b[3~\x1b[5~") == [("up",), ("down",), ("right",), ("left",),
                                                                ("delete",), ("pgup",)]
    assert decode(b"\x1b") == [("esc",)]                    # nothing follows: the Escape key
    assert decode(b"\x1bx") == [("esc",), ("x",)]
    assert decode(b"\x1b[99~q\xc3\xa9") == [("q",)]        # an unknown sequence and non-ASCII: dropped
    decoder = StrokeDecoder()
    assert decoder.feed(b"\x1b[") == [] and decoder.feed(b"A") == [("up",)]    # a sequence in two reads
    assert all(decode(bytes([byte])) for byte in range(0x00, 0x7F))          # every ASCII byte types


def test_a_stroke_presses_in_order_and_releases_in_reverse_as_qemu_sendkey():
    assert key_events(("ctrl", "c")) == [("ctrl", True), ("c", True), ("c", False), ("ctrl", False)]


def test_scan_codes_in_sets_1_and_2_and_the_controllers_translation():
    assert scan_codes("a", True, 2) == [0x1C] and scan_codes("a", False, 2) == [0xF0, 0x1C]
    assert scan_codes("up", False, 2) == [0xE0, 0xF0, 0x75]
    assert scan_codes("a", False, 1) == [0x9E] and scan_codes("up", True, 1) == [0xE0, 0x48]
    # Set 1 as the PC/XT defined it (QEMU's atset1) for every key, through the translation.
    set1 = {"esc": 0x01, "1": 0x02, "0": 0x0B, "backspace": 0x0E, "tab": 0x0F, "q": 0x10, "ret": 0x1C,
            "ctrl": 0x1D, "a": 0x1E, "l": 0x26, "grave_accent": 0x29, "shift": 0x2A, "backslash": 0x2B,
            "z": 0x2C, "m": 0x32, "slash": 0x35, "shift_r": 0x36, "alt": 0x38, "spc": 0x39,
            "caps_lock": 0x3A, "f1": 0x3B, "f7": 0x41, "f10": 0x44, "f11": 0x57, "f12": 0x58,
            "home": 0x47, "up": 0x48, "pgup": 0x49, "left": 0x4B, "right": 0x4D, "end": 0x4F,
            "down": 0x50, "pgdn": 0x51, "insert": 0x52, "delete": 0x53}
    for key, code in set1.items():
        state = {}
        assert translate(scan_codes(key, True, 2), state) == scan_codes(key, True, 1)
        assert translate(scan_codes(key, False, 2), state) == scan_codes(key, False, 1)
        assert scan_codes(key, True, 1)[-1] == code, key


def test_each_byte_read_from_port_0x60_is_an_irq1_edge():
    """QEMU's ps2_read_data lowers the IRQ on a read and raises it again while bytes are left: a
    handler that reads one byte per interrupt gets the next one as a new edge. (The IRQ line
    stayed high from the first byte to the last before: such a guest got only its first byte.)"""
    irqs = []
    kbc = I8042(lambda why: None, lambda irq, level: irqs.append((irq, level)), host_input=BufferConsole(b"A"))
    status = kbc.command_port()
    assert kbc.armed() and status.io_read(0, 1) & 1 and irqs == [(1, True)]
    read = [kbc.io_read(0, 1) for _ in range(4)]
    assert read == [0x2A, 0x1E, 0x9E, 0xAA]                 # shift, a, a released, shift released
    assert irqs == [(1, True)] + [(1, False), (1, True)] * 3 + [(1, False)]
    assert not status.io_read(0, 1) & 1 and not kbc.armed() and kbc.io_read(0, 1) == 0xAA


def test_the_command_byte_gates_the_keys_and_their_translation():
    irqs = []
    kbc = I8042(lambda why: None, lambda irq, level: irqs.append((irq, level)), host_input=BufferConsole(b"ab"))
    status = kbc.command_port()
    status.io_write(0, 1, 0xAD)                       # keyboard interface disabled: nothing comes
    assert not kbc.armed() and not status.io_read(0, 1) & 1
    status.io_write(0, 1, 0x60)
    kbc.io_write(0, 1, 0x21)                          # enabled again, no translation: set 2 as sent
    assert [kbc.io_read(0, 1) for _ in range(3)] == [0x1C, 0xF0, 0x1C]
    # the next stroke came as the last byte was read (the queue empty)
    assert [kbc.io_read(0, 1) for _ in range(3)] == [0x32, 0xF0, 0x32]
    kbc.io_write(0, 1, 0xF2)                          # identify: 0x83 untranslated (0x41 translated)
    assert [kbc.io_read(0, 1) for _ in range(3)] == [0xFA, 0xAB, 0x83]


# -- a guest that reads scan codes under IRQ 1 ----------------------------------------------------
# The keys: a, A, Ctrl-C, Up, Escape, Tab, Backspace, Enter; as QEMU's sendkey names them and as
# a terminal sends them.
SENDKEYS = ["a", "shift-a", "ctrl-c", "up", "esc", "tab", "backspace", "ret"]
TYPED = b"aA\x03\x1b[A\x1b\t\x7f\r"
SPIN = 3_000_000


def keyboard_guest(translated: bool = True, spin: bool = False) -> str:
    """IRQ 1 alone unmasked (vector 9 at the firmware's PIC base); the handler reads ONE byte
    from port 0x60 per interrupt and prints it; after Enter's break code (set 1's 0x9C, set 2's
    0x5A after 0xF0) the guest prints a newline and exits. `R` says it is ready (QEMU's keys
    are sent then). Untranslated: the command byte's KCC bit cleared first (0x61 -> 0x21).
    `spin`: a compute loop between looks at the flag instead of hlt."""
    untranslate = "" if translated else "    mov al, 0x60\n    out 0x64, al\n    mov al, 0x21\n    out 0x60, al\n"
    wait = (f"    xor ecx, ecx\n    mov ebx, 1\nspin:\n    imul ebx, ebx, 5\n    add ebx, ecx\n    inc ecx\n"
            f"    cmp ecx, {SPIN}\n    jb spin\n    cmp byte ptr [0x6000], 0\n    je spin\n") if spin else \
        "wait:\n    hlt\n    cmp byte ptr [0x6000], 0\n    je wait\n"
    return idt_setup({0x09: "kbd_irq"}) + untranslate + """
    mov esp, 0x7000
    mov byte ptr [0x6000], 0
    mov byte ptr [0x6001], 0
    mov al, 0xfd
    out 0x21, al
    mov al, 0x52
    call putc
    call nl
    sti
""" + wait + """
    cli
    call nl
    mov eax, 0
    out 0xf4, eax
    hlt
kbd_irq:
    push eax
    in al, 0x60
    call hex8
    call space
    cmp al, 0x9c
    je kbd_last
    cmp byte ptr [0x6001], 0xf0
    jne kbd_note
    cmp al, 0x5a
    jne kbd_note
kbd_last:
    mov byte ptr [0x6000], 1
kbd_note:
    mov byte ptr [0x6001], al
    mov al, 0x20
    out 0x20, al
    pop eax
    iretd
""" + HEX


# qemu-system-i386 7.2 with SENDKEYS pressed through its monitor (test_keyboard_guest_under_qemu).
EXPECTED = {
    True: b"R\n1e 9e 2a 1e 9e aa 1d 2e ae 9d e0 48 e0 c8 01 81 0f 8f 0e 8e 1c 9c \n",
    False: b"R\n1c f0 1c 12 1c f0 1c f0 12 14 21 f0 21 f0 14 e0 75 e0 f0 75 76 f0 76 0d f0 0d 66 f0 66 5a f0 5a \n",
}


def run_with_keys(tmp_path, source: str, keys: bytes, **config):
    path = tmp_path / "guest.s"
    path.write_text(source)
    console = BufferConsole()
    vm, _image = build_machine(MachineConfig(image=str(path), timeout=60, **config), console,
                               keyboard=BufferConsole(keys))
    return vm.run(), bytes(console.output), vm


@pytest.mark.parametrize("translated", [True, False], ids=["set1-translated", "set2"])
@pytest.mark.parametrize("mode", MODES)
def test_keys_typed_reach_the_guest_as_qemus_scan_codes(tmp_path, mode, translated):
    result, output, vm = run_with_keys(tmp_path, keyboard_guest(translated), TYPED, mode=mode)
    assert (output, result.exit_status) == (EXPECTED[translated], 0), result.message
    assert dict(vm.external_interrupts) == {0x09: len(EXPECTED[translated].split()) - 1}


def qemu_sendkey(tmp_path, source: str, keys: list[str]) -> bytes:
    """The guest under qemu-system-i386, the keys pressed through its human monitor's sendkey
    once the guest has printed its `R` line; what COM1 printed."""
    path = tmp_path / "guest.s"
    path.write_text(source)
    wrapped = tmp_path / "guest.mb.elf"
    wrapped.write_bytes(bs.multiboot_wrapped_image(path))
    monitor = tmp_path / "monitor.sock"
    proc = subprocess.Popen(bs.qemu_command(str(wrapped)) + QEMU_PLATFORM
                            + ["-monitor", f"unix:{monitor},server=on,wait=off"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        output = b""
        while b"R\n" not in output:
            chunk = os.read(proc.stdout.fileno(), 4096)
            assert chunk, output
            output += chunk
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(monitor))
            for key in keys:
                sock.sendall(f"sendkey {key}\n".encode())
                time.sleep(0.25)          # each key pressed for sendkey's 100 ms, then the next
            rest, _err = proc.communicate(timeout=30)
        return output + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@needs_qemu
@pytest.mark.parametrize("translated", [True, False], ids=["set1-translated", "set2"])
def test_keyboard_guest_under_qemu(tmp_path, translated):
    assert qemu_sendkey(tmp_path, keyboard_guest(translated), SENDKEYS) == EXPECTED[translated]


@pytest.mark.parametrize("mode", MODES)
def test_a_key_typed_while_the_guest_spins_wakes_it_without_polling(tmp_path, mode):
    """Through `vmm run --keyboard-input -`: Enter is typed once the guest has printed `R` and
    spins in a compute loop; the console's reader thread ends the engine run (vmm/input_wake.py)
    and IRQ 1 is taken at once; the run has no exits for polling (one EVENT per million guest
    cycles, as COM1's input test allows: the firmware's PIT, masked, bounds runs)."""
    guest = tmp_path / "spin.s"
    guest.write_text(keyboard_guest(spin=True))
    report = tmp_path / "run.json"
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "run", str(guest), "--mode", mode, "--timeout", "60",
                             "--keyboard-input", "-", "--report", str(report)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), cwd=REPO_ROOT)
    output, latency, typed = b"", None, None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and selector.select(deadline - time.monotonic()):
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            output += chunk
            if typed is None and output == b"R\n":
                typed = time.monotonic()
                proc.stdin.write(b"\r")
                proc.stdin.flush()
            elif latency is None and output.endswith(b"9c \n"):
                latency = time.monotonic() - typed
    rest, err = proc.communicate(timeout=60)
    assert (output + rest, proc.returncode) == (b"R\n1c 9c \n", 0), err.decode()
    assert latency is not None and latency < 2.0
    counters = json.loads(report.read_text())["counters"]
    assert counters["external_interrupts"] == {"0x09": 2}
    assert counters["exits"].get("event", 0) <= counters["clock"]["cycles"] // 1_000_000 + 5, counters["exits"]


def test_keyboard_input_options_fail_in_one_line(tmp_path):
    guest = tmp_path / "guest.s"
    guest.write_text(keyboard_guest())
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    missing = subprocess.run([sys.executable, "-m", "vmm", "run", str(guest), "--keyboard-input", str(tmp_path / "no")],
                             capture_output=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert missing.returncode == 2 and missing.stderr.count(b"\n") == 1 and b"No such file" in missing.stderr
    keys = tmp_path / "keys"
    keys.write_bytes(TYPED)
    typed = subprocess.run([sys.executable, "-m", "vmm", "run", str(guest), "--keyboard-input", str(keys)],
                           capture_output=True, env=env, cwd=REPO_ROOT, timeout=60)
    assert (typed.stdout, typed.returncode) == (EXPECTED[True], 0), typed.stderr


# -- xv6 at its keyboard ----------------------------------------------------------------------------
XV6_LINES = ["echo Hello, World! | wc", "wc README", "echo ~/$HOME: {a_b} \"q\" ?+=*^%#@"]


@pytest.fixture(scope="module")
def xv6_under_qemu():
    from tests.xv6 import qemu_command, session, xv6_missing
    if xv6_missing() is not None or shutil.which(bs.QEMU) is None:
        pytest.skip(xv6_missing() or f"{bs.QEMU} is not installed")
    return session(qemu_command("kernelmemfs"), XV6_LINES, timeout=60)


@pytest.mark.parametrize("mode", ["bt", "direct"])
def test_xv6_reads_commands_typed_on_its_keyboard(tmp_path, mode, xv6_under_qemu):
    """An unmodified xv6 (kernelmemfs) takes its console input from COM1 and from the keyboard
    (kbd.c: IRQ 1, set 1 through the controller's translation, shift and its own Ctrl map).
    The lines go to the keyboard here (--keyboard-input -), typed after each prompt; what the
    shell prints on COM1 must be what it printed under QEMU for the same lines typed on its
    serial line (xv6 echoes both the same way), and the screen (the report's, at Ctrl-C) shows
    the commands and their output as the console wrote them there."""
    from tests.xv6 import PROMPT, Console, vmm_command
    report = tmp_path / "run.json"
    console = Console(vmm_command("kernelmemfs", "--mode", mode, "--keyboard-input", "-", "--report", str(report)),
                      timeout=120)
    try:
        at = console.expect(PROMPT, 0)
        transcript = [console.output[:at]]
        for line in XV6_LINES:
            console.type(line)
            echoed = console.expect(line.encode() + b"\n", at)
            at = console.expect(PROMPT, echoed)
            transcript.append(console.output[echoed:at - len(PROMPT)])
        time.sleep(0.5)            # the prompt's space on COM1 first, then on the screen: let it land
        console.process.send_signal(signal.SIGINT)
        assert console.process.wait(timeout=30) == 130
    finally:
        console.close()
    for line, ours, qemus in zip(["(boot)"] + XV6_LINES, transcript, xv6_under_qemu):
        assert ours == qemus, f"{line!r}: {ours!r} where QEMU prints {qemus!r}"
    screen = json.loads(report.read_text())["screen"]
    rows = screen["rows"]
    start = rows.index("$ " + XV6_LINES[0])
    assert rows[start:start + 6] == ["$ " + XV6_LINES[0], "1 2 14", "$ wc README", "49 313 2191 README",
                                     "$ " + XV6_LINES[2], XV6_LINES[2][5:]], rows
    assert rows[start + 6] == "$" and screen["cursor"] == [start + 6, 2]
