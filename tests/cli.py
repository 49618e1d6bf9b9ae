"""Run the real `vmm` command line in a subprocess, as a user would."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from typing import Optional

from tests.samples import REPO_ROOT


def run_vmm(*args, stdin: bytes = b"", timeout: float = 60, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmm", *map(str, args)], input=stdin, capture_output=True,
                          timeout=timeout, cwd=cwd)


def sigint_as_a_terminal_gives_it() -> None:
    """A subprocess's preexec_fn for tests that send it Ctrl-C: SIGINT back to its default. A
    shell without job control starts background commands with SIGINT ignored, and children
    inherit that; the monitor rightly honours an ignored SIGINT (as nohup'd programs do), so a
    suite started with `&` from a script saw every Ctrl-C test hang."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def type_when_ready(proc: subprocess.Popen, typed: bytes, timeout: float,
                    settle: float = 0.0) -> tuple[bytes, Optional[float]]:
    """Read what `proc` prints, up to its first newline; once it has printed exactly `R` (the
    guest is in its loop), wait `settle` seconds and write `typed` to its stdin. Returns what
    was read and the seconds from that write until `typed`'s first byte was printed back (None:
    never)."""
    output, typed_at, latency = b"", None, None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while b"\n" not in output and time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            output += chunk
            if output == b"R":
                time.sleep(settle)
                typed_at = time.monotonic()
                proc.stdin.write(typed)
                proc.stdin.flush()
            elif latency is None and typed_at is not None and typed[:1] in output[1:]:
                latency = time.monotonic() - typed_at
    return output, latency


def sample_arguments(entry: dict) -> list[str]:
    args = ["run", entry["image"]]
    if entry["append"] is not None:
        args += ["--append", entry["append"]]
    if entry["initrd"]:
        args += ["--initrd", ",".join(entry["initrd"])]
    return args


def sample_report(tmp_path, name: str, *options) -> dict:
    """Run the manifest's sample `name` with `options`, check it ends with its exit value, and
    return the JSON report."""
    import json
    from tests.samples import MANIFEST
    entry = next(e for e in MANIFEST if e["name"] == name)
    report = tmp_path / "report.json"
    proc = run_vmm(*sample_arguments(entry), *options, "--report", report)
    assert proc.returncode == entry["exit"] & 0xFF, proc.stderr.decode()
    return json.loads(report.read_text())
