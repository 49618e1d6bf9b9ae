"""QEMU-style tracing (-d FLAGS, -D FILE) through the real command line."""

import json
import re

from tests.cli import run_vmm


def trace(tmp_path, *args):
    log = tmp_path / "trace.log"
    report = tmp_path / "report.json"
    proc = run_vmm("run", *args, "-D", log, "--report", report)
    return proc, log.read_text(), json.loads(report.read_text())


def test_in_asm_and_out_asm_show_every_translated_block(tmp_path):
    proc, text, report = trace(tmp_path, "sample_binaries/hello.elf", "-d", "in_asm,out_asm")
    assert proc.returncode == 0 and proc.stdout.startswith(b"Hello")      # console stays on stdout
    blocks = report["counters"]["translation_cache"]["blocks_translated"]
    assert text.count("\nIN: ") + text.startswith("IN: ") == blocks
    assert text.count("OUT: [size=") == blocks
    assert "lgdt [0x100198]" in text and "int3" in text


def test_io_and_exits_match_the_counters(tmp_path):
    proc, text, report = trace(tmp_path, "sample_binaries/uart.elf", "-d", "io,exits")
    port_io = report["counters"]["port_io"]
    accesses = sum(device["reads"] + device["writes"] for device in port_io.values())
    assert text.count("\nio: ") + text.startswith("io: ") == accesses
    assert "io: out 0x03fb size 1 value 0x83 (com1)" in text
    assert sum(1 for line in text.splitlines() if line.startswith("exit: ")) == sum(report["counters"]["exits"].values())


def test_int_lists_each_delivery(tmp_path):
    for mode in ("bt", "direct"):
        proc, text, report = trace(tmp_path, "sample_binaries/exceptions.elf", "--mode", mode, "-d", "int")
        lines = [line for line in text.splitlines() if line.startswith("int: ")]
        assert len(lines) == sum(report["counters"]["exceptions"].values())
        assert any("#GP (exception)" in line and "error 0x28" in line for line in lines)
        assert any("0x80 vector 0x80 (software)" in line for line in lines)


def test_exec_sees_every_block_under_both_modes(tmp_path):
    counts, reports = {}, {}
    for mode in ("bt", "direct"):
        proc, text, reports[mode] = trace(tmp_path, "sample_binaries/exceptions.elf", "--mode", mode, "-d", "exec")
        assert proc.returncode == 42
        counts[mode] = text.count("Trace: ")
    assert counts["bt"] > 5000 and counts["direct"] > 5000
    # bt with exec tracing: nothing is chained or inline-cached, every transition is seen
    cache = reports["bt"]["counters"]["translation_cache"]
    assert cache.get("links_made", 0) == 0 and cache.get("predictions_set", 0) == 0


def test_unknown_trace_flag_is_one_line():
    proc = run_vmm("run", "sample_binaries/hello.elf", "-d", "bogus")
    assert proc.returncode == 2 and proc.stderr.decode().count("\n") == 1
    assert "unknown -d flag 'bogus'" in proc.stderr.decode()


def test_port_exits_name_their_io_instruction_under_every_mode(tmp_path):
    # Every port exit printed eip 0x00000000 before. uart.elf programs and polls the UART from
    # blocks that hold several IN/OUTs; each exit must name the IN or OUT that made it (decoded
    # from the image), and every mode must see the same ones in the same order.
    from capstone import CS_ARCH_X86, CS_MODE_32, Cs
    from tests.samples import build_samples as bs
    _entry, segments = bs.elf_segments((bs.SAMPLES_DIR / "uart.elf").read_bytes())
    image = {paddr + offset: byte for paddr, data, _memsz in segments for offset, byte in enumerate(data)}
    capstone = Cs(CS_ARCH_X86, CS_MODE_32)
    seen = {}
    for mode in ("bt", "direct", "trap", "vt"):
        proc, text, report = trace(tmp_path, "sample_binaries/uart.elf", "--mode", mode, "-d", "exits")
        assert proc.returncode == 3, proc.stderr.decode()             # uart.elf's own exit value
        exits = re.findall(r"^exit: (port_in|port_out|stop_request) eip 0x([0-9a-f]{8})$", text, re.M)
        ports = [(reason, int(eip, 16)) for reason, eip in exits if reason != "stop_request"]
        assert len(ports) == report["counters"]["exits"]["port_in"] + report["counters"]["exits"]["port_out"] > 100
        for reason, eip in set(ports):
            insn = next(capstone.disasm(bytes(image.get(eip + i, 0) for i in range(16)), eip, 1))
            mnemonic = insn.mnemonic.split()[-1]             # (past a rep prefix)
            assert mnemonic.startswith("in" if reason == "port_in" else "out"), (mode, hex(eip), insn.mnemonic)
        seen[mode] = exits
    assert seen["bt"] == seen["direct"] == seen["trap"] == seen["vt"]
    assert seen["direct"][-1][0] == "stop_request" and int(seen["direct"][-1][1], 16) != 0
