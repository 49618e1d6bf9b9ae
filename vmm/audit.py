"""`vmm audit IMAGE`: the sensitive instructions a guest runs (or can reach) and whether trap-and-emulate could virtualize it."""

# Popek and Goldberg: trap-and-emulate alone virtualizes a machine only if every sensitive
# instruction is privileged (traps when the kernel is deprivileged). Sensitive here means the
# categories PRIVILEGED, SENSITIVE and FAR_TRANSFER of translator/classify.py; whether one traps
# is translator.classify.traps_when_deprivileged, decided there and nowhere else. A hole is a
# sensitive instruction that does not trap.
#
# Dynamic audit (default): the guest runs under bt with --profile, the translated code counting
# each block's executions. An instruction's count is the sum of the executions of every
# translated block holding it (blocks may overlap), including blocks removed during the run
# (eviction, self-modifying code, the flush when the guest starts using time), whose counts the
# cache hands over at removal (TranslationCache.on_remove). A block counts at its entry, so a
# block left early (a fault, an exception, an I/O write that stops the run, a store into a page
# holding code) counts for every instruction in it, and the instructions after the exit point
# are counted again by the block that resumes there: the count is exact up to such early exits
# (an instruction that never ran can show 1, e.g. the hlt after the exit port). The guest's COM1 output is
# kept in a buffer (only its size is reported); COM1 input comes from stdin as under `vmm run`.
#
# Static audit (--static): the image is loaded, never run; recursive descent from the entry
# with the translator's Decoder follows fall-throughs, direct jmp/jcc/loop/call targets (and
# direct far jmp/call offsets, assuming flat code segments), and the return site after every
# call; hlt, int n and other callouts fall through. ret, indirect jmp/call, far jumps/calls
# through memory, retf and iret are not followed (counted), nor code reached only through the
# IDT. Decoding stops at ud2, at bytes that do not decode, and outside the image's loaded
# segments (a target there, such as the `jmp 0x10:0` of a test that expects #GP, is counted).

from __future__ import annotations

import argparse
import collections
import json
import sys
from dataclasses import dataclass, field
from typing import Optional

from capstone import x86_const as X

from translator.classify import Category, Procedure, Rule, classify, traps_when_deprivileged
from translator.decoder import Decoder, GuestInstruction
from vmm.console import StdioConsole

SENSITIVE_CATEGORIES = (Category.PRIVILEGED, Category.SENSITIVE, Category.FAR_TRANSFER)
VERDICT = "virtualizable by pure trap-and-emulate"
COUNT_NOTE = ("count: executions of the translated blocks holding the instruction; a block left early "
              "(a fault, an exception, an I/O stop, a store into a code page) still counts for all its "
              "instructions, so those after the exit point may be counted again by the block resuming there")
TRAPS_NOTE = "traps: whether it traps to the monitor when the kernel runs deprivileged at ring 3"
STATIC_NOTE = "static: code reachable from the entry by direct control flow, never run; count '-'"


@dataclass
class Finding:
    """One sensitive instruction: its address and bytes, and what the classification says."""
    address: int
    raw: bytes
    text: str
    form: str                  # mnemonic, or the operand form for segment-register instructions
    category: Category
    handling: str
    procedure: Procedure
    traps: bool
    count: Optional[int] = None

    def as_json(self) -> dict:
        return {"address": self.address, "bytes": self.raw.hex(), "instruction": self.text, "form": self.form,
                "class": self.category.value, "handling": self.handling, "procedure": self.procedure.value,
                "traps_when_deprivileged": self.traps, "count": self.count}


