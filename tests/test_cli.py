"""The command line with bad input: one clear line on stderr, a non-zero status, no traceback."""

import json

import pytest

from tests.cli import run_vmm
from tests.guests import EXIT, make_elf
from tests.samples import build_samples as bs
from vmm.exits import ExitReason


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
    (make_elf(b"\xf4", multiboot=True)[:0x1008] + b"\0\0\0\0" + make_elf(b"\xf4", multiboot=True)[0x100c:],
     "bad Multiboot header checksum at offset 0x1000"),
    (bs.wrap_multiboot(0x100000, [(0x100000, b"\xf4" * 16, 16), (0x100008, b"\xf4" * 16, 16)]),
     "segments 0 (0x100000-0x10000f) and 1 (0x100008-0x100017) overlap in memory"),
], ids=lambda value: value if isinstance(value, str) else "image")
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
    assert {reason: count for reason, count in report["counters"]["exits"].items() if count} == \
        {"port_out": 2, "stop_request": 1}
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


def test_version_and_bare_command():
    from vmm import __version__
    proc = run_vmm("--version")
    assert (proc.returncode, proc.stdout.decode(), proc.stderr) == (0, f"vmm {__version__}\n", b"")
    proc = run_vmm()                  # bare `vmm`: usage with the commands, as a usage error
    err = proc.stderr.decode()
    assert proc.returncode == 2 and proc.stdout == b"" and "Traceback" not in err
    assert err.startswith("usage: vmm") and "run" in err and "audit" in err and "--version" in err


# -- the report's keys ----------------------------------------------------------------------------

# Maps keyed by what happened (a vector, a mnemonic), not by counter names: these list only what
# the guest did. Every other key of a mode's report is there on every run.
EVENT_MAPS = {"exceptions", "external_interrupts", "callouts", "traps", "vt_exception_exits"}
MACHINE_COUNTERS = {"exits", "port_io", "mmio", "exceptions", "external_interrupts", "callouts", "task_switches", "clock",
                    "disks"}
MODE_COUNTERS = {"bt": {"translation_cache", "cache_exits", "shadow_paging"}, "direct": set(),
                 "trap": {"traps", "virtualization_holes", "shadow_paging"},
                 "vt": {"vt_exit_controls", "vt_exits", "vt_exception_exits"}}


def _key_paths(value, path=()):
    if isinstance(value, dict) and not (path and path[-1] in EVENT_MAPS):
        for key, item in value.items():
            yield from _key_paths(item, path + (key,))
    elif not (len(path) > 1 and path[-2] in ("registers", "physical_to_machine")):
        yield path


@pytest.mark.parametrize("options", [("--mode", "bt"), ("--mode", "direct"), ("--mode", "trap"), ("--mode", "vt"),
                                     ("--mode", "bt", "--paging", "nested"), ("--mode", "vt", "--paging", "shadow")],
                         ids=" ".join)
def test_report_keys_are_the_same_whatever_the_guest_does(tmp_path, options):
    # hello does port I/O only; paging_timer turns paging on, takes timer interrupts and page
    # faults. A script reading either report finds the same keys, every counter 0 or more.
    from tests.cli import sample_report
    quiet = sample_report(tmp_path, "hello", *options)
    busy = sample_report(tmp_path, "paging_timer", *options)
    assert set(_key_paths(quiet)) == set(_key_paths(busy))
    mode = options[1]
    monitor_paging = {"shadow_paging"} if options[2:] == ("--paging", "shadow") else set()    # (vt: VT-x without EPT)
    assert set(quiet["counters"]) == MACHINE_COUNTERS | MODE_COUNTERS[mode] | monitor_paging
    assert set(quiet["counters"]["exits"]) == {reason.value for reason in ExitReason}
    assert {"com1", "pic-master", "pic-slave", "pit", "isa-debug-exit", "unassigned"} <= set(quiet["counters"]["port_io"])
    assert busy["counters"]["exits"]["exception"] > 0 and quiet["counters"]["exits"]["exception"] == 0
    if mode == "bt":
        assert quiet["counters"]["translation_cache"]["evictions"] == 0
        work = "tlb_fills" if "nested" in options else "hidden_faults"      # the paging scheme's own work
        assert quiet["counters"]["shadow_paging"][work] < busy["counters"]["shadow_paging"][work]
    if mode == "vt":
        assert quiet["counters"]["vt_exits"]["rdtsc"] == 0 and quiet["counters"]["vt_exits"]["io"] > 0


