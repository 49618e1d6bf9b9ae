"""Assembly source (.s/.asm, Intel syntax): assembled with Keystone at --load-addr, then flat-loaded."""

from __future__ import annotations

import re
import threading

from vmm.errors import ImageError, MonitorBug
from vmm.loaders import LoadedImage, flat

_LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$]*)\s*:")


# Keystone (0.9.2) never initialises the default radix of its lexer (MCAsmInfo::Radix, in heap
# memory allocated by each ks_open; keystone-engine/keystone#528 and #608). An instance whose
# memory happens to hold 16 reads every bare number as hex: "mov ecx, 12" became mov ecx, 0x12,
# so the same source now and then assembled differently, depending on what the process had
# allocated and freed before (the fuzz programs that "stopped early" under every mode alike,
# once in 5-13 full-suite runs). The API cannot set 10 (ks_option forces 16), so each new
# instance is probed, and one that reads hex is set aside for good: freed, its memory would hand
# the next instance the same radix. The monitor then keeps one instance for the process (its
# radix never changes; every ks_asm builds its parser afresh).
_RADIX_PROBE, _DECIMAL = "push 10", [0x6A, 0x0A]
_MAX_INSTANCES = 64
_set_aside: list = []
_shared = None
_lock = threading.Lock()


def new_assembler(bits: int = 32):
    """A new Intel-syntax Keystone instance (32- or 64-bit code) that reads bare numbers as
    decimal. Every Keystone instance in the process must come from here (the engine's code-write
    gate too, whose 64-bit instance once assembled "add r10, 32" as 0x32 now and then: a gate
    that segfaulted the monitor at the guest's first store into translated code)."""
    from keystone import KS_ARCH_X86, KS_MODE_32, KS_MODE_64, Ks   # only images that need it pay the import
    for _ in range(_MAX_INSTANCES):
        assembler = Ks(KS_ARCH_X86, KS_MODE_64 if bits == 64 else KS_MODE_32)
        if assembler.asm(_RADIX_PROBE, 0)[0] == _DECIMAL:
            return assembler
        _set_aside.append(assembler)
    raise MonitorBug(f"Keystone read decimal numbers as hex in {_MAX_INSTANCES} instances in a row")


def shared_assembler():
    """The process's one checked instance (new_assembler), made on first use."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = new_assembler()
        return _shared


def assemble(source: str, address: int, name: str = "<source>") -> bytes:
    """Machine code for `source` placed at `address`; ImageError names the offending line."""
    from keystone import KsError
    assembler = shared_assembler()
    with _lock:
        try:
            encoding, _count = assembler.asm(source, address)
        except KsError as error:
            line_number, text = _find_bad_line(assembler, source, address)
            where = f" at line {line_number}: {text.strip()}" if line_number else ""
            raise ImageError(f"{name}: assembly error{where}: {_reason(error)}") from None
    if not encoding:
        raise ImageError(f"{name}: assembly produced no code")
    return bytes(encoding)


def _reason(error) -> str:
    return re.sub(r"\s*\(KS_ERR_\w+\)$", "", str(error)).lower()


def _find_bad_line(assembler, source: str, address: int) -> tuple[int, str]:
    """Keystone reports no line numbers, so try each line alone. A line that only fails for a
    missing symbol is retried with every label of the file defined in front of it."""
    from keystone import KS_ERR_ASM_SYMBOL_MISSING, KsError
    lines = source.splitlines()
    labels = "\n".join(f"{m.group(1)}:" for m in map(_LABEL.match, lines) if m)
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            assembler.asm(line, address)
            continue
        except KsError as error:
            if error.errno != KS_ERR_ASM_SYMBOL_MISSING:
                return number, line
        try:
            assembler.asm(labels + "\n" + line, address)
        except KsError:
            return number, line
    return 0, ""


def load(name, data, memory, load_address, reserved=()) -> LoadedImage:
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ImageError(f"{name}: assembly source is not UTF-8 text") from None
    code = assemble(source, load_address, name)
    image = flat.load(name, code, memory, load_address, reserved)
    image.kind = "asm"
    return image
