"""Shared fixtures: most end-to-end tests run under every execution mode (differential)."""

import subprocess

import pytest

# Some tests start `vmm run` subprocesses from several threads at once (test_isolation,
# test_audit). CPython spawns with vfork() on Linux, where the child runs in the parent's memory
# until it execs while the parent's other threads go on: one such spawn failed with EFAULT
# ("Bad address" on the interpreter's path) in a full-suite run. fork() copies the address space
# and has no such window; the suite spawns a few hundred processes, so its cost does not matter.
if hasattr(subprocess, "_USE_VFORK"):
    subprocess._USE_VFORK = False

EXECUTION_MODES = ["direct", "bt"]


@pytest.fixture(params=EXECUTION_MODES)
def mode(request):
    return request.param