@dataclass
class Audit:
    image: str
    kind: str                                   # "dynamic" or "static"
    findings: list[Finding] = field(default_factory=list)
    run: dict = field(default_factory=dict)     # dynamic: how the guest's run ended
    scan: dict = field(default_factory=dict)    # static: what the descent covered

    @property
    def holes(self) -> list[Finding]:
        return [f for f in self.findings if not f.traps]

    def hole_forms(self) -> list[str]:
        """Distinct hole forms, in address order."""
        return list(dict.fromkeys(f.form for f in self.holes))

    @property
    def virtualizable(self) -> bool:
        return not self.holes

    def verdict(self) -> str:
        holes = self.holes
        if not holes:
            return f"{VERDICT}: yes (0 holes)"
        return f"{VERDICT}: no ({len(holes)} hole{'s' if len(holes) != 1 else ''}: {', '.join(self.hole_forms())})"

    def summary(self) -> dict:
        return {"sensitive_instructions": len(self.findings), "holes": len(self.holes),
                "trapping": len(self.findings) - len(self.holes), "hole_forms": self.hole_forms(),
                "virtualizable": self.virtualizable, "verdict": self.verdict()}

    def as_json(self) -> dict:
        out = {"image": self.image, "audit": self.kind}
        if self.run:
            out["run"] = self.run
        if self.scan:
            out["scan"] = self.scan
        out["instructions"] = [f.as_json() for f in self.findings]
        out["summary"] = self.summary()
        out["notes"] = [TRAPS_NOTE, COUNT_NOTE if self.kind == "dynamic" else STATIC_NOTE]
        return out


def is_sensitive(rule: Rule) -> bool:
    return rule.category in SENSITIVE_CATEGORIES


def instruction_form(instruction: GuestInstruction) -> str:
    """The name a hole goes by in the verdict: the mnemonic, except for the segment-register
    forms (mov/push/pop of ds, cs, ... differ only by operand) and the far transfers."""
    procedure, mnemonic = instruction.rule.procedure, instruction.insn.mnemonic
    if procedure is Procedure.READ_SEGMENT_REGISTER:
        return "mov r/m,Sreg"
    if procedure is Procedure.LOAD_SEGMENT_REGISTER:    # SS apart: its loads trap when deprivileged
        loads_ss = instruction.insn.operands[0].reg == X.X86_REG_SS
        return f"{mnemonic} {'ss' if loads_ss else 'Sreg'}" + (",r/m" if mnemonic == "mov" else "")
    if procedure is Procedure.PUSH_SEGMENT_REGISTER:
        return "push Sreg"
    if procedure is Procedure.FAR_JMP:
        return "ljmp"
    if procedure is Procedure.FAR_CALL:
        return "lcall"
    return mnemonic


def _finding(instruction: GuestInstruction, handling: str, count: Optional[int]) -> Finding:
    return Finding(instruction.address, instruction.bytes, str(instruction), instruction_form(instruction),
                   instruction.rule.category, handling, instruction.rule.procedure,
                   traps_when_deprivileged(instruction), count)


def _sorted(findings) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.address, f.raw))


# -- dynamic ----------------------------------------------------------------------------------------

class CapturedConsole(StdioConsole):
    """COM1 for an audited guest: output into a buffer (never mixed into the audit), input from
    stdin as under `vmm run`."""

    def __init__(self) -> None:
        super().__init__()
        self.output = bytearray()

    def write(self, data: bytes) -> None:
        self.output += data


