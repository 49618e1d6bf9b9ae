"""Block discovery: decode guest code with Capstone from the guest EIP up to the end of a basic
block (a control transfer or callout, a page boundary, or the length limit). Addresses are EIPs;
the bytes are read at linear CS.base + EIP (`base`), and pages are linear pages."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, Optional

from capstone import x86_const as X
from capstone.x86_const import X86_INS_POPF, X86_INS_POPFD, X86_INS_STI

from translator.classify import Rule, classify
from translator.x86arch import PAGE_SIZE
from translator.x86decode import MAX_INSTRUCTION_LENGTH, PREFIX_GROUPS, Instruction, decode, decode_run, decode_stream

DEFAULT_BLOCK_LIMIT = 32


# Instructions that may set IF natively, each followed by an interrupt-window site (emitter).
SETS_IF = frozenset({X86_INS_STI, X86_INS_POPF, X86_INS_POPFD})


# For blocks that check their own bytes (a code page the guest writes often, cache/tcache.py):
# an instruction that may store to memory ends its block, so that what it stores is checked at
# the next block's entry. Capstone's operand access flags are not reliable for this (fstp, fistp,
# movups and cmpxchg8b stores read as reads), so the rule is conservative: a first operand in
# memory is a store unless the instruction only reads it, and the stack and string writers store.
_READS_FIRST_OPERAND = frozenset({X.X86_INS_CMP, X.X86_INS_TEST, X.X86_INS_BT, X.X86_INS_NOP,
                                  X.X86_INS_PREFETCH, X.X86_INS_PREFETCHNTA, X.X86_INS_PREFETCHT0,
                                  X.X86_INS_PREFETCHT1, X.X86_INS_PREFETCHT2, X.X86_INS_PREFETCHW,
                                  X.X86_INS_FLD, X.X86_INS_FILD, X.X86_INS_FBLD, X.X86_INS_FLDCW,
                                  X.X86_INS_FLDENV, X.X86_INS_FRSTOR, X.X86_INS_FXRSTOR, X.X86_INS_LGDT,
                                  X.X86_INS_LIDT, X.X86_INS_JMP, X.X86_INS_LJMP})
_STORES_IMPLICITLY = frozenset({X.X86_INS_PUSH, X.X86_INS_PUSHAL, X.X86_INS_PUSHAW, X.X86_INS_PUSHF,
                                X.X86_INS_PUSHFD, X.X86_INS_CALL, X.X86_INS_LCALL, X.X86_INS_ENTER,
                                X.X86_INS_INT, X.X86_INS_INT3, X.X86_INS_INTO, X.X86_INS_XCHG})


def may_store(insn) -> bool:
    """Whether the instruction may write guest memory (conservatively: true for some that only
    read it)."""
    if insn.id in _STORES_IMPLICITLY:
        return True
    operands = insn.operands
    return bool(operands) and operands[0].type == X.X86_OP_MEM and insn.id not in _READS_FIRST_OPERAND


_SEGMENT_INDEX = {X.X86_REG_DS: 0, X.X86_REG_ES: 1, X.X86_REG_SS: 2}


def absolute_store(insn, data_bases: tuple) -> Optional[tuple[int, int]]:
    """The linear [start, end) a store to a fixed address writes (`mov [counter], eax`), through
    DS, ES or SS based at `data_bases` (DS, ES, SS); None when the address is not fixed (a base
    or index register, FS/GS, a string or stack store)."""
    if insn.id in _STORES_IMPLICITLY or not insn.operands:
        return None
    operand = insn.operands[0]
    mem = operand.mem
    if operand.type != X.X86_OP_MEM or mem.base or mem.index:
        return None
    segment = _SEGMENT_INDEX.get(mem.segment or X.X86_REG_DS)
    if segment is None:
        return None
    start = (data_bases[segment] + mem.disp) & 0xFFFFFFFF
    return start, start + operand.size


class BlockEnd(Enum):
    BRANCH = "branch"              # the last instruction transfers control (or is a callout)
    WINDOW = "before sti/popf"     # the next instruction may set IF: it starts a block of its own
    PAGE = "page boundary"
    LIMIT = "length limit"
    STORE = "after a store"        # a self-checking block ends after each store (may_store)
    UNDECODABLE = "undecodable"    # the next bytes do not decode: #UD when reached
    NO_MEMORY = "no memory"        # the next bytes are not in guest memory: fetch fault when reached


@dataclass
class GuestInstruction:
    insn: object                   # capstone CsInsn (detail mode)
    rule: Rule

    @property
    def address(self) -> int:
        return self.insn.address

    @property
    def size(self) -> int:
        return self.insn.size

    @property
    def end(self) -> int:
        return self.insn.address + self.insn.size

    @property
    def bytes(self) -> bytes:
        insn = self.insn
        return insn.raw if isinstance(insn, Instruction) else bytes(insn.bytes)

    def __str__(self) -> str:
        return f"{self.insn.mnemonic} {self.insn.op_str}".strip()


@dataclass
class GuestBlock:
    address: int                   # the EIP of its first instruction
    instructions: list[GuestInstruction] = field(default_factory=list)
    end: BlockEnd = BlockEnd.LIMIT
    base: int = 0                  # the CS base it was decoded for: its bytes are at base + EIP

    @property
    def linear(self) -> int:
        """The linear address of its first byte."""
        return (self.base + self.address) & 0xFFFFFFFF

    @property
    def next_address(self) -> int:
        """Where execution continues when the block falls through its end."""
        return self.instructions[-1].end if self.instructions else self.address

    @property
    def guest_size(self) -> int:
        return self.next_address - self.address

    @property
    def pages(self) -> set[int]:
        """The linear page numbers this block's bytes are on."""
        start = self.linear
        if not self.instructions:
            return {start // PAGE_SIZE}
        return {page for page in range(start // PAGE_SIZE, (start + self.guest_size - 1) // PAGE_SIZE + 1)}


def store_into_itself(block: GuestBlock, data_bases: tuple) -> Optional[int]:
    """The index of the first instruction of `block` that stores to a fixed address among the
    block's own bytes (absolute_store), None if none does."""
    start, end = block.linear, block.linear + block.guest_size
    for index, instruction in enumerate(block.instructions):
        target = absolute_store(instruction.insn, data_bases) if may_store(instruction.insn) else None
        if target is not None and target[0] < end and start < target[1]:
            return index
    return None


def stores_only_outside(block: GuestBlock, data_bases: tuple) -> bool:
    """Whether every store of `block` goes to a fixed address outside its bytes: running it
    cannot change it."""
    return all(absolute_store(instruction.insn, data_bases) is not None
               for instruction in block.instructions if may_store(instruction.insn)) \
        and store_into_itself(block, data_bases) is None


def _first(instructions: list):
    return instructions[0] if instructions else None


class Decoder:
    """Decodes basic blocks from guest memory. `read_code(address, size)` returns up to `size`
    bytes of guest code at `address` (fewer at the end of memory, none outside it)."""

    def __init__(self, read_code: Callable[[int, int], bytes]) -> None:
        self.read_code = read_code
        self.short_read = False        # the last decode_one failed for lack of fetchable bytes

    def decode_one(self, address: int, base: int = 0) -> Optional[object]:
        """The instruction at EIP `address` (its bytes at linear base + address). Bytes of the
        next page are read only when the instruction needs them (reading guest code through
        paging is an instruction fetch: it marks the page accessed, or faults)."""
        self.short_read = False
        linear = (base + address) & 0xFFFFFFFF
        in_page = min(MAX_INSTRUCTION_LENGTH, PAGE_SIZE - linear % PAGE_SIZE)
        code = self.read_code(linear, in_page)
        if not code:
            return None
        insn = _first(decode_run(code, address, 1))
        if insn is None and len(code) == in_page < MAX_INSTRUCTION_LENGTH:
            code = self.read_code(linear, MAX_INSTRUCTION_LENGTH)
            insn = _first(decode_run(code, address, 1))
            self.short_read = insn is None and len(code) < MAX_INSTRUCTION_LENGTH
        return insn

    def _stream(self, address: int, base: int, limit: int):
        """The instructions from EIP `address` on, as many as `limit` instructions may take up
        to the end of its page, decoded one by one as the block asks: one fetch of their bytes
        for all of them."""
        linear = (base + address) & 0xFFFFFFFF
        code = self.read_code(linear, min(PAGE_SIZE - linear % PAGE_SIZE, (limit + 1) * MAX_INSTRUCTION_LENGTH))
        return decode_stream(code, address) if code else None

    def too_long(self, address: int, base: int = 0) -> bool:
        """Whether bytes that do not decode are an instruction longer than 15 bytes (redundant
        prefixes in front of a valid one): #GP(0) on the CPU and QEMU, not #UD. Capstone
        refuses them; the same instruction with one prefix per group decodes. The CPU fetches
        no further than the 16th byte (the caller looks for a fetch fault there): what follows
        reads as zeros here, it cannot make the instruction shorter."""
        code = self.read_code((base + address) & 0xFFFFFFFF, MAX_INSTRUCTION_LENGTH + 1)
        count = 0
        while count < len(code) and code[count] in PREFIX_GROUPS:
            count += 1
        if count >= MAX_INSTRUCTION_LENGTH:
            return True             # the 16th byte makes it too long, whatever it is
        last = {}
        for byte in code[:count]:
            last.pop(PREFIX_GROUPS[byte], None)
            last[PREFIX_GROUPS[byte]] = byte
        kept = bytes(last.values())
        candidate = (kept + code[count:]).ljust(len(kept) + 2 * MAX_INSTRUCTION_LENGTH, b"\0")
        insn = decode(candidate, address)
        return insn is not None and insn.size - len(kept) + count > MAX_INSTRUCTION_LENGTH

    def instructions_in(self, address: int, end: int):
        """The classified instructions from `address` up to `end` (an engine block's bytes, as
        a block hook reports them), stopping at bytes that do not decode."""
        while address < end:
            block = self.decode_block(address, limit=1)
            if not block.instructions:
                return
            yield block.instructions[0]
            address = block.instructions[0].end

    def decode_block(self, address: int, limit: int = DEFAULT_BLOCK_LIMIT,
                     stop_before: frozenset = frozenset(), base: int = 0,
                     end_after_store: bool = False, data_bases: tuple = (0, 0, 0),
                     again: Optional[GuestBlock] = None) -> GuestBlock:
        """The block at EIP `address` of a code segment based at `base`. `stop_before`:
        addresses (debugger breakpoints) no block may run into; a block ends before one of them
        (falling through to a block that starts there). `end_after_store`: the block checks its
        own bytes at entry, so it ends after an instruction that may store into itself
        (may_store): after any store but one to a fixed address outside the block (through
        DS/ES/SS based at `data_bases`). `again`: a block just decoded from the same bytes (one
        too long for its slot, or found to need the self-check): its instructions are taken as
        they are, only those past it are fetched and decoded (the translator's retries decoded
        every block twice: a third of the decoding of the Linux boot)."""
        known = {instruction.address: instruction for instruction in again.instructions} if again else None
        block = self._decode_block(address, limit, stop_before, base, end_after_store, data_bases, known)
        if end_after_store:
            index = store_into_itself(block, data_bases)
            if index is not None:                    # it stores into the block: ends it
                del block.instructions[index + 1:]
                block.end = BlockEnd.STORE
        return block

    def _decode_block(self, address: int, limit: int, stop_before: frozenset, base: int,
                      end_after_store: bool, data_bases: tuple, known: Optional[dict] = None) -> GuestBlock:
        block = GuestBlock(address, base=base)
        page = (base + address) // PAGE_SIZE
        current = address
        stream = None                  # the instructions of the page from `current` on
        while True:
            instruction = known.get(current) if known else None
            if instruction is not None:
                insn = instruction.insn
                stream = None          # (a stream goes on where the known ones end)
            else:
                insn = next(stream, None) if stream is not None else None
            if insn is None:           # (the first, the page's end, or bytes that stop decoding)
                stream = self._stream(current, base, limit)
                if stream is None:
                    block.end = BlockEnd.NO_MEMORY
                    return block
                insn = next(stream, None)
                if insn is None:       # crosses into the next page, or does not decode
                    stream = None
                    insn = self.decode_one(current, base)
                    if insn is None:
                        # bytes cut short by the end of the code that can be fetched: a fetch fault
                        block.end = BlockEnd.NO_MEMORY if self.short_read else BlockEnd.UNDECODABLE
                        return block
            if insn.id in SETS_IF and block.instructions and limit > 1:
                # An interrupt raised inside this block (an APIC write: an MMIO store that
                # cannot stop the engine) ends the run at the next block entry, the budget's
                # exit: it must come before the guest sets IF, where the run loop can still arm
                # the window site after it, so that the interrupt lands after sti's shadow.
                block.end = BlockEnd.WINDOW
                return block
            if instruction is None:
                instruction = GuestInstruction(insn, classify(insn))
            block.instructions.append(instruction)
            current = instruction.end
            if instruction.rule.ends_block:
                block.end = BlockEnd.BRANCH
                return block
            if limit > 1 and instruction.insn.id == X86_INS_STI:
                continue        # never end a block in sti's interrupt shadow: interrupts are
                                # delivered between blocks (the next instruction may be on the next page)
            if len(block.instructions) >= limit:
                block.end = BlockEnd.LIMIT
                return block
            if end_after_store and may_store(insn) and absolute_store(insn, data_bases) is None:
                block.end = BlockEnd.STORE
                return block
            if (base + current) // PAGE_SIZE != page:
                block.end = BlockEnd.PAGE
                return block
            if current in stop_before:
                block.end = BlockEnd.LIMIT
                return block
