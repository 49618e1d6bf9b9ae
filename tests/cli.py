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