class ExecutionCounts:
    """Per-instruction execution counts from the translated blocks' own counters: every block
    removed during the run (TranslationCache.on_remove), then every block still cached."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()    # (address, bytes) -> executions
        self.seen: dict[tuple[int, bytes], tuple[GuestInstruction, str]] = {}

    def credit(self, block, executions: int) -> None:
        if not executions:
            return
        by_address = {i.address: i for i in block.guest.instructions}
        # rewrites: every instruction the translation did not copy as it is, exactly those that
        # were translated (a callout that had to end the block early leaves the rest out)
        for rewrite in block.translation.rewrites:
            instruction = by_address.get(rewrite.guest_eip)
            if instruction is None or not is_sensitive(instruction.rule):
                continue
            key = (instruction.address, instruction.bytes)
            self.counts[key] += executions
            self.seen.setdefault(key, (instruction, rewrite.handling.value))

    def findings(self) -> list[Finding]:
        return _sorted(_finding(instruction, handling, self.counts[key])
                       for key, (instruction, handling) in self.seen.items())


def dynamic_audit(config) -> Audit:
    """Run the guest under bt with profiling; VmmError/OSError propagate (one line, by the caller)."""
    from vmm.builder import build_machine

    console = CapturedConsole()
    vm, image = build_machine(config, console)
    cache = vm.mode.cache
    counts = ExecutionCounts()
    cache.on_remove = counts.credit
    result = vm.run()
    for block in cache.blocks():
        counts.credit(block, cache.executions(block) or 0)
    evicted = cache.counters.get("evictions", 0)
    invalidated = cache.counters.get("invalidations", 0)
    run = {"mode": "bt", "exit": result.reason.value, "status": result.exit_status, "message": result.message,
           "console_bytes": len(console.output), "blocks_removed": evicted + invalidated,
           "blocks_evicted": evicted, "executions_of_removed_blocks": cache.removed_executions}
    return Audit(config.image, "dynamic", counts.findings(), run=run)


# -- static -----------------------------------------------------------------------------------------

_UNFOLLOWED_STOPS = {Procedure.FAR_RET, Procedure.IRET}


def _successors(instruction: GuestInstruction) -> tuple[list[int], bool, bool]:
    """(targets followed, falls through, an indirect transfer not followed)."""
    insn, rule = instruction.insn, instruction.rule
    category, procedure, opcode = rule.category, rule.procedure, insn.opcode[0]
    immediates = [op.imm for op in insn.operands if op.type == X.X86_OP_IMM]
    if category is Category.DIRECT_BRANCH:
        target = immediates[-1] & 0xFFFFFFFF
        unconditional_jump = procedure is Procedure.BRANCH and insn.id == X.X86_INS_JMP
        return [target], not unconditional_jump, False
    if category is Category.INDIRECT_BRANCH:
        return [], procedure is Procedure.INDIRECT_CALL, True
    if category is Category.FAR_TRANSFER:
        if procedure is Procedure.FAR_JMP:
            return ([immediates[-1] & 0xFFFFFFFF], False, False) if opcode == 0xEA else ([], False, True)
        if procedure is Procedure.FAR_CALL:
            return ([immediates[-1] & 0xFFFFFFFF], True, False) if opcode == 0x9A else ([], True, True)
        if procedure in _UNFOLLOWED_STOPS or insn.id in (X.X86_INS_SYSEXIT, X.X86_INS_SYSRET):
            return [], False, True
        return [], True, False          # int n, int3, into, sysenter, syscall: back after the call
    if insn.id == X.X86_INS_UD2:
        return [], False, False
    return [], True, False              # everything else, hlt and the other callouts included


def static_audit(config) -> Audit:
    """Load the image (no machine is built, no guest code runs) and descend from the entry."""
    from vmm.engine import Engine
    from vmm.loaders import load_image, multiboot
    from vmm.memory import PhysicalMemory

    config.validate()
    memory = PhysicalMemory(Engine(), config.mem_mib)
    image = load_image(config.image, memory, config.load_address, reserved=(multiboot.RESERVED_AREA,))

    def in_image(address: int) -> bool:
        return any(base <= address < base + size for base, size in image.segments)

    decoder = Decoder(memory.read_code)
    visited: set[int] = set()
    findings: list[Finding] = []
    work = [image.entry]
    unfollowed = undecodable = outside = 0
    while work:
        address = work.pop()
        while address not in visited:
            if not in_image(address):      # e.g. `jmp 0x10:0`: not code the image brought
                outside += 1
                break
            insn = decoder.decode_one(address)
            if insn is None:
                undecodable += 1
                break
            visited.add(address)
            instruction = GuestInstruction(insn, classify(insn))
            if is_sensitive(instruction.rule):
                findings.append(_finding(instruction, instruction.rule.handling.value, None))
            targets, falls_through, indirect = _successors(instruction)
            unfollowed += indirect
            work.extend(target for target in targets if target not in visited)
            if not falls_through:
                break
            address = instruction.end
    scan = {"entry": image.entry, "image_kind": image.kind, "instructions_reached": len(visited),
            "indirect_transfers_not_followed": unfollowed, "undecodable_stops": undecodable,
            "targets_outside_image": outside}
    return Audit(config.image, "static", _sorted(findings), scan=scan)


# -- output -----------------------------------------------------------------------------------------

def render_text(audit: Audit) -> str:
    lines = []
    if audit.kind == "dynamic":
        run = audit.run
        lines.append(f"audit of {audit.image}: run under bt, {run['exit']} (status {run['status']}): {run['message']}")
        size = run["console_bytes"]
        lines.append(f"guest console output (COM1): {size} byte{'s' if size != 1 else ''} captured, not shown")
    else:
        scan = audit.scan
        lines.append(f"static audit of {audit.image}: {scan['instructions_reached']} instructions reachable from "
                     f"the entry {scan['entry']:#010x}, not run")
        lines.append(f"indirect transfers not followed: {scan['indirect_transfers_not_followed']} "
                     f"(ret, jmp/call through registers or memory, retf, iret; nor code reached only through the IDT); "
                     f"direct targets outside the image: {scan['targets_outside_image']}")
    lines.append("")
    headers = ["address", "instruction", "class", "handling", "traps", "count"]
    rows = [[f"{f.address:#010x}", f.text, f.category.value, f.handling, "yes" if f.traps else "no",
             "-" if f.count is None else str(f.count)] for f in audit.findings]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(headers)]
    for row in [headers] + rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths)] + [row[-1].rjust(widths[-1])]
        lines.append("  ".join(cells).rstrip())
    if not rows:
        lines.append("(no sensitive instructions)")
    lines.append(TRAPS_NOTE)
    lines.append(COUNT_NOTE if audit.kind == "dynamic" else STATIC_NOTE)
    lines.append("")
    summary = audit.summary()
    what = "executed" if audit.kind == "dynamic" else "reachable"
    lines.append(f"{summary['sensitive_instructions']} distinct sensitive instructions {what}: "
                 f"{summary['trapping']} trap when deprivileged, {summary['holes']} holes")
    lines.append(audit.verdict())
    return "\n".join(lines) + "\n"


# -- command line -----------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    """`vmm audit`'s own options (the guest options come from cli.add_guest_arguments)."""
    parser.add_argument("--static", action="store_true",
                        help="do not run the guest: scan the code reachable from the entry by direct control "
                             "flow (counts shown as '-')")
    parser.add_argument("--json", action="store_true", help="print the audit as JSON")
    parser.add_argument("--out", default=None, metavar="FILE", help="write the audit to FILE instead of stdout")


AUDIT_EPILOG = (
    "The dynamic audit runs the guest under bt with per-block execution counters; an instruction's "
    "count is the executions of the translated blocks holding it, including blocks evicted or "
    "invalidated during the run. A block left early (a fault, an exception, an I/O stop, a store "
    "into a code page) still counts for all its instructions, so those after the exit point can "
    "be counted twice. The guest's COM1 output is captured (its size is reported), never printed; "
    "COM1 input comes from stdin. The audit exits 0 whenever it reports, whatever the guest's "
    "ending (a triple fault included); a bad image is one line on stderr and status 1.")


def run(args: argparse.Namespace, config) -> int:
    """Audit as the options say; returns the process status. Errors propagate to the caller."""
    audit = static_audit(config) if args.static else dynamic_audit(config)
    text = json.dumps(audit.as_json(), indent=2) + "\n" if args.json else render_text(audit)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
    return 130 if audit.run.get("exit") == "interrupted" else 0
