"""Drive an unmodified xv6 (../shared/guests/xv6) at its serial console as a user would: wait for
the shell's prompt, type a command, collect what it prints; under `vmm run` or qemu-system-i386."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from typing import Optional

from tests.cli import sigint_as_a_terminal_gives_it
from tests.samples import REPO_ROOT

XV6 = REPO_ROOT.parent / "shared" / "guests" / "xv6"
PROMPT = b"$ "
QEMU = "qemu-system-i386"


def xv6_missing() -> Optional[str]:
    """Why the xv6 tests cannot run here, or None."""
    if not (XV6 / "kernelmemfs").exists():
        return f"xv6 is not in {XV6} (see ../shared/guests/README.md)"
    return None


def vmm_command(image: str, *options: str) -> list[str]:
    return [sys.executable, "-m", "vmm", "run", str(XV6 / image), "--mem", "256", *options]


def qemu_command(image: str, *options: str) -> list[str]:
    """As ../shared/guests/xv6/README.md runs it, with the serial line alone on stdio."""
    return [QEMU, "-serial", "stdio", "-display", "none", "-no-reboot", "-m", "256",
            "-kernel", str(XV6 / image), *options]


class Console:
    """A running guest's serial console: `expect` reads until a marker, `type` writes a line."""

    def __init__(self, command: list[str], timeout: float) -> None:
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, cwd=REPO_ROOT,
                                        preexec_fn=sigint_as_a_terminal_gives_it)   # tests send it Ctrl-C
        self.deadline = time.monotonic() + timeout
        self.output = b""
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.process.stdout, selectors.EVENT_READ)

    def expect(self, marker: bytes, start: int) -> int:
        """Read until `marker` appears at or after `start`; returns where it ends."""
        while True:
            found = self.output.find(marker, start)
            if found >= 0:
                return found + len(marker)
            left = self.deadline - time.monotonic()
            if left <= 0 or not self._selector.select(left):
                raise TimeoutError(f"no {marker!r} after {self.output[start:][-300:]!r}")
            chunk = os.read(self.process.stdout.fileno(), 65536)
            if not chunk:
                raise EOFError(f"the guest's console closed before {marker!r}: {self.output[-300:]!r}; "
                               f"stderr {self.process.stderr.read()[-300:]!r}")
            self.output += chunk

    def type(self, line: str) -> None:
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()

    def close(self) -> tuple[bytes, bytes]:
        """End the run (xv6 never powers off): stdin closed, then the process stopped."""
        self.process.stdin.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        err = self.process.stderr.read()
        self._selector.close()
        self.process.stdout.close()
        self.process.stderr.close()
        return self.output, err


def session(command: list[str], lines: list[str], timeout: float = 120) -> list[bytes]:
    """Boot to the prompt, type each line after the next prompt; returns what each line printed
    (from after the typed line's echo to the next prompt), the boot text first."""
    console = Console(command, timeout)
    try:
        at = console.expect(PROMPT, 0)
        transcript = [console.output[:at]]
        for line in lines:
            console.type(line)
            echoed = console.expect(line.encode() + b"\n", at)
            at = console.expect(PROMPT, echoed)
            transcript.append(console.output[echoed:at - len(PROMPT)])
        return transcript
    finally:
        console.close()
