"""Host side of the guest console: where serial output goes and where serial input comes from."""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Callable, Optional


class Console:
    """The serial back end interface: `write` takes guest output, `read_byte` returns one pending
    input byte or None. Subclasses decide where the bytes go."""

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read_byte(self) -> Optional[int]:
        return None

    def input_may_arrive(self) -> bool:
        """Whether input is waiting or may still come (False once the input side is at its end):
        an idle guest waiting for typed input waits only while this holds."""
        return False

    def wait_input(self, timeout: float) -> None:
        """Block until input may have arrived, at most `timeout` seconds."""
        time.sleep(timeout)

    def on_input(self, callback: Callable[[], None]) -> None:
        """Call `callback` whenever input arrives later, from the thread that received it (a
        console whose input is all there from the start never calls it)."""

    def close(self) -> None:
        pass


class NullConsole(Console):
    """A serial line with nothing attached (QEMU's -serial null): output dropped, no input."""

    def write(self, data: bytes) -> None:
        pass


class BufferConsole(Console):
    """In-memory console for tests and embedding: output collected, input given up front."""

    def __init__(self, input_bytes: bytes = b"") -> None:
        self.output = bytearray()
        self._input = collections.deque(input_bytes)

    def write(self, data: bytes) -> None:
        self.output += data

    def read_byte(self) -> Optional[int]:
        return self._input.popleft() if self._input else None

    def input_may_arrive(self) -> bool:
        return bool(self._input)


class StdioConsole(Console):
    """stdout byte for byte with no buffering; stdin read by a background thread started on the
    guest's first look at the receive side, so a run that never reads leaves stdin alone.
    `in_fd` None: no input (stdin typed on the keyboard instead: --keyboard-input -)."""

    def __init__(self, out_fd: int = 1, in_fd: Optional[int] = 0) -> None:
        self._out_fd, self._in_fd = out_fd, in_fd
        self._input: collections.deque = collections.deque()
        self._reader: Optional[threading.Thread] = None
        self._saved_tty = None
        self._arrived = threading.Event()      # set by the reader thread on input and at EOF
        self._at_end = False
        self._listeners: list[Callable[[], None]] = []

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._out_fd, view):]
        except BrokenPipeError:
            pass   # nobody reads the console any more; the guest runs on regardless

    def read_byte(self) -> Optional[int]:
        if self._reader is None and self._in_fd is not None:
            self._start_reader()
        return self._input.popleft() if self._input else None

    def input_may_arrive(self) -> bool:
        if self._in_fd is None:
            return False
        if self._reader is None:
            self._start_reader()
        return bool(self._input) or not self._at_end

    def wait_input(self, timeout: float) -> None:
        if self._input or self._at_end:
            return
        self._arrived.wait(timeout)
        self._arrived.clear()

    def on_input(self, callback: Callable[[], None]) -> None:
        self._listeners.append(callback)

    def _start_reader(self) -> None:
        if os.isatty(self._in_fd):
            self._enter_character_mode()
        self._reader = threading.Thread(target=self._read_loop, name="console-input", daemon=True)
        self._reader.start()

    def _read_loop(self) -> None:
        while True:
            try:
                chunk = os.read(self._in_fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                self._at_end = True
                self._arrived.set()
                return
            chunk = self._received(chunk)
            if not chunk:
                continue
            self._input.extend(chunk)
            self._arrived.set()
            for listener in self._listeners:      # (a running guest is woken: vmm/input_wake.py)
                listener()

    def _received(self, chunk: bytes) -> bytes:
        """What of a chunk read is input (a subclass may take some bytes for itself)."""
        return chunk

    def _enter_character_mode(self) -> None:
        import termios
        self._saved_tty = termios.tcgetattr(self._in_fd)
        mode = termios.tcgetattr(self._in_fd)
        mode[3] &= ~(termios.ICANON | termios.ECHO)   # keystrokes go to the guest as typed
        termios.tcsetattr(self._in_fd, termios.TCSANOW, mode)

    def close(self) -> None:
        if self._saved_tty is not None:
            import termios
            termios.tcsetattr(self._in_fd, termios.TCSANOW, self._saved_tty)
            self._saved_tty = None
