"""`vmm audit`: the sensitive instructions a guest executes (or can reach, --static) and the
trap-and-emulate verdict, driven through the real command line on the sample guests."""

from __future__ import annotations

import concurrent.futures
import json
import os
import textwrap

import pytest

from tests.cli import run_vmm, sample_arguments
from tests.samples import MANIFEST, REPO_ROOT, ids

VERDICT = "virtualizable by pure trap-and-emulate: "
HELLO_TEXT = b"Hello from the guest kernel!\n"


def audit_json(*args, stdin: bytes = b"") -> dict:
    proc = run_vmm("audit", *args, "--json", stdin=stdin)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


def rows(report: dict, text: str = None, startswith: str = None) -> list[dict]:
    return [i for i in report["instructions"]
            if (text is None or i["instruction"] == text)
            and (startswith is None or i["instruction"].startswith(startswith))]


def counts(report: dict, text: str) -> list[int]:
    return [i["count"] for i in rows(report, text)]


def by_key(report: dict) -> dict:
    return {(i["address"], i["bytes"]): i["count"] for i in report["instructions"]}


# -- every sample in the manifest (run in parallel: the module's other tests reuse the results) ------

def _audit_sample(entry: dict):
    args = ["audit", *sample_arguments(entry)[1:], "--json"]
    stdin = entry["stdin"].encode() if entry["stdin"] else b""
    return run_vmm(*args, stdin=stdin)


@pytest.fixture(scope="module")
def sample_audits() -> dict:
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        procs = pool.map(_audit_sample, MANIFEST)
        return {entry["name"]: proc for entry, proc in zip(MANIFEST, procs)}


@pytest.fixture(scope="module")
def reports(sample_audits) -> dict:
    return {name: json.loads(proc.stdout) for name, proc in sample_audits.items() if proc.returncode == 0}


@pytest.mark.parametrize("entry", MANIFEST, ids=ids(MANIFEST))
def test_every_sample_is_audited(entry, sample_audits):
    if "bt" not in entry["modes"]:      # the audit runs the guest under bt
        pytest.skip(f"{entry['name']} under bt: {entry['missing']['bt']}")
    proc = sample_audits[entry["name"]]
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    assert report["audit"] == "dynamic"
    assert report["summary"]["verdict"].startswith(VERDICT)
    assert report["instructions"], "every sample touches a port at least"
    if entry["exit"] is None:           # the triple-fault sample: the audit still reports
        assert report["run"]["exit"] == "triple_fault"
    else:
        assert (report["run"]["exit"], report["run"]["status"]) == ("debug_exit", entry["exit"])
    expected = (REPO_ROOT / entry["expected"]).read_bytes()
    assert report["run"]["console_bytes"] == len(expected), "the guest's output is captured, not printed"
    assert proc.stderr == b""


# -- sensitive.elf: ring-0 sensitive instructions ---------------------------------------------------

def test_sensitive_holes_and_privileged(reports):
    report = reports["sensitive"]
    summary = report["summary"]
    assert summary["virtualizable"] is False
    for hole in ("pushfd", "popfd", "sgdt", "sidt", "smsw", "str", "sldt", "lar", "lsl", "verr", "verw",
                 "mov r/m,Sreg", "push Sreg", "mov Sreg,r/m", "ljmp", "lcall", "retf"):
        assert hole in summary["hole_forms"], hole
        assert all(not i["traps_when_deprivileged"] for i in report["instructions"] if i["form"] == hole)
    for trapping in ("lgdt", "lidt", "lldt", "ltr", "clts", "lmsw", "wrmsr", "rdmsr", "invlpg", "wbinvd",
                     "in", "out", "cli", "sti", "hlt", "int", "iretd"):
        found = [i for i in report["instructions"] if i["form"] == trapping]
        assert found and all(i["traps_when_deprivileged"] for i in found), trapping
    for form in ("mov cr0, eax", "mov eax, cr0", "mov cr3, eax", "mov eax, cr4"):
        row = rows(report, form)[0]
        assert (row["class"], row["traps_when_deprivileged"]) == ("privileged", True)
    holes = [i for i in report["instructions"] if not i["traps_when_deprivileged"]]
    assert summary["holes"] == len(holes) and summary["sensitive_instructions"] == len(report["instructions"])
    assert summary["verdict"] == f"{VERDICT}no ({len(holes)} holes: {', '.join(summary['hole_forms'])})"
    addresses = [(i["address"], i["bytes"]) for i in report["instructions"]]
    assert addresses == sorted(addresses) and len(set(addresses)) == len(addresses)


