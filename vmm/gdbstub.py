"""A GDB remote-serial-protocol stub: stock gdb attaches over TCP on localhost (`target remote
:PORT`) and reads/writes registers and memory, sets breakpoints, steps and continues, under
every execution mode. The protocol is here; stopping the guest is the run loop's and the
mode's business (the Debugger, which the modes get through their RunContext)."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Optional

from vmm.errors import ConfigError
from vmm.guest_view import GuestFault, GuestView
from vmm.memory import UnbackedAccess

# gdb's i386 register file order ("g" packet): 16 32-bit registers
GDB_REGISTERS = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
                 "cs", "ss", "ds", "es", "fs", "gs")
SIGTRAP, SIGINT = 5, 2


class Debugger:
    """What the run loop and the modes consult: breakpoints, a pending single step, and whether
    gdb interrupted the guest (Ctrl-C)."""

    def __init__(self) -> None:
        self.breakpoints: set[int] = set()
        self.stepping = False
        self.interrupted = False
        self.resume_over: Optional[int] = None     # a breakpoint to execute once when resuming
        self.on_breakpoints_changed = lambda address: None


class GdbStub:
    def __init__(self, port: int, wait: bool) -> None:
        self.port, self.wait = port, wait
        self.debugger = Debugger()
        self._server: Optional[socket.socket] = None
        self._connection: Optional[socket.socket] = None
        self._buffer = b""
        self._running = False
        self._watcher: Optional[threading.Thread] = None
        self.vm = None
        try:
            self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._server.bind(("127.0.0.1", port))
            self._server.listen(1)
        except OSError as error:
            raise ConfigError(f"--gdb {port}: {error.strerror}") from None

    # -- connection ----------------------------------------------------------------------------
    def attach(self, vm) -> None:
        """Called before the guest runs: wait for gdb (--gdb-wait) or accept it later."""
        self.vm = vm
        self.view = GuestView(vm.cpu, vm.memory, cpu_access=False)     # gdb's looks leave no trace
        import sys
        print(f"vmm: {'waiting for gdb' if self.wait else 'gdb stub'} on localhost:{self.port}",
              file=sys.stderr, flush=True)
        if self.wait:
            self._accept()
            self.debugger.stepping = False
            self.stopped(SIGTRAP)
        else:
            threading.Thread(target=self._accept_later, name="gdb-accept", daemon=True).start()

    def _accept(self) -> None:
        self._connection, _address = self._server.accept()
        self._connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _accept_later(self) -> None:
        try:
            self._accept()
        except OSError:
            return
        self._interrupt()             # gdb expects the target stopped right after it attaches

    def _watch_for_interrupt(self) -> None:
        """While the guest runs, a Ctrl-C from gdb arrives as a single 0x03 byte."""
        connection = self._connection
        try:
            connection.settimeout(0.1)
        except OSError:
            return
        while self._running:
            try:
                data = connection.recv(1)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                self._interrupt()     # gdb went away: stop so the loop can end the run
                return
            if data == b"\x03":
                self._interrupt()
                return
            self._buffer += data

    def _interrupt(self) -> None:
        self.debugger.interrupted = True
        if self.vm is not None:
            self.vm.engine.stop()

    def finished(self, status: int) -> None:
        """The run ended: tell a connected gdb the process exited."""
        self._running = False
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        if self._connection is not None:
            try:
                self._connection.settimeout(2)
                self._send(f"W{status & 0xFF:02x}")
            except OSError:
                pass

    def close(self) -> None:
        for sock in (self._connection, self._server):
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass
        self._connection = self._server = None

    # -- packets -------------------------------------------------------------------------------
    def _read_packet(self) -> Optional[str]:
        while True:
            while b"$" not in self._buffer:
                if b"\x03" in self._buffer:
                    self._buffer = self._buffer.replace(b"\x03", b"")
                chunk = self._connection.recv(4096)
                if not chunk:
                    return None
                self._buffer += chunk
            start = self._buffer.index(b"$")
            end = self._buffer.find(b"#", start)
            if end < 0 or len(self._buffer) < end + 3:
                chunk = self._connection.recv(4096)
                if not chunk:
                    return None
                self._buffer += chunk
                continue
            body = self._buffer[start + 1:end]
            checksum = self._buffer[end + 1:end + 3]
            self._buffer = self._buffer[end + 3:]
            if int(checksum, 16) != sum(body) & 0xFF:
                self._connection.sendall(b"-")
                continue
            self._connection.sendall(b"+")
            return body.decode("latin-1")

    def _send(self, text: str) -> None:
        body = text.encode("latin-1")
        self._connection.sendall(b"$" + body + b"#" + f"{sum(body) & 0xFF:02x}".encode())
        while True:                   # wait for the acknowledgement
            ack = self._connection.recv(1)
            if ack in (b"+", b""):
                return
            if ack == b"-":
                self._connection.sendall(b"$" + body + b"#" + f"{sum(body) & 0xFF:02x}".encode())

    # -- the stopped state ---------------------------------------------------------------------
    def stopped(self, signal: int = SIGTRAP) -> None:
        """The guest is stopped: serve gdb until it continues, steps, detaches or kills."""
        if self._connection is None:
            return
        self._running = False                 # the watcher owns the socket while the guest runs
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None
        self._connection.settimeout(None)
        self.debugger.interrupted = False
        self.debugger.stepping = False
        self._send(f"S{signal:02x}")
        while True:
            packet = self._read_packet()
            if packet is None:
                self._end("gdb disconnected")
                return
            reply = self._command(packet)
            if reply is _RESUME:
                if self._connection is not None:
                    self._running = True
                    self._watcher = threading.Thread(target=self._watch_for_interrupt, name="gdb-interrupt",
                                                     daemon=True)
                    self._watcher.start()
                return
            if reply is _END:
                return
            self._send(reply)

    def _end(self, why: str) -> None:
        from vmm.exits import StopReason
        self.vm.request_stop(StopReason.INTERRUPTED, why)
        self.close()

    def _command(self, packet: str):
        kind, rest = packet[:1], packet[1:]
        cpu = self.vm.cpu
        if kind == "?":
            return "S05"
        if kind == "g":
            return "".join(struct.pack("<I", cpu.reg(name) & 0xFFFFFFFF).hex() for name in GDB_REGISTERS)
        if kind == "G":
            values = bytes.fromhex(rest)
            for index, name in enumerate(GDB_REGISTERS[:10]):
                cpu.set_reg(name, struct.unpack_from("<I", values, index * 4)[0])
            return "OK"
        if kind == "p":
            index = int(rest, 16)
            if index >= len(GDB_REGISTERS):
                return "E01"
            return struct.pack("<I", cpu.reg(GDB_REGISTERS[index]) & 0xFFFFFFFF).hex()
        if kind == "P":
            number, value = rest.split("=")
            index = int(number, 16)
            if index >= 10:
                return "E01"         # segment registers change only through the guest's own loads
            cpu.set_reg(GDB_REGISTERS[index], struct.unpack("<I", bytes.fromhex(value))[0])
            return "OK"
        if kind == "m":
            address, length = (int(part, 16) for part in rest.split(","))
            try:
                return self.view.read(address, length).hex()
            except (GuestFault, UnbackedAccess):
                return "E14"
        if kind == "M":
            where, data = rest.split(":")
            address, length = (int(part, 16) for part in where.split(","))
            try:
                self.view.write(address, bytes.fromhex(data)[:length])
            except (GuestFault, UnbackedAccess):
                return "E14"
            return "OK"
        if kind in "Zz" and rest[:1] in "01":
            address = int(rest.split(",")[1], 16)
            if kind == "Z":
                self.debugger.breakpoints.add(address)
            else:
                self.debugger.breakpoints.discard(address)
            self.debugger.on_breakpoints_changed(address)
            return "OK"
        if kind in "cs":
            if rest:
                cpu.set_reg("eip", int(rest, 16))
            self.debugger.stepping = kind == "s"
            eip = cpu.reg("eip")
            self.debugger.resume_over = eip if eip in self.debugger.breakpoints else None
            return _RESUME
        if kind == "k":
            self._end("killed by gdb")
            return _END
        if kind == "D":
            self._connection.sendall(b"$OK#9a")
            self.debugger.breakpoints.clear()
            self.debugger.on_breakpoints_changed(None)
            self.close()
            return _RESUME
        if packet.startswith("qSupported"):
            return "PacketSize=4000"
        if packet == "qAttached":
            return "1"
        if packet == "qC":
            return "QC1"
        if packet in ("qfThreadInfo",):
            return "m1"
        if packet in ("qsThreadInfo",):
            return "l"
        if packet.startswith("H") or packet == "vMustReplyEmpty":
            return "OK" if packet.startswith("H") else ""
        return ""                     # unsupported: the empty reply


_RESUME = object()
_END = object()
