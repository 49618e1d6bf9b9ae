"""Each mode under the paging scheme it does not use by default (`--paging`): nested paging
under bt and trap (vmm/nested_paging.py: the engine's virtual TLB filled by the two-level
walk), shadow paging under vt (VT-x without EPT). Driven by the paging samples and by guests
that try to reach the monitor's memory; plus the exact CR2 of a refused access
(vmm/fault_address.py) and the --paging option's rules. The default schemes run every sample
in tests/test_samples.py."""

import json

import pytest

from tests.cli import run_vmm, sample_arguments, sample_report
from tests.guests import EXIT, run_source
from tests.samples import MANIFEST, REPO_ROOT, ids
from tests.test_shadow_paging import PAGING_ON
from tests.test_trap import DIVERGING as TRAP_DIVERGING
from vmm.exits import StopReason
from translator.x86decode import decode
from vmm.fault_address import fault_address
from vmm.loaders.assembly import assemble

PAGING_SAMPLES = [entry for entry in MANIFEST if entry["name"] in
                  ("paging", "tlb", "address_spaces", "higher_half", "alias_smc", "paging_timer")]


OTHER_SCHEME = [("bt", "nested"), ("trap", "nested"), ("vt", "shadow")]


@pytest.mark.parametrize("mode, paging", OTHER_SCHEME, ids=[f"{m}-{p}" for m, p in OTHER_SCHEME])
@pytest.mark.parametrize("entry", PAGING_SAMPLES, ids=ids(PAGING_SAMPLES))
def test_paging_samples_run_as_on_qemu_under_the_other_scheme(entry, mode, paging, tmp_path):
    if mode == "trap" and entry["name"] in TRAP_DIVERGING:
        pytest.skip(f"{entry['name']} meets a hole of trap-and-emulate (tests/test_trap.py)")
    report = tmp_path / "report.json"
    proc = run_vmm(*sample_arguments(entry), "--mode", mode, "--paging", paging, "--report", report)
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes(), proc.stderr.decode()
    assert proc.returncode == entry["exit"] & 0xFF
    summary = json.loads(report.read_text())
    assert summary["paging"] == paging
    assert summary["counters"]["shadow_paging"]["scheme"] == paging


def test_nested_paging_takes_no_trap_for_page_table_writes(tmp_path):
    # address_spaces edits its page tables and switches CR3: under nested paging the engine's
    # TLB fills walk the guest's tables, nothing is traced and no shadow is built.
    counters = sample_report(tmp_path, "address_spaces", "--mode", "bt", "--paging", "nested")["counters"]
    nested = counters["shadow_paging"]
    assert nested["tlb_fills"] > 0 and nested["tlb_flushes"] > 0
    assert "tracing_faults" not in nested and "shadows_built" not in nested
    assert counters["cache_exits"]["tracing_fault"] == 0


@pytest.mark.parametrize("mode", ["bt", "trap"])
@pytest.mark.parametrize("physical", [0xFF0E9000, 0xFF500000, 0xFF004000])
def test_nested_paging_never_maps_monitor_memory_into_the_guest(tmp_path, mode, physical):
    source = PAGING_ON.replace("mov cr0, eax", f"""mov cr0, eax
    mov dword ptr [0x11000], {physical | 0x3:#x}
    mov eax, 0xdeadbeee
    inc eax
    mov dword ptr [0x400000], eax
    mov eax, 0
""") + EXIT
    result, _out, vm = run_source(tmp_path, source, mode=mode, paging="nested")
    # The frame is unassigned memory to the guest, as on QEMU: the store vanishes.
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert vm.memory.mmio.counters()["unassigned"] == {"reads": 0, "writes": 1}
    offset = physical - vm.memory.monitor.base
    assert b"\xef\xbe\xad\xde" not in bytes(vm.memory.monitor_view(offset, 4096))


def _registers(values):
    return lambda name: values.get(name, 0)