# -- options that belong to some modes only -------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--mode", "direct", "--profile"], "--profile needs --mode bt"),
    (["--mode", "vt", "--dump-cache", "x.json"], "--dump-cache needs --mode bt"),
    (["--mode", "bt", "--no-hole-watch"], "--no-hole-watch needs --mode trap"),
    (["--mode", "direct", "--vt-exits", "all"], "--vt-exits needs --mode vt"),
    (["--mode", "direct", "--paging", "shadow"], "--paging does not apply to --mode direct"),
    (["--tcache-size", "100000"], "--tcache-size must hold 1 to"),
])
def test_each_mode_refuses_the_options_of_others(args, fragment):
    assert_one_line_error(run_vmm("run", "sample_binaries/hello.elf", *args), 2, fragment)


def test_modes_answer_for_their_own_options():
    from vmm.builder import MachineConfig
    from vmm.errors import ConfigError
    from vmm.modes import available_modes
    modes = available_modes()
    modes["bt"].accepts(MachineConfig("x.elf", mode="bt", profile=True, dump_cache="d.json"))
    modes["trap"].accepts(MachineConfig("x.elf", mode="trap", watch_holes=False, paging="nested"))
    modes["vt"].accepts(MachineConfig("x.elf", mode="vt", vt_exits=frozenset({"io"}), paging="shadow"))
    for name in ("direct", "trap", "vt"):
        with pytest.raises(ConfigError, match="--profile needs --mode bt"):
            modes[name].accepts(MachineConfig("x.elf", mode=name, profile=True))
    assert modes["bt"].paging_schemes[0] == "shadow" and modes["vt"].paging_schemes[0] == "nested"
    assert not modes["direct"].paging_schemes


# -- --initrd and --load-addr ---------------------------------------------------------------------

@pytest.mark.parametrize("value, fragment", [
    ("", "argument --initrd: an empty value names no module file"),
    (",sample_binaries/modules/mod1.txt", "empty module name in ',sample_binaries/modules/mod1.txt'"),
    ("sample_binaries/modules/mod1.txt,", "empty module name in 'sample_binaries/modules/mod1.txt,'"),
])
def test_empty_module_names_are_one_line_errors(value, fragment):
    assert_one_line_error(run_vmm("run", "sample_binaries/hello.elf", "--initrd", value), 2, fragment)


def test_a_doubled_comma_is_a_comma_in_a_module_name():
    # QEMU's -initrd syntax: 'a,,b' names the one file "a,b" (not a, an empty name, b)
    assert_one_line_error(run_vmm("run", "sample_binaries/hello.elf", "--initrd", "nothere,,mod1.txt"), 1,
                          "module nothere,mod1.txt: cannot read")


@pytest.mark.parametrize("load_address, fragment", [
    ("0x1ffff00", "hello.s: no room for the boot information after the image (command line and module list at "
                  "0x2000f00-0x2000f1d, outside guest RAM 0-0x1ffffff); lower --load-addr or raise --mem"),
    ("0x8000", "hello.s: no room for the boot information after the image (command line and module list at "
               "0x9000-0x901d would overlap the Multiboot information area 0x9000-0x9557); choose another --load-addr"),
])
def test_no_room_for_the_boot_information_says_what_to_change(load_address, fragment):
    assert_one_line_error(run_vmm("run", "sample_binaries/hello.s", "--load-addr", load_address), 1, fragment)
