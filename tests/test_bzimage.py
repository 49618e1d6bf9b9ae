"""Linux's boot protocol (vmm/loaders/bzimage.py): the setup header parsed, boot_params as QEMU's
loader and the kernel's setup code leave it (recorded from a real boot under qemu-system-i386),
the 32-bit entry state a guest sees, and bad input refused in one line with status 2."""

import struct
from pathlib import Path

import pytest

from tests.cli import run_vmm
from tests.guests import PUTS, run_image
from tests.linux import KERNEL, linux_missing
from vmm.engine import Engine
from vmm.loaders import bzimage, load_image
from vmm.loaders.assembly import assemble
from vmm.memory import PhysicalMemory

needs_linux = pytest.mark.skipif(linux_missing() is not None, reason=linux_missing() or "")
QEMU_BOOT_PARAMS = Path(__file__).with_name("linux_boot_params_qemu.txt")


def make_bzimage(code: bytes, *, version: int = 0x20F, loadflags: int = bzimage.LOADED_HIGH,
                 setup_sects: int = 4, init_size: int = 0x10000) -> bytes:
    """A bzImage around `code` (the protected-mode part, run at 0x100000): a setup of
    `setup_sects` + 1 sectors holding the header as boot.rst lays it out."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    struct.pack_into("<I", setup, 0x1F4, (len(code) + 15) // 16)             # syssize
    struct.pack_into("<H", setup, 0x1FA, 0xFFFF)                             # vid_mode: normal
    struct.pack_into("<H", setup, 0x1FE, 0xAA55)
    setup[0x200:0x202] = bytes([0xEB, bzimage.HEADER_END - 0x202])           # jmp over the header
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = loadflags
    struct.pack_into("<I", setup, 0x214, 0x100000)                           # code32_start
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)                         # initrd_addr_max
    struct.pack_into("<I", setup, 0x238, 0x7FF)                              # cmdline_size
    struct.pack_into("<Q", setup, 0x258, 0x100000)                           # pref_address
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + code + bytes(-len(code) % 16)


# The protected-mode part of the test kernel: it checks the entry state boot.rst's 32-bit
# protocol promises (CS 0x10, DS/ES/SS 0x18, IF clear, EBX/EDI/EBP zero), prints the command line
# at cmd_line_ptr and the initrd's first 16 bytes, then ends with isa-debug-exit 0x21 (0x42 if
# a check failed).
ENTRY_CHECK = """
    mov eax, cs
    cmp eax, 0x10
    jne bad
    mov eax, ds
    cmp eax, 0x18
    jne bad
    mov eax, ss
    cmp eax, 0x18
    jne bad
    mov eax, es
    cmp eax, 0x18
    jne bad
    pushfd
    pop eax
    test eax, 0x200
    jnz bad
    or ebx, edi
    or ebx, ebp
    jnz bad
    mov esp, 0x90000
    mov ebx, esi
    mov esi, dword ptr [ebx + 0x228]
    call puts
    mov esi, dword ptr [ebx + 0x218]
    mov byte ptr [esi + 16], 0
    call puts
    mov eax, 0x21
    jmp done
bad:
    mov eax, 0x42
done:
    mov dx, 0xf4
    out dx, eax
    cli
    hlt
