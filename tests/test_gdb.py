"""The GDB stub: the real gdb attaches and drives the guest under both modes; protocol details
and Ctrl-C through a raw client."""

import shutil
import socket
import struct
import subprocess
import sys
import time

import pytest

from tests.samples import REPO_ROOT

GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb is not installed (Debian package gdb)")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_waiting(*args):
    """Start `vmm run ... --gdb PORT --gdb-wait` and return once the stub listens."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "vmm", "run", *map(str, args), "--gdb", str(port), "--gdb-wait"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stderr.readline().decode()
    assert line == f"vmm: waiting for gdb on localhost:{port}\n", line
    return proc, port


def run_gdb(port, *commands):
    args = [GDB, "-batch", "-nx", "-ex", "set architecture i386", "-ex", f"target remote :{port}"]
    for command in commands:
        args += ["-ex", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=60).stdout


@needs_gdb
@pytest.mark.parametrize("mode", ["bt", "direct"])
def test_gdb_breakpoints_steps_registers_memory(mode):
    # `--gdb-wait`: stopped before the first instruction; a probe connection first would be the
    # one served, so wait for the port with gdb itself.
    vmm, port = start_waiting("sample_binaries/hello.elf", "--mode", mode)
    out = run_gdb(port, "p/x $eip", "p/x $eax", "x/4xb 0x100000",
                  "break *0x100020", "continue", "p/x $eip", "stepi", "p/x $eip", "p/x $eax",
                  "hbreak *0x10003b", "continue", "p/x $eip", "set $ebx = 0x1234", "p/x $ebx",
                  "set {int}0x200000 = 0x55aa", "x/1xw 0x200000", "delete", "continue")
    stdout, _stderr = vmm.communicate(timeout=30)
    values = [line.split("=")[1].strip() for line in out.splitlines() if line.startswith("$")]
    assert values == ["0x10000c", "0x2badb002", "0x100020", "0x100024", "0x2bad0010", "0x10003b", "0x1234"]
    assert "0x100000:\t0x02\t0xb0\t0xad\t0x1b" in out and "0x200000:\t0x000055aa" in out
    assert "exited normally" in out
    assert stdout == (REPO_ROOT / "sample_binaries/expected/hello.out").read_bytes() and vmm.returncode == 0


@needs_gdb
def test_breakpoints_in_a_hot_loop_do_not_corrupt_the_cache():
    # calls.elf's tail-call loop at its first instruction is hit many times, then removed
    vmm, port = start_waiting("sample_binaries/calls.elf")
    target = _hot_address()
    out = run_gdb(port, f"break *{target:#x}", *["continue"] * 5, "p/x $eip", "delete", "continue")
    stdout, _stderr = vmm.communicate(timeout=60)
    assert out.count("Breakpoint 1,") == 5
    assert stdout == (REPO_ROOT / "sample_binaries/expected/calls.out").read_bytes() and vmm.returncode == 0


def _hot_address() -> int:
    """The entry of calls.elf's `fib` (recursive: hit over and over)."""
    symbols = subprocess.run(["nm", str(REPO_ROOT / "sample_binaries/calls.elf")], capture_output=True, text=True)
    for line in symbols.stdout.splitlines():
        address, _kind, name = line.split()
        if name == "fib":
            return int(address, 16)
    pytest.skip("calls.elf has no fib symbol")


