"""The sample guests in sample_binaries/ against the reference, qemu-system-i386.

* every manifest run with qemu=true boots under QEMU and must print exactly the recorded
  expected bytes and exit with the status isa-debug-exit gives for its value;
* the monitor-only formats (plain ELF, flat binary, Keystone .s) are checked the same way
  through a Multiboot wrapper that loads the same bytes at the same addresses;
* rebuilding from source must reproduce the committed images byte for byte.
"""

from __future__ import annotations

import shutil
import struct

import pytest

from tests.samples import REPO_ROOT, MANIFEST, ids as _ids
from tests.samples import build_samples as bs

QEMU_RUNS = [e for e in MANIFEST if e["qemu"]]
MONITOR_ONLY_RUNS = [e for e in MANIFEST if not e["qemu"]]

needs_qemu = pytest.mark.skipif(shutil.which(bs.QEMU) is None,
                                reason=f"{bs.QEMU} is not installed (reference runs need it)")


def _check_run(entry, proc):
    expected = (REPO_ROOT / entry["expected"]).read_bytes()
    assert proc.stdout == expected, (
        f"{entry['name']}: console output differs from {entry['expected']}\n"
        f"stderr: {proc.stderr.decode(errors='replace')}")
    if entry["exit"] is None:
        # Triple fault: with -no-reboot QEMU shuts the machine down and exits with 0.
        assert proc.returncode == 0, f"{entry['name']}: QEMU exit status {proc.returncode}"
    else:
        assert proc.returncode == bs.qemu_status(entry["exit"]), (
            f"{entry['name']}: QEMU exit status {proc.returncode}, "
            f"want ({entry['exit']:#x} << 1) | 1 = {bs.qemu_status(entry['exit'])}")
    # QEMU itself must not print anything (its stdout is the guest's serial port only).
    assert proc.stderr == b"", proc.stderr.decode(errors="replace")


@needs_qemu
@pytest.mark.parametrize("entry", QEMU_RUNS, ids=_ids(QEMU_RUNS))
def test_qemu_reference_output(entry):
    _check_run(entry, bs.run_entry_under_qemu(entry))


@needs_qemu
@pytest.mark.parametrize("entry", MONITOR_ONLY_RUNS, ids=_ids(MONITOR_ONLY_RUNS))
def test_monitor_only_sample_under_qemu_wrapper(entry, tmp_path):
    if entry["image"].endswith(".s"):
        pytest.importorskip("keystone", reason="keystone-engine is needed to assemble .s")
    _check_run(entry, bs.run_entry_under_qemu(entry, tmp_path))


def test_manifest_files_exist_and_match_the_build_script():
    assert MANIFEST == bs.RUNS, "samples.json is stale: run python tools/build_samples.py"
    names = [e["name"] for e in MANIFEST]
    assert len(names) == len(set(names))
    for entry in MANIFEST:
        assert (REPO_ROOT / entry["image"]).is_file(), entry["image"]
        assert (REPO_ROOT / entry["expected"]).is_file(), entry["expected"]
        for module in entry["initrd"]:
            assert (REPO_ROOT / module.split(" ", 1)[0]).is_file(), module
        # every mode is either one the run matches QEMU in, or one with what it still lacks
        assert sorted(entry["modes"] + list(entry["missing"])) == sorted(bs.MODES), entry["name"]
        assert all(reason.strip() for reason in entry["missing"].values()), entry["name"]


def _multiboot_header_offset(data: bytes):
    for off in range(0, min(len(data), 8192) - 11, 4):
        magic, flags, checksum = struct.unpack_from("<III", data, off)
        if magic == 0x1BADB002 and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return off, flags
    return None


@pytest.mark.parametrize("name", [n for n, (_s, _o, kind) in bs.IMAGES.items()
                                  if kind in ("multiboot", "elf")])
def test_image_format(name):
    _sources, output, kind = bs.IMAGES[name]
    data = (bs.SAMPLES_DIR / output).read_bytes()
    entry, segments = bs.elf_segments(data)
    assert segments and min(p for p, _b, _m in segments) == bs.LOAD_ADDRESS
    header = _multiboot_header_offset(data)
    if kind == "multiboot":
        assert header is not None, "no Multiboot header in the first 8 KiB"
        assert not header[1] & (1 << 16), "a.out kludge flag must not be set"
    else:
        assert header is None, "plain.elf must not carry a Multiboot header"


def test_flat_binary_starts_with_entry_code():
    data = (bs.SAMPLES_DIR / "flat.bin").read_bytes()
    assert data[:2] == b"\xfa\xfc"  # cli; cld -- _start is the first byte


def test_hello_s_is_keystone_clean():
    source = (bs.SAMPLES_DIR / "hello.s").read_text()
    assert ";" not in source, "Keystone treats ';' as a statement separator"
    assert source == (bs.SRC_DIR / "hello_keystone.s").read_text()
    pytest.importorskip("keystone", reason="keystone-engine not installed")
    code = bs.assemble_keystone(bs.SAMPLES_DIR / "hello.s")
    assert code[:2] == b"\xfa\xfc"


def test_rebuild_reproduces_committed_images(tmp_path):
    missing = [t for t in ("gcc", "as", "ld", "objcopy") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"toolchain not installed: {', '.join(missing)}")
    rebuilt = bs.build_all(tmp_path)
    assert len(rebuilt) == len(bs.IMAGES)
    for path in rebuilt:
        committed = bs.SAMPLES_DIR / path.name
        assert path.read_bytes() == committed.read_bytes(), (
            f"{path.name}: rebuild differs from the committed image "
            f"(run python tools/build_samples.py)")


@needs_qemu
@pytest.mark.parametrize("written, declared", [(0, 0), (3, 0)])
def test_a_recording_with_the_wrong_exit_status_is_refused(tmp_path, capsys, written, declared):
    # build_samples --record-expected: a guest that exits otherwise under QEMU than its manifest
    # entry says (it crashed, hung or changed) must not become the reference output.
    image = tmp_path / "guest.s"
    image.write_text(f"    mov dx, 0x3f8\n    mov al, 0x41\n    out dx, al\n    mov eax, {written}\n"
                     "    mov dx, 0xf4\n    out dx, eax\n    cli\n    hlt\n")
    expected = tmp_path / "guest.out"
    entry = {"name": "guest", "image": str(image), "qemu": False, "append": None, "initrd": None, "stdin": None,
             "exit": declared, "expected": str(expected)}
    recorded = bs.record_entry(entry, tmp_path)
    assert recorded == (written == declared)
    assert expected.exists() == recorded
    if recorded:
        assert expected.read_bytes() == b"A"
    else:
        assert f"(expected status {bs.qemu_status(declared)}: not recorded)" in capsys.readouterr().out