""" + PUTS


def test_the_32bit_entry_state_and_what_boot_params_point_at(tmp_path):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(make_bzimage(assemble(ENTRY_CHECK, 0x100000)))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"INITRD-CONTENTS!" + bytes(5000))
    result, output, vm = run_image(str(kernel), append="console=ttyS0 quiet", initrd=[str(initrd)], mode="direct")
    assert result.guest_value == 0x21, output
    assert output == b"console=ttyS0 quietINITRD-CONTENTS!"
    # The initrd at the top of RAM below the ACPI zone, page aligned (QEMU's rule, -m 32).
    address, size = struct.unpack("<II", vm.memory.read(0x10000 + 0x218, 8))
    assert (address, size) == ((32 * 2**20 - 0x20000 - 1 - 5016) & ~0xFFF, 5016)


# Not trap: there `mov eax, cs` shows the compressed ring's selector, the 386 hole that mode keeps.
@pytest.mark.parametrize("mode", ["bt", "vt"])
def test_the_entry_state_in_every_mode(tmp_path, mode):
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(make_bzimage(assemble(ENTRY_CHECK, 0x100000)))
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"0123456789abcdef")
    result, output, _vm = run_image(str(kernel), append="x", initrd=[str(initrd)], mode=mode)
    assert (result.guest_value, output) == (0x21, b"x0123456789abcdef")


def _qemu_zero_page() -> bytes:
    """The recorded hexdump -C, '*' lines repeating the row before them."""
    page, last = bytearray(), b""
    for line in QEMU_BOOT_PARAMS.read_text().splitlines():
        if line.startswith("#"):
            continue
        if line.startswith("*"):
            continue
        offset = int(line[:8], 16)
        while len(page) < offset:
            page += last
        last = bytes.fromhex(line[10:58].replace(" ", "")) if len(line) > 10 else b""
        page += last
    return bytes(page[:4096])


# What the kernel itself writes into the zero page after entry, or what only SeaBIOS's 16-bit
# services put there (which the 32-bit protocol has no way to ask): left out of the comparison.
KERNEL_OR_BIOS_ONLY = [
    (0x040, 0x054, "apm_bios_info: SeaBIOS's APM entry, from int 15h AX=5300h"),
    (0x060, 0x070, "ist_info: int 15h AX=E980h's registers"),
    (0x070, 0x078, "acpi_rsdp_addr: written by the kernel's decompressor"),
    (0x140, 0x1C0, "edid_info: QEMU VGA's EDID, from VBE int 10h AX=4F15h"),
    (0x1E4, 0x1E8, "scratch: the decompressor's"),
]


@needs_linux
def test_boot_params_match_what_qemu_gives_the_same_kernel(tmp_path):
    """The whole zero page of Debian's kernel for -m 256 and an initrd of the recorded size,
    byte for byte what the kernel showed under QEMU, save the fields listed above."""
    initrd = tmp_path / "initrd.gz"
    initrd.write_bytes(bytes(0x104A86))
    memory = PhysicalMemory(Engine(), 256)
    image = load_image(str(KERNEL), memory, 0x100000)
    assert (image.kind, image.entry, image.low) == ("linux", 0x100000, 0x100000)
    address = bzimage.write_boot_params(memory, str(KERNEL), image, "console=ttyS0", [str(initrd)])
    ours = bytearray(memory.read(address, 4096))
    expected = bytearray(_qemu_zero_page())
    expected[0x211] &= ~0x02                      # KASLR_FLAG: the decompressor sets it
    for start, end, _why in KERNEL_OR_BIOS_ONLY:
        ours[start:end] = expected[start:end] = bytes(end - start)
    differ = [hex(at) for at in range(4096) if ours[at] != expected[at]]
    assert not differ, differ
    assert memory.read(0x20000, 14) == b"console=ttyS0\0"
    assert memory.read(0x0FEDB000, 16) == bytes(16)      # the initrd where QEMU put it


@needs_linux
def test_debian_kernel_header():
    header = bzimage.parse_header("vmlinuz", KERNEL.read_bytes())
    assert (header.version, header.setup_sects, header.code32_start) == (0x20F, 39, 0x100000)
    assert (header.initrd_addr_max, header.cmdline_size, header.relocatable) == (0x7FFFFFFF, 0x7FF, True)
    assert (header.pref_address, header.init_size) == (0x1000000, 0x1018000)


@pytest.mark.parametrize("size, ram_mib, address", [
    (0x104A86, 256, 0x0FEDB000),           # recorded under QEMU -m 256 (the zero page above)
    (0x1000, 32, 0x01FDE000),
    (0x1001, 32, 0x01FDE000),
    (0x2000, 32, 0x01FDD000),
])
def test_initrd_placement_is_qemus(size, ram_mib, address):
    header = bzimage.SetupHeader(0x20F, 4, 1, 0x100000, 0x7FFFFFFF, 0x7FF, 0x100000, 0, True)
    assert bzimage.initrd_address(header, ram_mib << 20, size) == address


def test_initrd_below_initrd_addr_max():
    header = bzimage.SetupHeader(0x20F, 4, 1, 0x100000, 0x37FFFFFF, 0x7FF, 0x100000, 0, True)
    assert bzimage.initrd_address(header, 2048 << 20, 0x2000) == 0x37FFD000


@pytest.mark.parametrize("append, mode", [
    ("console=ttyS0", 0xFFFF), ("vga=ext", 0xFFFE), ("quiet vga=ask", 0xFFFD), ("vga=0x317", 0x317),
    ("vga=791 x", 791), ("vga=normal", 0xFFFF),
])
def test_vga_option_sets_vid_mode_as_qemu(append, mode):
    assert bzimage.vga_mode(append, 0xFFFF) == mode


def test_recognised_by_content_before_multiboot(tmp_path):
    path = tmp_path / "kernel.bin"
    path.write_bytes(make_bzimage(b"\xf4" * 32))
    memory = PhysicalMemory(Engine(), 32)
    image = load_image(str(path), memory, 0x100000)
    assert (image.kind, image.low, image.high) == ("linux", 0x100000, 0x100020)
    assert memory.read(0x100000, 32) == b"\xf4" * 32


@pytest.mark.parametrize("make, fragment", [
    (lambda: make_bzimage(b"\xf4" * 64)[:0x240], "truncated bzImage: 576 bytes, the setup header needs 616"),
    (lambda: make_bzimage(b"\xf4" * 64)[:0xA00], "truncated bzImage: 2560 bytes hold no protected-mode kernel"),
    (lambda: make_bzimage(b"\xf4" * 64)[:0xA20], "syssize says 0x40 bytes of protected-mode kernel, the file has 0x20"),
    (lambda: make_bzimage(b"\xf4", version=0x203), "Linux boot protocol 2.03 is older than 2.04"),
    (lambda: make_bzimage(b"\xf4", loadflags=0), "a zImage"),
    (lambda: make_bzimage(b"\xf4", init_size=0x2000000), "the kernel needs RAM up to 0x2100000"),
], ids=["short-header", "no-kernel", "short-kernel", "old-protocol", "zimage", "too-big"])
def test_bad_bzimages_are_one_line_errors_status_2(tmp_path, make, fragment):
    path = tmp_path / "bzImage"
    path.write_bytes(make())
    proc = run_vmm("run", path)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err


@pytest.mark.parametrize("initrd, fragment", [
    ("missing", "initrd "),
    ("big", "do not fit between the kernel"),
    ("two", "takes one --initrd file, not 2"),
], ids=["missing", "too-big", "two"])
def test_bad_initrds_are_one_line_errors_status_2(tmp_path, initrd, fragment):
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(b"\xf4" * 16))
    big = tmp_path / "big"
    big.write_bytes(bytes(31 << 20))
    small = tmp_path / "small"
    small.write_bytes(b"x")
    value = {"missing": str(tmp_path / "nothere"), "big": str(big), "two": f"{small},{small}"}[initrd]
    proc = run_vmm("run", path, "--initrd", value)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert fragment in err, err


def test_too_long_command_line(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(make_bzimage(b"\xf4" * 16))
    proc = run_vmm("run", path, "--append", "x" * 2048)
    assert proc.returncode == 2 and "the command line is 2048 bytes; the kernel takes at most 2047" in proc.stderr.decode()


@needs_linux
def test_debian_kernel_in_too_little_memory(tmp_path):
    proc = run_vmm("run", KERNEL, "--mem", "32")
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and "raise --mem" in err, err