class Client:
    """A minimal remote-protocol client."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buffer = b""

    def send(self, text):
        body = text.encode()
        self.sock.sendall(b"$" + body + b"#" + f"{sum(body) & 0xFF:02x}".encode())
        return self.receive()

    def receive(self):
        while True:
            while b"#" not in self.buffer or len(self.buffer) < self.buffer.index(b"#") + 3:
                self.buffer += self.sock.recv(4096)
            self.buffer = self.buffer.lstrip(b"+")
            start, end = self.buffer.index(b"$"), self.buffer.index(b"#")
            body, self.buffer = self.buffer[start + 1:end].decode(), self.buffer[end + 3:]
            self.sock.sendall(b"+")
            return body


@pytest.mark.parametrize("mode", ["bt", "direct"])
def test_ctrl_c_interrupts_a_spinning_guest(tmp_path, mode):
    image = tmp_path / "spin.s"
    image.write_text("mov eax, 0x1234\nspin:\n    inc ecx\n    jmp spin\n")
    vmm, port = start_waiting(image, "--mode", mode)
    client = Client(port)
    assert client.receive() == "S05"                       # stopped at the first instruction
    registers = client.send("g")
    assert len(registers) == 16 * 8 and registers[64:72] == "00001000"     # eip 0x100000
    client.sock.sendall(b"$c#63")
    time.sleep(0.5)
    client.sock.sendall(b"\x03")                          # gdb's Ctrl-C
    assert client.receive() == "S02"
    eax = client.send("p0")
    assert eax == "34120000"
    ecx = int.from_bytes(bytes.fromhex(client.send("p1")), "little")
    assert ecx > 1000                                     # it really ran
    assert client.send("m100000,1") == "b8"               # mov eax, imm32
    client.sock.sendall(b"$k#6b")
    vmm.communicate(timeout=20)
    assert vmm.returncode == 130


@needs_gdb
@pytest.mark.parametrize("entry", [e for e in __import__("tests.samples", fromlist=["MANIFEST"]).MANIFEST
                                   if e["stdin"] is None], ids=lambda e: e["name"])
def test_gdb_attaches_steps_and_continues_every_sample(entry):
    from tests.cli import sample_arguments
    if "bt" not in entry["modes"]:      # the default mode
        pytest.skip(f"{entry['name']} under bt: {entry['missing']['bt']}")
    vmm, port = start_waiting(*sample_arguments(entry)[1:])
    out = run_gdb(port, "stepi", "stepi", "stepi", "p/x $eip", "continue")
    stdout, _stderr = vmm.communicate(timeout=60)
    assert stdout == (REPO_ROOT / entry["expected"]).read_bytes()
    assert f"$1 = {_after_three_instructions(entry):#x}" in out.splitlines()
    assert "exited" in out or entry["exit"] is None


def _after_three_instructions(entry) -> int:
    """Where three steps from the entry point end, from the loaded image decoded by Capstone
    (every sample starts with straight-line code): not from the stub under test."""
    from capstone import CS_ARCH_X86, CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_RET, CS_GRP_INT, CS_MODE_32, Cs
    from vmm.builder import MachineConfig, build_machine
    from vmm.console import BufferConsole
    vm, image = build_machine(MachineConfig(image=str(REPO_ROOT / entry["image"]), append=entry["append"] or "",
                                            initrd=[str(REPO_ROOT / path) for path in entry["initrd"] or ()]),
                              BufferConsole(b""))
    decoder = Cs(CS_ARCH_X86, CS_MODE_32)
    decoder.detail = True
    steps = list(decoder.disasm(vm.memory.read(image.entry, 45), image.entry))[:3]
    assert not any(step.group(group) for step in steps for group in (CS_GRP_JUMP, CS_GRP_CALL, CS_GRP_RET, CS_GRP_INT))
    return steps[-1].address + steps[-1].size


def test_gdb_memory_reads_leave_the_guest_as_it_was(tmp_path):
    # With the guest's paging on, gdb reading a page the guest has not touched sets no accessed
    # bit, and reading an unmapped address sets no CR2: the stub looks without the CPU's marks.
    import struct
    from tests.guests import EXIT, run_source
    from tests.test_shadow_paging import PAGING_ON
    from vmm.gdbstub import GdbStub
    source = PAGING_ON + "    mov dword ptr [0x11000], 0x203003\n    mov eax, 0\n" + EXIT
    _result, _out, vm = run_source(tmp_path, source, mode="bt")
    stub = GdbStub(free_port(), wait=False)
    try:
        stub.attach(vm)                      # what a run with --gdb does before the guest starts
        cr2 = vm.cpu.reg("cr2")
        assert stub._command("m400000,4") == "00000000"
        assert stub._command("m800000,4") == "E14"
        (pte,) = struct.unpack("<I", vm.memory.read(0x11000, 4))
        assert pte & 0x20 == 0 and vm.cpu.reg("cr2") == cr2
    finally:
        stub.close()


def _allowed_rep_outsb(image: str) -> int:
    """The address of the string_io sample's second `rep outsb` (f3 6e): ring 3, IOPL 0, to the
    port the bitmap opens, ECX = 2."""
    data = (REPO_ROOT / image).read_bytes()
    phoff, = struct.unpack_from("<I", data, 0x1C)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x2A)
    for index in range(phnum):
        kind, offset, vaddr, _paddr, filesz, _memsz, flags, _align = struct.unpack_from(
            "<8I", data, phoff + index * phentsize)
        if kind == 1 and flags & 1:                          # PT_LOAD, executable
            code = data[offset:offset + filesz]
            found = [at for at in range(len(code) - 1) if code[at:at + 2] == b"\xf3\x6e"]
            return vaddr + found[1]
    raise AssertionError("no executable segment")


@needs_gdb
def test_stepi_over_checked_string_io_completes_it():
    # At CPL > IOPL bt checks the I/O bitmap at an exit inside the instruction's translation;
    # a single step must go on through it and stop after the instruction, not before it.
    address = _allowed_rep_outsb("sample_binaries/string_io.elf")
    vmm, port = start_waiting("sample_binaries/string_io.elf", "--mode", "bt")
    out = run_gdb(port, f"break *{address:#x}", "continue", "p/x $ecx", "stepi", "p/x $eip", "p/x $ecx",
                  "delete", "continue")
    stdout, _stderr = vmm.communicate(timeout=30)
    values = [line.split("=")[1].strip() for line in out.splitlines() if line.startswith("$")]
    assert values == ["0x2", f"{address + 2:#x}", "0x0"]
    assert stdout == (REPO_ROOT / "sample_binaries/expected/string_io.out").read_bytes()
