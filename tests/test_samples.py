"""Every sample guest under the monitor: console output byte for byte and the exit status, as
recorded from QEMU (tests/test_qemu_reference.py checks the recordings against QEMU itself)."""

import json
import subprocess
import sys

import pytest

from tests.cli import run_vmm, sample_arguments
from tests.samples import MANIFEST, REPO_ROOT, ids

TRIPLE_FAULT_STATUS = 120


@pytest.mark.parametrize("entry", MANIFEST, ids=ids(MANIFEST))
def test_sample(entry, mode, tmp_path):
    report = tmp_path / "report.json"
    proc = run_vmm(*sample_arguments(entry), "--mode", mode, "--report", report,
                   stdin=(entry["stdin"] or "").encode())
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes(), proc.stderr.decode()
    summary = json.loads(report.read_text())
    if entry["exit"] is None:                        # the triple-fault sample
        assert proc.returncode == TRIPLE_FAULT_STATUS
        assert summary["exit"]["reason"] == "triple_fault"
        assert proc.stderr.decode().startswith("vmm: triple fault:") and proc.stderr.count(b"\n") == 1
    else:
        assert proc.returncode == entry["exit"] & 0xFF and proc.stderr == b""
        assert summary["exit"] == {"reason": "debug_exit", "status": entry["exit"] & 0xFF,
                                   "guest_value": entry["exit"], "message": summary["exit"]["message"]}
    assert summary["mode"] == mode and summary["image"] == entry["image"]
    assert summary["counters"]["port_io"]["com1"]["writes"] >= len(proc.stdout)


def test_exception_sample_report_counts_each_vector(tmp_path, mode):
    entry = next(e for e in MANIFEST if e["name"] == "exceptions")
    run_vmm(*sample_arguments(entry), "--mode", mode, "--report", tmp_path / "report.json")
    report = json.loads((tmp_path / "report.json").read_text())
    exceptions = report["counters"]["exceptions"]
    assert exceptions["0 #DE"] == 2 and exceptions["13 #GP"] == 1 and exceptions["6 #UD"] == 2
    exits = report["counters"]["exits"]
    if mode == "direct":      # every exception and int n reaches the monitor as an exception exit
        assert exits["exception"] == sum(exceptions.values())
    else:                     # int n, int3, into are callouts; faults and #DB single steps are exits
        assert exits["exception"] + exits["callout"] >= sum(exceptions.values())


@pytest.mark.parametrize("entry", MANIFEST, ids=ids(MANIFEST))
def test_inspection_and_tracing_work_on_every_sample(entry, tmp_path):
    """vmm-tcache reads every sample's cache dump, and the trace flags (all but exec, which
    tests/test_trace.py covers) log every sample's run."""
    dump, log = tmp_path / "cache.json", tmp_path / "trace.log"
    proc = run_vmm(*sample_arguments(entry), "--dump-cache", dump, "-d", "in_asm,out_asm,int,exits,io", "-D", log,
                   stdin=(entry["stdin"] or "").encode())
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes()
    blocks = json.loads(dump.read_text())["blocks"]
    assert log.read_text().count("OUT: [size=") >= len(blocks) > 0
    table = subprocess.run([sys.executable, "tools/vmm_tcache.py", str(dump), "--summary", "--json"],
                           capture_output=True, text=True, cwd=REPO_ROOT)
    assert table.returncode == 0, table.stderr
    assert json.loads(table.stdout)["blocks"] == len(blocks)
