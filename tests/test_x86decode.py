"""translator/x86decode.py, the one Capstone wrapper: its tables agree with what Capstone decodes,
and no other module of the monitor makes a Capstone instance."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from translator.x86decode import (GPR8, GPR16, GPR32, LEGACY_PREFIXES, PREFIX_GROUPS, REGISTER_NUMBER,
                                  SUBREGISTERS, decode, instruction_length, instruction_name, listing,
                                  split_prefixes)

ROOT = Path(__file__).resolve().parent.parent


def _sources():
    for package in ("vmm", "translator", "cache", "tools"):
        yield from (ROOT / package).rglob("*.py")


def test_only_the_wrapper_makes_a_capstone_instance():
    makers = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "Cs":
                makers.append(str(path.relative_to(ROOT)))
    assert makers == ["translator/x86decode.py"]


def test_translator_imports_nothing_of_vmm():
    """The wrapper sits in translator/ so that both sides can use it with imports one way."""
    for path in (ROOT / "translator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert not (node.module or "").startswith("vmm"), path.name
            elif isinstance(node, ast.Import):
                assert not any(alias.name.startswith("vmm") for alias in node.names), path.name


@pytest.mark.parametrize("names, code", [(GPR32, b"\x89"), (GPR16, b"\x66\x89"), (GPR8, b"\x88")])
def test_register_numbers_are_the_modrm_encodings(names, code):
    for number, name in enumerate(names):
        insn = decode(code + bytes([0xC0 | number << 3]), 0)           # mov eax/ax/al, <register n>
        source = insn.operands[1]
        assert insn.reg_name(source.reg) == name
        assert REGISTER_NUMBER[source.reg] == number
        full, shift, bits = SUBREGISTERS[name]
        assert bits == 8 * source.size and full == GPR32[number % 4 if bits == 8 else number]
        assert shift == (8 if bits == 8 and number >= 4 else 0)
    assert len(SUBREGISTERS) == 8 + 8 + 8


def test_legacy_prefixes_are_what_capstone_takes_as_prefixes():
    """Every byte in front of `add [eax], eax` (which takes lock) and of cmpsd (which takes repne/repe):
    Capstone records it as a prefix of one of them exactly when it is one of ours."""
    for byte in range(256):
        recorded = False
        for carrier in (b"\x01\x00", b"\xa7"):
            insn = decode(bytes([byte]) + carrier + b"\x90", 0)
            recorded |= insn is not None and insn.size == 1 + len(carrier) and byte in insn.prefix
        assert recorded == (byte in LEGACY_PREFIXES), hex(byte)
    assert set(PREFIX_GROUPS) == LEGACY_PREFIXES
    assert split_prefixes(b"\xf3\x66\x2e\xa5\x66") == (b"\xf3\x66\x2e", b"\xa5\x66")


def test_lengths_names_and_64_bit_listing():
    assert instruction_length(b"\x66\xb8\x34\x12") == 4 and instruction_length(b"\xb8\x34\x12") is None
    assert decode(b"\x0f\x0b", 0x1000).mnemonic == "ud2" and decode(b"\x0f", 0) is None
    assert instruction_name(decode(b"\xfa", 0).id) == "cli"
    assert [mnemonic for _a, _s, mnemonic, _o in listing(b"\x41\x89\xc1\xc3", 0x7F0000000000)] == ["mov", "ret"]
    assert decode(b"\x41\x89\xc1", 0, bits=64).op_str == "r9d, eax"


# -- decode_stream: CsInsn's interface without the binding's per-instruction copies -----------------
_FIELDS = ("id", "address", "size", "bytes", "mnemonic", "op_str", "prefix", "opcode", "rex", "addr_size", "modrm",
           "sib", "disp", "sib_index", "sib_scale", "sib_base", "xop_cc", "sse_cc", "avx_cc", "avx_sae", "avx_rm",
           "eflags", "modrm_offset", "disp_offset", "disp_size", "imm_offset", "imm_size")


def _operands(insn) -> list:
    return [(op.type, op.reg, op.imm, op.size, op.access, op.avx_bcast, op.avx_zero_opmask, op.mem.segment,
             op.mem.base, op.mem.index, op.mem.scale, op.mem.disp) for op in insn.operands]


def _corpus():
    """Real code (the samples' images) and random bytes, every offset a start."""
    import random
    chunks = [path.read_bytes()[:0x1800] for path in sorted((ROOT / "sample_binaries").glob("*.elf"))]
    generator = random.Random(15)
    chunks.append(bytes(generator.randrange(256) for _ in range(0x4000)))
    return chunks


@pytest.mark.parametrize("bits", [32, 64])
def test_decode_stream_reads_what_capstone_decodes(bits):
    """Every field the monitor reads, and the ones it may (through the CsInsn fallback), are
    Capstone's, for each instruction of the corpus decoded from every offset."""
    from translator.x86decode import _disassembler, decode_stream
    checked = 0
    for chunk in _corpus():
        for start in range(0, len(chunk) - 16, 13):
            window = chunk[start:start + 48]
            ours = list(decode_stream(window, 0x1000 + start, bits))
            theirs = list(_disassembler(bits, True).disasm(window, 0x1000 + start))
            assert [insn.address for insn in ours] == [insn.address for insn in theirs]
            for mine, reference in zip(ours, theirs):
                for name in _FIELDS:
                    assert getattr(mine, name) == getattr(reference, name), (mine, name)
                assert _operands(mine) == _operands(reference), mine
                assert (mine.regs_read, mine.groups) == (reference.regs_read, reference.groups)
                checked += 1
    assert checked > 5000


def test_decode_stream_returns_whole_instructions_only():
    from translator.x86decode import decode_run
    mov = bytes.fromhex("b878563412")            # mov eax, 0x12345678
    assert [insn.size for insn in decode_run(mov + mov, 0, 8)] == [5, 5]
    assert [insn.size for insn in decode_run(mov + mov[:4], 0, 8)] == [5]      # the second is cut
    assert decode_run(b"\x0f\x0b" + mov, 0, 1)[0].mnemonic == "ud2"
    assert decode_run(b"\xff\xff", 0, 4) == []                                   # does not decode


def test_a_block_is_fetched_once_and_each_instruction_decoded_once(monkeypatch):
    """The translator's decoder read a block's code twice per instruction (a 1-byte probe, then a
    15-byte window) and decoded each instruction through its own Capstone call: one fetch of the
    page's bytes now serves the whole block, and each instruction is decoded once."""
    import translator.decoder as decoder_module
    from translator.decoder import BlockEnd, Decoder
    code = bytes.fromhex("89c1" "83c004" "01d8" "8d4c2404" "c1e803" "31c0" "85c9" "0f8512000000")
    reads, decodes = [], []
    original = decoder_module.decode_stream

    def counting(*args, **kwargs):
        for insn in original(*args, **kwargs):
            decodes.append(insn.address)
            yield insn
    monkeypatch.setattr(decoder_module, "decode_stream", counting)

    def read_code(linear, size):
        reads.append((linear, size))
        offset = linear - 0x1000
        return code[offset:offset + size] if 0 <= offset < len(code) else b""
    block = Decoder(read_code).decode_block(0x1000)
    assert block.end is BlockEnd.BRANCH and len(block.instructions) == 8
    assert len(reads) == 1
    assert decodes == [instruction.address for instruction in block.instructions]
