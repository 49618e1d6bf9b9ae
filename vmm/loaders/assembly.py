"""Assembly source (.s/.asm, Intel syntax): assembled with Keystone at --load-addr, then flat-loaded."""

from __future__ import annotations

import re

from vmm.errors import ImageError
from vmm.loaders import LoadedImage, flat

_LABEL = re.compile(r"^\s*([A-Za-z_.$][\w.$]*)\s*:")


def assemble(source: str, address: int, name: str = "<source>") -> bytes:
    """Machine code for `source` placed at `address`; ImageError names the offending line."""
    from keystone import KS_ARCH_X86, KS_MODE_32, Ks, KsError   # only images that need it pay the import
    assembler = Ks(KS_ARCH_X86, KS_MODE_32)
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
