"""Run the real `vmm` command line in a subprocess, as a user would."""

from __future__ import annotations

import signal
import subprocess
import sys

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