@pytest.mark.parametrize("source, page, write, expected", [
    ("mov eax, dword ptr [ebx + 0x10]", 0x40001000, False, 0x40001010),       # explicit operand
    ("mov dword ptr [ebx + 0xffe], eax", 0x40002000, True, 0x40002000),       # crossing into the page
    ("push eax", 0x8000F000, True, 0x8000FFFC),                               # the stack, below ESP
    ("pop eax", 0x80010000, False, 0x80010000),
    ("movsd dword ptr es:[edi], dword ptr [esi]", 0x50000000, True, 0x50000040),   # the write: EDI
    ("movsd dword ptr es:[edi], dword ptr [esi]", 0x60000000, False, 0x60000020),  # the read: ESI
    ("add dword ptr [ebp - 8], 1", 0x80001000, True, 0x80001008),             # SS by default for EBP
])
def test_the_exact_fault_address_comes_from_the_instruction(source, page, write, expected):
    registers = {"ebx": 0x40001000, "esp": 0x80010000, "esi": 0x60000020, "edi": 0x50000040, "ebp": 0x80000000}
    instruction = decode(assemble(source, 0x1000), 0x1000)
    bases = {"ss": 0, "ds": 0, "es": 0}
    if source.startswith("add"):          # through DS it would land on the page before
        registers["ebp"], bases["ss"] = 0x80000010, 0x1000
    assert fault_address(instruction, page, write, _registers(registers), bases.get) == expected


def test_vt_with_shadow_paging_exits_on_control_registers_and_page_faults(tmp_path):
    # VT-x without EPT: the CR and invlpg exits are forced on and emulated, and the hidden and
    # tracing page faults arrive through the exception bitmap's #PF.
    counters = sample_report(tmp_path, "address_spaces", "--mode", "vt", "--paging", "shadow")["counters"]
    assert {"cr_access", "invlpg"} <= set(counters["vt_exit_controls"])
    assert counters["vt_exits"]["cr_access"] > 0 and counters["vt_exception_exits"]["0x0e"] > 0
    assert counters["vt_exits"]["exception"] == sum(counters["vt_exception_exits"].values())
    shadow = counters["shadow_paging"]
    assert shadow["tracing_faults"] > 0 and shadow["hidden_faults"] > 0 and shadow["shadow_reuses"] > 0


@pytest.mark.parametrize("options, message", [
    (["--mode", "direct", "--paging", "nested"], "--paging does not apply to --mode direct"),
    (["--mode", "direct", "--paging", "shadow"], "--paging does not apply to --mode direct"),
])
def test_impossible_paging_options_are_one_line_errors(options, message):
    proc = run_vmm("run", "sample_binaries/hello.elf", *options)
    assert proc.returncode == 2, proc.stderr.decode()
    assert proc.stderr.decode().startswith("vmm: ") and message in proc.stderr.decode()
    assert proc.stderr.count(b"\n") == 1


MONITOR_WALKS = [("bt", "shadow"), ("bt", "nested"), ("trap", "shadow"), ("trap", "nested"), ("vt", "shadow")]


@pytest.mark.parametrize("mode, paging", MONITOR_WALKS, ids=[f"{m}-{p}" for m, p in MONITOR_WALKS])
def test_pae_paging_stops_as_unsupported_where_the_monitor_walks_the_tables(tmp_path, mode, paging):
    # Shadow paging and the nested fill hook walk two-level tables; a PAE guest would get them
    # read the wrong way, so its first walk stops the run (direct and vt's own MMU run PAE in
    # the engine; the monitor's own walks there, e.g. delivering an exception, stop the same way).
    source = PAGING_ON.replace("or eax, 0x10 ", "or eax, 0x30 ").replace("mov cr0, eax", """mov cr0, eax
    mov eax, dword ptr [0x400000]
""") + EXIT
    assert "0x30" in source
    result, _output, _vm = run_source(tmp_path, source, mode=mode, paging=paging)
    assert result.reason is StopReason.UNSUPPORTED, result
    assert result.message == "PAE paging (CR4.PAE): the monitor walks two-level 32-bit page tables only"