def test_sensitive_counts_from_the_source(reports):
    report = reports["sensitive"]
    # test_selector runs once per row of sel_tests (16 rows); lsl sits in two overlapping blocks
    # (after `jmp 2f` and falling through label 2), whose counts add up
    for text in ("lar eax, ebx", "lsl eax, ebx", "verr bx", "verw bx"):
        assert counts(report, text) == [16], text
    assert sorted(counts(report, "iretd")) == [1, 1, 2, 8]      # iret tests, int 0x80 handler, 8 #GP/#NP
    assert counts(report, "int 0x80") == [1, 1]
    assert sorted(counts(report, "retf")) == [1, 2]              # far_func (two far calls), retf as a jump
    assert counts(report, "cpuid") == [1] and counts(report, "rdtsc") == [1, 1]
    assert [i["count"] for i in report["instructions"] if i["form"] == "lgdt"] == [1, 1]
    # putc polls LSR once per byte (the transmitter is always ready), then writes THR
    in_putc = rows(report, "in al, dx")[0]
    assert in_putc["count"] == report["run"]["console_bytes"]
    # crt0's instructions ran before the guest's first rdtsc flushed the cache to start counting
    # time: their blocks were removed, and their counts kept
    assert report["run"]["blocks_removed"] > 0 and report["run"]["executions_of_removed_blocks"] > 0
    assert counts(report, "ljmp 8:0x100020") == [1]


def test_counts_survive_eviction(reports):
    """A cache of 64 blocks evicts all the time: the counts of evicted blocks are kept."""
    small = audit_json("sample_binaries/sensitive.elf", "--tcache-size", "64")
    assert small["run"]["blocks_evicted"] > 5 * 64
    assert by_key(small) == by_key(reports["sensitive"])


def test_sensitive_text_output():
    proc = run_vmm("audit", "sample_binaries/sensitive.elf")
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert lines[0].startswith("audit of sample_binaries/sensitive.elf: run under bt, debug_exit (status 0)")
    header = lines[lines.index("") + 1].split()
    assert header == ["address", "instruction", "class", "handling", "traps", "count"]
    table = lines[lines.index("") + 2:]
    lar = next(line for line in table if "lar eax, ebx" in line).split()
    assert lar[-3:] == ["callout", "no", "16"]
    assert any(line.startswith("count: executions of the translated blocks") and "still counts" in line
               for line in lines)
    assert lines[-1].startswith(VERDICT + "no (") and "pushfd" in lines[-1] and "sgdt" in lines[-1]
    assert "sensitive: ring-0 instructions" not in proc.stdout.decode()     # the guest's own output


# -- hello.elf: what crt0 and the runtime use -------------------------------------------------------

def test_hello(reports):
    report = reports["hello"]
    assert report["summary"]["hole_forms"] == ["ljmp", "mov Sreg,r/m"]
    # crt0: ljmp and mov ds/es/fs/gs; mov ss with the kernel's RPL-0 selector would trap at ring 3
    assert report["summary"]["holes"] == 5
    assert report["summary"]["verdict"] == f"{VERDICT}no (5 holes: ljmp, mov Sreg,r/m)"
    assert rows(report, "mov ss, eax")[0]["traps_when_deprivileged"] is True
    for text in ("cli", "lgdt [0x100198]", "ljmp 8:0x100020", "mov ds, eax", "mov ss, eax", "out dx, eax"):
        assert counts(report, text)[0] == 1, text
    in_putc = rows(report, "in al, dx")
    assert [i["count"] for i in in_putc] == [len(HELLO_TEXT)]
    assert len(HELLO_TEXT) in counts(report, "out dx, al")   # putc's write to THR
    assert report["run"]["console_bytes"] == len(HELLO_TEXT)


def test_guest_output_stays_out_of_the_audit():
    proc = run_vmm("audit", "sample_binaries/hello.elf")
    assert proc.returncode == 0 and proc.stderr == b""
    assert HELLO_TEXT.strip() not in proc.stdout
    assert b"guest console output (COM1): 29 bytes captured, not shown" in proc.stdout


# -- ring 3, segments, exceptions -------------------------------------------------------------------

def test_ring3(reports):
    report = reports["ring3"]
    assert report["summary"]["virtualizable"] is False
    forms = {i["form"]: i for i in report["instructions"]}
    for privileged in ("rdpmc", "wbinvd", "clts", "lmsw", "invlpg", "rdmsr", "hlt"):   # #GP from ring 3
        assert forms[privileged]["traps_when_deprivileged"], privileged
    for hole in ("sgdt", "sidt", "str", "sldt", "smsw", "pushfd", "popfd", "push Sreg", "lar", "lsl", "verr"):
        assert hole in report["summary"]["hole_forms"], hole


def test_segments(reports):
    report = reports["segments"]
    assert report["summary"]["virtualizable"] is False
    for hole in ("ljmp", "lcall", "retf", "lar", "mov Sreg,r/m"):
        assert hole in report["summary"]["hole_forms"], hole
    assert all(i["class"] == "far control flow" for i in report["instructions"] if i["form"] in ("lcall", "retf"))


