"""The command line with bad input: one clear line on stderr, a non-zero status, no traceback."""

import json

import pytest

from tests.cli import run_vmm
from tests.guests import EXIT, make_elf


def assert_one_line_error(proc, status, fragment):
    err = proc.stderr.decode()
    assert proc.returncode == status, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err
    assert proc.stdout == b""


@pytest.mark.parametrize("data, fragment", [
    (b"", "empty file"),
    (make_elf(b"\xf4", elf_class=2), "ELF64 image"),
    (make_elf(b"\xf4", machine=62), "wrong machine"),
    (make_elf(b"\xf4" * 64)[:0x1010], "truncated"),
    (make_elf(b"\xf4", paddr=0x8000000), "outside guest RAM"),
    (make_elf(b"\xf4", paddr=0xFF000000), "overlaps the monitor's memory"),
])
def test_rejected_images_exit_1(tmp_path, data, fragment):
    image = tmp_path / "bad.elf"
    image.write_bytes(data)
    assert_one_line_error(run_vmm("run", image), 1, fragment)


def test_assembly_error_names_the_line(tmp_path):
    image = tmp_path / "bad.s"
    image.write_text("nop\nmov eax, 1\nfrobnicate eax\n")
    assert_one_line_error(run_vmm("run", image), 1, "bad.s: assembly error at line 3: frobnicate eax")


@pytest.mark.parametrize("args, fragment", [
    (["--mem", "0"], "--mem must be between"),
    (["--mem", "100000"], "--mem must be between"),
    (["--max-insns", "0"], "--max-insns must be positive"),
    (["--timeout", "-1"], "--timeout must be positive"),
    (["--mode", "warp"], "invalid choice: 'warp'"),
    (["--load-addr", "zero"], "invalid address 'zero'"),
    (["--bogus"], "unrecognized arguments: --bogus"),
])
def test_impossible_options_exit_2(args, fragment):
    assert_one_line_error(run_vmm("run", "sample_binaries/hello.elf", *args), 2, fragment)


def test_missing_image_and_directory(tmp_path):
    assert_one_line_error(run_vmm("run", tmp_path / "nothing.elf"), 1, "cannot read: No such file")
    assert_one_line_error(run_vmm("run", tmp_path), 1, "is a directory")


def test_runaway_guest_stops_at_instruction_limit(tmp_path):
    image = tmp_path / "spin.s"
    image.write_text("spin:\n    jmp spin\n")
    proc = run_vmm("run", image, "--max-insns", "200000")
    assert_one_line_error(proc, 124, "instruction limit reached (200000 instructions)")


def test_runaway_guest_stops_at_time_limit(tmp_path):
    image = tmp_path / "spin.s"
    image.write_text("spin:\n    jmp spin\n")
    assert_one_line_error(run_vmm("run", image, "--timeout", "0.5"), 125, "time limit reached (0.5 s)")


def test_report_holds_registers_and_counters(tmp_path):
    image = tmp_path / "guest.s"
    image.write_text("mov ebx, 0xcafe\nmov dx, 0x3f8\nmov al, 0x41\nout dx, al\nmov eax, 0x105\n" + EXIT)
    proc = run_vmm("run", image, "--report", tmp_path / "r.json")
    assert (proc.returncode, proc.stdout, proc.stderr) == (5, b"A", b"")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["image_kind"] == "asm" and report["registers"]["ebx"] == 0xCAFE
    assert report["exit"]["reason"] == "debug_exit" and report["exit"]["guest_value"] == 0x105
    assert report["counters"]["exits"] == {"port_out": 2, "stop_request": 1}
    assert report["counters"]["port_io"]["com1"] == {"reads": 0, "writes": 1}
    assert report["wall_time_s"] > 0


def test_unassigned_port_logging(tmp_path):
    image = tmp_path / "guest.s"
    image.write_text("mov dx, 0x80\nin al, dx\nmov eax, 0\n" + EXIT)
    proc = run_vmm("run", image, "--log-unassigned-ports")
    assert proc.returncode == 0
    assert proc.stderr.decode() == "vmm: unassigned port in 0x0080 size 1 value 0xff\n"


def test_console_input_comes_from_stdin():
    proc = run_vmm("run", "sample_binaries/echo.elf", stdin=b"abc xyz\n")
    assert b"ABC XYZ" in proc.stdout and proc.returncode == 0
