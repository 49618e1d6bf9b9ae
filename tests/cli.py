"""Run the real `vmm` command line in a subprocess, as a user would."""

from __future__ import annotations

import subprocess
import sys

from tests.samples import REPO_ROOT


def run_vmm(*args, stdin: bytes = b"", timeout: float = 60, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vmm", *map(str, args)], input=stdin, capture_output=True,
                          timeout=timeout, cwd=cwd)


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