def test_exceptions(reports):
    report = reports["exceptions"]
    assert report["run"]["status"] == 0x2A            # the guest's value; the audit itself exits 0
    for text in ("int3", "int 3", "into", "int 0x80", "int 0x81", "iretd", "lidt [0x100d88]"):
        found = rows(report, text)
        assert found and all(i["traps_when_deprivileged"] for i in found), text
    assert counts(report, "lidt [0x100d88]") == [1]
    assert {"pushfd", "popfd", "mov Sreg,r/m"} <= set(report["summary"]["hole_forms"])


# -- guests written here ----------------------------------------------------------------------------

STRAIGHT = textwrap.dedent("""\
    # never run by the test: its main path spins for ever
    start:
        cli
        pushfd
        popfd
        sgdt [0x200000]
        call sub
        jmp over
        .byte 0x9c, 0x0f, 0x01, 0xe0        # pushfd; smsw eax as data: never reached
    over:
        mov dx, 0x3f8
        mov al, 0x41
        out dx, al
        mov eax, 0x100000
        test eax, eax
        jz elsewhere
        hlt
        jmp eax
    elsewhere:
        str eax
    spin:
        jmp spin
    sub:
        smsw eax
        ret
    """)

PRIVILEGED_ONLY = textwrap.dedent("""\
    # only privileged sensitive instructions: pure trap-and-emulate would do
        cli
        mov dx, 0x3f8
        mov al, 0x41
        out dx, al
        mov dx, 0xf4
        mov eax, 0
        out dx, eax
        hlt
    """)


def test_static_scans_without_running(tmp_path):
    image = tmp_path / "straight.s"
    image.write_text(STRAIGHT)
    report = audit_json(image, "--static")
    assert report["audit"] == "static" and "run" not in report
    found = [(i["instruction"], i["traps_when_deprivileged"], i["count"]) for i in report["instructions"]]
    assert found == [("cli", True, None), ("pushfd", False, None), ("popfd", False, None),
                     ("sgdt [0x200000]", False, None), ("out dx, al", True, None), ("hlt", True, None),
                     ("str eax", False, None), ("smsw eax", False, None)]
    assert report["scan"]["indirect_transfers_not_followed"] == 2        # jmp eax, ret
    assert report["summary"]["verdict"] == f"{VERDICT}no (5 holes: pushfd, popfd, sgdt, str, smsw)"
    text = run_vmm("audit", image, "--static")
    assert text.returncode == 0
    table = text.stdout.decode().splitlines()
    assert any(line.split()[-3:] == ["inline", "no", "-"] and "pushfd" in line for line in table)
    assert table[-1] == f"{VERDICT}no (5 holes: pushfd, popfd, sgdt, str, smsw)"


def test_static_sample_reaches_crt0():
    report = audit_json("sample_binaries/hello.elf", "--static")
    dynamic_forms = ["cli", "lgdt", "ljmp", "mov Sreg,r/m", "out", "in", "hlt"]
    assert set(dynamic_forms) <= {i["form"] for i in report["instructions"]}
    assert all(i["count"] is None for i in report["instructions"])


def test_a_guest_without_holes_is_virtualizable(tmp_path):
    image = tmp_path / "privileged.s"
    image.write_text(PRIVILEGED_ONLY)
    for extra in ((), ("--static",)):
        proc = run_vmm("audit", image, *extra)
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout.decode().splitlines()[-1] == f"{VERDICT}yes (0 holes)"
    report = audit_json(image)
    assert report["summary"]["virtualizable"] is True
    assert counts(report, "out dx, al") == [1] and report["run"]["console_bytes"] == 1


def test_json_to_a_file(tmp_path):
    out = tmp_path / "audit.json"
    proc = run_vmm("audit", "sample_binaries/hello.elf", "--json", "--out", out)
    assert proc.returncode == 0 and proc.stdout == b""
    assert json.loads(out.read_text())["summary"]["verdict"].startswith(VERDICT + "no")


@pytest.mark.parametrize("extra", [(), ("--static",)], ids=["dynamic", "static"])
def test_bad_image_is_one_line(tmp_path, extra):
    proc = run_vmm("audit", tmp_path / "missing.elf", *extra)
    assert proc.returncode == 1 and proc.stdout == b""
    lines = proc.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmm: ") and "missing.elf" in lines[0]


def test_bad_option_is_one_line():
    proc = run_vmm("audit", "sample_binaries/hello.elf", "--max-insns", "0")
    assert proc.returncode == 2 and proc.stdout == b""
    assert len(proc.stderr.decode().splitlines()) == 1
