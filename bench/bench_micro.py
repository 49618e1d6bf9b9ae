"""Microbenchmarks after Adams and Agesen (ASPLOS 2006): what one guest operation costs, bt against direct.

    python bench/bench_micro.py [--quick] [--scale 1.0] [--keep DIR]

Each microbenchmark is a guest (bench/guests/micro.S, built at run time into a temporary
directory with gcc -m32 and ld, as tools/build_samples.py builds the samples) that repeats ONE
operation N times in a loop; a baseline guest runs the same loop without it, and again with
N = 1 for the run's fixed cost (start-up, translation). Every guest runs once under each mode
(one `vmm run --report` each); everything printed comes from those reports:

  cost       wall time per operation in guest-instruction equivalents: (op loop's time per
             round - baseline's time per round) / baseline's time per guest instruction, the
             fixed cost taken off and all under the SAME mode (pgfault: its baseline pgmapped
             holds an invlpg, so the unit is loop0pg's time per instruction). The timer
             interrupt is measured against its spin loop: (run time - fixed cost - spin
             instructions retired x the spin baseline's time per instruction) / interrupts
             delivered.
  bt/direct  bt's wall time per operation / direct's.
  exits/op   monitor exits per operation: counters.exits plus (bt) counters.cache_exits, the
             baseline's taken off (its N = 1 run's, plus its exits per round times the rounds:
             none unless the baseline loop itself exits, as pgmapped's invlpg does under bt),
             divided by N (the timer: by the interrupts delivered). Under bt one return to the
             monitor can be in both counters: a translation-cache exit that goes on to the run
             loop (a callout, a guest exception, a budget exit that ends in an event) is
             counted in each.
  loop/op    the same with counters.exits alone: exits the run loop dispatched.
  by reason  those exits per operation by reason, each run-loop reason with the wall time per
             operation the monitor spent on it (the report's exit_seconds, taken off and
             divided as the counts are): where an operation's time outside the guest goes.

Operations: int 0x80 from ring 3 to a DPL-3 interrupt gate whose handler is `iretd` (its
baseline loop runs in ring 3 too); `in al, dx` from the unassigned port 0x80; cli+sti;
pushfd+popfd; call+ret of an empty function; `div ecx` with ECX = 0, whose #DE handler adds 2 to
the saved EIP; IRQ0 from the PIT (mode 2, divisor 20: every 1680 guest instructions on the
virtual clock) with an EOI+iretd handler while the guest spins with IF = 1. All but the system
call run at ring 0.

Paging operations (issue 7), with paging on: the guest identity-maps 0-4 MiB (kernel, stack,
tables) in 4 KiB pages under two page directories that share that mapping, PD_A (in use; it
also maps a test region through table PT_TEST) and PD_B; their loop is loop0's plus `xor eax,
ebp`, which alternates EAX between the two values the operation uses (baseline loop0pg, the 5
instructions alone, paging on). One round of each:
  pgfault    `mov ecx, [page]` on a page not present: #PF; the guest's handler (push, mov from
             CR2, cmp, jne, the PTE store, pop, add esp, iretd) maps the page and returns; the load
             runs again and hits; then the loop unmaps it: a PTE store of 0 and `invlpg`. Its
             baseline pgmapped runs the same minus the fault: the load hits the mapped page, the
             PTE store writes the present entry again, `invlpg`; so cost = the fault's delivery,
             the handler, its return and the load's second walk.
  ptemod     `mov [pte], eax`: one store to a PTE of PT_TEST, a live table (the CPU walked it
             before the loop), alternately present and not present, for a page never touched:
             no invlpg (no TLB entry can be stale), so the row is the PTE write alone (under
             shadow paging, the trace of a write to a write-protected guest table).
  cr3        `mov cr3, eax`, alternately PD_B and PD_A: an address-space switch, the TLB flush
             and the walks after it included.
When the monitor's CLI has `vmm run --paging` (shadow, nested), these rows run once per scheme
in PAGING_SCHEMES, labelled with it; direct, the bare machine (no --paging), runs them once, and
that run is every scheme's reference. Without the option they run once, each mode under its own
paging. Where their operation goes to the monitor (bt and trap: invlpg and mov cr3 are callouts
or traps; shadow paging, bt's and trap's default: page-table writes are traced) they run fewer
rounds (Guest.slow_under, slow_iterations).

A run that does not end with the guest's exit 0 (a mode that does not support the guest:
report stop reason `unsupported`; a combination the CLI refuses, such as vt with shadow paging:
no report; trap: a guest its holes sent astray) leaves its cells "n/a (reason)" ("went wrong
(a hole)" for trap), and the reports' messages are listed under the tables. Absolute times move with the machine and are only an extra column; nothing here is
asserted.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.samples import build_samples                    # noqa: E402  (gcc/ld helpers, linker script)

GUEST_SOURCE = ROOT / "bench" / "guests" / "micro.S"
# What every micro guest links besides micro.S, as the samples build them: the Multiboot
# header, crt0 (GDT, stack, kmain), the UART runtime, check.S (IDT, panic handlers), user.S, pic.S.
SHARED = [build_samples.MB_HEADER, build_samples.CRT0, build_samples.RUNTIME, build_samples.CHECK,
          build_samples.USER, build_samples.PIC]
MODES = ("direct", "bt", "trap", "vt")
DETAIL_MODES = ("direct", "bt")     # the detailed table; all four meet in the comparison
# trap runs without its hole watch (a Python call per run of a block holding a hole, as pushfd's
# loop does: not part of trap-and-emulate's own cost; bench_untranslated.py measures the watch);
# its cli/sti guest traps twice a round (tens of microseconds), so its guests run N / 100
MODE_SCALE = {"trap": 0.01}
PIT_DIVISOR = 20                 # IRQ0 every 20 PIT ticks = 1680 guest instructions (virtual clock)
TRAP_TIMEOUT = 30                  # s: trap, a guest a hole sent astray must still end
QUICK = 0.01                     # --quick: N / 100 (the baselines: N / 10, to stay well above their fixed cost)
QUICK_BASELINE = 0.1
# `vmm run --paging SCHEME`: when the monitor's CLI has the option, the paging guests run once
# per scheme here (rows "pgfault shadow", ...); without it, once under each mode's own paging
PAGING_SCHEMES = ("shadow", "nested")
# Modes without memory virtualization: the guest's paging runs on the engine's own MMU (the bare
# machine), so `vmm run` takes no --paging there; their one run is the reference of every scheme.
BARE_MODES = ("direct",)
# The scheme each mode's paging is when --paging is not given (issue 7: shadow for bt and trap,
# nested for vt; direct: the engine walks the guest's tables itself, as nested paging does)
DEFAULT_PAGING = {"direct": "nested", "bt": "shadow", "trap": "shadow", "vt": "nested"}


@dataclass
class Guest:
    name: str
    defines: tuple[str, ...]     # -D for micro.S (ITERATIONS is added)
    iterations: int              # N of the full run (--quick and --scale multiply it)
    per_round: int = 0           # baselines: guest instructions per loop round
    paging: bool = False         # paging on: runs once per paging scheme
    # Where the operation goes to the monitor, tens of microseconds a round where it is native
    # elsewhere (nanoseconds): modes (bt and trap: invlpg and mov cr3 are callouts or traps) and
    # paging schemes (shadow: page-table writes are traced). The guest runs slow_iterations
    # there, and trap's MODE_SCALE does not apply on top.
    slow_under: tuple[str, ...] = ()
    slow_iterations: int = 0

    def slow(self, mode: str, scheme: Optional[str]) -> bool:
        """Runs slow_iterations under `mode` and `scheme` (None: the mode's own paging)."""
        paging = (scheme or DEFAULT_PAGING[mode]) if self.paging else None
        return bool(self.slow_iterations) and (mode in self.slow_under or paging in self.slow_under)

    def rounds(self, mode: str, scheme: Optional[str]) -> int:
        """N of the full run under `mode` and `scheme`, before --quick and --scale."""
        return self.slow_iterations if self.slow(mode, scheme) else self.iterations


@dataclass
class Micro:
    name: str
    guest: Guest
    baseline: str                # the baseline guest's name
    goal: str = ""               # what the issue asks of bt's exits per operation
    unit: str = ""               # the baseline whose time per guest instruction is the cost's unit
                                 # (default: `baseline`)

    @property
    def unit_baseline(self) -> str:
        return self.unit or self.baseline


BASELINES = {
    "loop0": Guest("loop0", ("OP_NONE",), 200_000_000, per_round=4),
    "loop3": Guest("loop3", ("OP_NONE", "RING3"), 200_000_000, per_round=4),
    "spin": Guest("spin", ("SPIN_NONE",), 20_000_000, per_round=3),
    "loop0pg": Guest("loop0pg", ("OP_NONE", "PAGING"), 200_000_000, per_round=5, paging=True),
    "pgmapped": Guest("pgmapped", ("OP_PGMAPPED",), 4_000_000, per_round=8, paging=True,
                      slow_under=("bt", "trap", "shadow"), slow_iterations=5_000),
}

MICROS = [
    Micro("syscall", Guest("syscall", ("OP_SYSCALL", "RING3"), 20_000), "loop3", "<= 2"),
    Micro("in", Guest("in", ("OP_IN",), 200_000), "loop0"),
    Micro("cli/sti", Guest("cli_sti", ("OP_CLI_STI",), 40_000_000), "loop0", "0"),
    Micro("pushf/popf", Guest("pushf_popf", ("OP_PUSHF_POPF",), 40_000_000), "loop0", "0"),
    Micro("call/ret", Guest("call_ret", ("OP_CALL_RET",), 40_000_000), "loop0"),
    Micro("divide", Guest("divide", ("OP_DIVIDE",), 20_000), "loop0"),
    Micro("timer", Guest("timer", ("SPIN_TIMER", f"PIT_DIVISOR={PIT_DIVISOR}"), 10_000), "spin"),
    Micro("pgfault", Guest("pgfault", ("OP_PGFAULT",), 20_000, paging=True, slow_under=("bt", "trap", "shadow"),
                           slow_iterations=2_000), "pgmapped", unit="loop0pg"),
    Micro("ptemod", Guest("ptemod", ("OP_PTEMOD",), 40_000_000, paging=True, slow_under=("shadow",),
                          slow_iterations=10_000), "loop0pg"),
    Micro("cr3", Guest("cr3", ("OP_CR3",), 1_000_000, paging=True, slow_under=("bt", "trap"),
                       slow_iterations=20_000), "loop0pg"),
]


# --------------------------------------------------------------------------- building

def build_shared(directory: Path) -> list[Path]:
    objects = []
    for source in SHARED:
        obj = directory / f"shared-{Path(source).stem}.o"
        build_samples.assemble(build_samples.SRC_DIR / source, obj)
        objects.append(obj)
    return objects


def build(name: str, defines: tuple[str, ...], iterations: int, shared: list[Path], directory: Path) -> Path:
    obj = directory / f"{name}.o"
    flags = [f"-D{define}" for define in (*defines, f"ITERATIONS={iterations}")]
    subprocess.run([build_samples._tool("gcc"), "-m32", "-c", "-nostdinc", "-I", str(build_samples.INCLUDE_DIR),
                    *flags, "-o", str(obj), str(GUEST_SOURCE)], check=True, cwd=ROOT)
    image = directory / f"{name}.elf"
    build_samples.link([*shared, obj], image)
    return image


# --------------------------------------------------------------------------- running

@dataclass
class Run:
    report: dict
    iterations: int

    @property
    def wall(self) -> float:
        return self.report["wall_time_s"]

    def exit_reasons(self) -> dict[str, int]:
        """Exits by reason: the run loop's, and (bt) the translation cache's as `cache <kind>`."""
        counters = self.report["counters"]
        reasons = dict(counters["exits"])
        reasons.update({f"cache {kind}": n for kind, n in counters.get("cache_exits", {}).items()})
        return reasons

    def vt_exits(self) -> dict[str, int]:
        """All VM exits (vt) as one count."""
        return {"vt": sum(self.report["counters"].get("vt_exits", {}).values())}

    def exit_seconds(self) -> dict[str, float]:
        """The monitor's wall seconds on its exits, by reason (the report's exit_seconds; none
        from a monitor whose report lacks them)."""
        return dict(self.report.get("exit_seconds", {}))


@dataclass
class Stopped:
    """A run that did not end with the guest's exit 0: every cell that needs it reads n/a."""
    reason: str                  # the report's stop reason (`unsupported`, ...), `hole` (trap), `no report`
    message: str

    @property
    def cell(self) -> str:
        return "went wrong (a hole)" if self.reason == "hole" else f"n/a ({self.reason})"


def run_vmm(image: Path, mode: str, iterations: int, directory: Path, scheme: Optional[str] = None) -> Run | Stopped:
    """The run's report, or why there is none to measure: a mode that stopped the guest (not
    supported yet, e.g. paging under bt and trap before shadow paging), or (trap) a guest its
    holes got wrong."""
    report = directory / f"{image.stem}.{mode}{'' if scheme is None else '.' + scheme}.json"
    # trap: a guest a hole sends astray must still end: a wall-clock bound (an instruction bound
    # would make the engine count every instruction, and slow what it measures)
    bound = ["--timeout", str(TRAP_TIMEOUT), "--no-hole-watch"] if mode == "trap" else []
    paging = [] if scheme is None else ["--paging", scheme]
    report.unlink(missing_ok=True)              # --keep DIR from an earlier run
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", str(image), "--mode", mode, "--report", str(report),
                           *bound, *paging], capture_output=True, cwd=ROOT)
    if not report.exists():
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        return Stopped("no report", lines[-1] if lines else f"exit status {proc.returncode}")
    result = json.loads(report.read_text())
    if result["exit"]["reason"] != "debug_exit" or result["exit"]["guest_value"] != 0:
        reason = result["exit"]["reason"]
        if reason == "debug_exit":
            reason = f"guest exit {result['exit']['guest_value']:#x}"
        return Stopped("hole" if mode == "trap" and reason != "unsupported" else reason, result["exit"]["message"])
    return Run(result, iterations)


def cli_paging_schemes() -> tuple[Optional[str], ...]:
    """PAGING_SCHEMES if `vmm run` takes --paging, else (None,): the paging guests run once,
    under each mode's own paging."""
    usage = subprocess.run([sys.executable, "-m", "vmm", "run", "--help"], capture_output=True, cwd=ROOT)
    return PAGING_SCHEMES if b"--paging" in usage.stdout else (None,)


def schemes_of(guest: Guest, schemes: tuple[Optional[str], ...], mode: Optional[str] = None) -> tuple[Optional[str], ...]:
    """The paging schemes `guest` runs under (None: no --paging); with `mode`, those `mode` runs."""
    return schemes if guest.paging and mode not in BARE_MODES else (None,)


def run_scheme(mode: str, scheme: Optional[str]) -> Optional[str]:
    """The scheme of the run that stands for `scheme` under `mode`: a bare mode's one run."""
    return None if mode in BARE_MODES else scheme


@dataclass
class Baseline:
    fixed: float                 # s: the N = 1 run
    per_round: float             # s per loop round, fixed cost off
    per_instruction: float       # s per guest instruction
    fixed_exits: dict[str, float]   # by reason (Run.exit_reasons): the run's own, rounds off
    round_exits: dict[str, float]   # by reason, per loop round: 0 unless the loop itself exits
    fixed_vt: dict[str, float]      # the same for VM exits (Run.vt_exits)
    round_vt: dict[str, float]
    fixed_seconds: dict[str, float]  # the same for the seconds spent on exits (Run.exit_seconds)
    round_seconds: dict[str, float]
    run: Run                     # the N run


def split_counts(full: dict[str, int], once: dict[str, int], rounds_full: int,
                 rounds_once: int) -> tuple[dict[str, float], dict[str, float]]:
    """Counts of an N run and an N = 1 run -> (fixed part, part per round), by key."""
    keys = full.keys() | once.keys()
    per_round = {k: (full.get(k, 0) - once.get(k, 0)) / max(1, rounds_full - rounds_once) for k in keys}
    return {k: once.get(k, 0) - per_round[k] * rounds_once for k in keys}, per_round


def net_counts(op: dict[str, int], fixed: dict[str, float], per_round: dict[str, float], rounds: int,
               operations: int) -> dict[str, float]:
    """An operation run's counts, the baseline's fixed and per-round parts taken off, per operation."""
    return {k: (op.get(k, 0) - fixed.get(k, 0) - per_round.get(k, 0) * rounds) / operations
            for k in op.keys() | fixed.keys()}


def baseline(guest: Guest, full: Run | Stopped, once: Run | Stopped) -> Baseline | Stopped:
    for run in (full, once):
        if isinstance(run, Stopped):
            return run
    per_round = (full.wall - once.wall) / max(1, full.iterations - once.iterations)
    if per_round <= 0:
        # The whole loop ran no longer than one round (the machine's noise won): a cost measured
        # against it would be negative or infinite, so every cell that needs it reads n/a.
        return Stopped("baseline not timed", f"{guest.name}: {full.iterations} rounds took {full.wall:.3f} s, "
                                             f"one took {once.wall:.3f} s")
    fixed_exits, round_exits = split_counts(full.exit_reasons(), once.exit_reasons(), full.iterations, once.iterations)
    fixed_vt, round_vt = split_counts(full.vt_exits(), once.vt_exits(), full.iterations, once.iterations)
    fixed_seconds, round_seconds = split_counts(full.exit_seconds(), once.exit_seconds(), full.iterations,
                                                once.iterations)
    return Baseline(once.wall, per_round, per_round / guest.per_round, fixed_exits, round_exits, fixed_vt, round_vt,
                    fixed_seconds, round_seconds,
                    full)


def baselines_of(runs: dict, modes: tuple[str, ...], schemes: tuple[Optional[str], ...]) -> dict:
    """(baseline name, scheme, mode) -> Baseline, or the Stopped run that left it out."""
    return {(name, scheme, mode): baseline(guest, runs[name, run_scheme(mode, scheme), mode],
                                           runs[f"{name}-once", run_scheme(mode, scheme), mode])
            for name, guest in BASELINES.items() for scheme in schemes_of(guest, schemes) for mode in modes}


@dataclass
class Measure:
    seconds: float               # wall time per operation
    cost: float                  # in the unit baseline's guest-instruction equivalents
    exits: float                 # per operation: counters.exits + cache_exits
    loop_exits: float            # per operation: counters.exits
    reasons: dict[str, float]    # exits per operation by reason
    vt_exits: float              # per operation: VM exits (vt)
    operations: int              # N, or the interrupts delivered
    run: Run
    base: Baseline
    note: str = ""
    exit_seconds: dict[str, float] = None    # per operation: the monitor's seconds on each exit reason


def measure(micro: Micro, op: Run, base: Baseline, unit: Baseline) -> Measure:
    note = ""
    rounds = op.iterations                      # of the baseline's loop
    if micro.name == "timer":
        operations = sum(op.report["counters"]["external_interrupts"].values())
        rounds = op.report["registers"]["esi"]
        spin = rounds * BASELINES[micro.baseline].per_round
        per_operation = (op.wall - base.fixed - spin * base.per_instruction) / operations
        clock = op.report["counters"]["clock"]
        retired = clock["cycles"] - clock["idle_cycles"]
        note = (f"{operations} interrupts delivered, {spin / operations:.0f} spin-loop + "
                f"{(retired - spin) / operations:.1f} other guest instructions retired per interrupt")
    else:
        operations = op.iterations
        per_operation = (op.wall - base.fixed) / op.iterations - base.per_round
    reasons = net_counts(op.exit_reasons(), base.fixed_exits, base.round_exits, rounds, operations)
    vt = net_counts(op.vt_exits(), base.fixed_vt, base.round_vt, rounds, operations)["vt"]
    seconds = net_counts(op.exit_seconds(), base.fixed_seconds, base.round_seconds, rounds, operations)
    return Measure(per_operation, per_operation / unit.per_instruction, sum(reasons.values()),
                   sum(n for reason, n in reasons.items() if not reason.startswith("cache ")), reasons, vt,
                   operations, op, base, note, seconds)


@dataclass
class Row:
    """One line of the tables: a microbenchmark, under one paging scheme (None: the mode's own)."""
    micro: Micro
    scheme: Optional[str]

    @property
    def label(self) -> str:
        return self.micro.name if self.scheme is None else f"{self.micro.name} {self.scheme}"


def measures_of(rows: list[Row], runs: dict, baselines: dict, modes: tuple[str, ...]) -> dict:
    """(row label, mode) -> Measure, or the Stopped run (the operation's, its baseline's or its
    unit's) that left it out."""
    measures = {}
    for row in rows:
        micro = row.micro
        for mode in modes:
            op = runs[micro.guest.name, run_scheme(mode, row.scheme), mode]
            base = baselines[micro.baseline, row.scheme, mode]
            unit = baselines[micro.unit_baseline, row.scheme, mode]
            stopped = next((item for item in (op, base, unit) if isinstance(item, Stopped)), None)
            measures[row.label, mode] = stopped or measure(micro, op, base, unit)
    return measures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--quick", action="store_true", help=f"N / {round(1 / QUICK)} (baselines N / {round(1 / QUICK_BASELINE)}): a smoke test, a few seconds")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every guest's N")
    parser.add_argument("--keep", metavar="DIR", help="build and write the reports into DIR, and keep them")
    args = parser.parse_args(argv)
    scale = args.scale * (QUICK if args.quick else 1.0)
    baseline_scale = args.scale * (QUICK_BASELINE if args.quick else 1.0)
    started = time.perf_counter()
    schemes = cli_paging_schemes()
    with tempfile.TemporaryDirectory(prefix="bench_micro-") as scratch:
        directory = Path(args.keep) if args.keep else Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        shared = build_shared(directory)
        runs: dict[tuple[str, Optional[str], str], Run | Stopped] = {}
        # (name, guest, factor on N, at least): the N = 1 runs have factor 0
        builds = [(guest.name, guest, baseline_scale, 2) for guest in BASELINES.values()]
        builds += [(micro.guest.name, micro.guest, scale, 1) for micro in MICROS]
        builds += [(f"{guest.name}-once", guest, 0, 1) for guest in BASELINES.values()]
        images: dict[str, Path] = {}                # one build per guest and N
        for name, guest, factor, least in builds:
            for mode in MODES:
                for scheme in schemes_of(guest, schemes, mode):
                    iterations = max(least, int(guest.rounds(mode, scheme) * factor))
                    if factor and not guest.slow(mode, scheme):     # slow_iterations fit trap already
                        iterations = max(1, int(iterations * MODE_SCALE.get(mode, 1)))
                    scaled = iterations
                    stem = f"{name}-{scaled}"
                    if stem not in images:
                        images[stem] = build(stem, guest.defines, scaled, shared, directory)
                    runs[name, scheme, mode] = run_vmm(images[stem], mode, scaled, directory, scheme)
        rows = [Row(micro, scheme) for micro in MICROS for scheme in schemes_of(micro.guest, schemes)]
        report(runs, rows, schemes)
        compare_modes(runs, rows, schemes)
        list_stopped(runs)
    print(f"\nwhole benchmark: {time.perf_counter() - started:.1f} s")
    return 0


def rounds_text(direct: Optional[int], bt: Optional[int]) -> str:
    """N of direct's and bt's runs: one number when they agree, `direct/bt` when not (shadow paging)."""
    if direct is None or bt is None:
        return str(direct or bt or "n/a")
    return str(direct) if direct == bt else f"{direct}/{bt}"


def na(value, text) -> str:
    """`text` of a Measure or Baseline, n/a for a Stopped one."""
    return "n/a" if isinstance(value, Stopped) else text(value)


def report(runs: dict, rows: list[Row], schemes: tuple[Optional[str], ...]) -> None:
    """The detailed table, bt against direct."""
    baselines = baselines_of(runs, DETAIL_MODES, schemes)
    base_rows = [(name, scheme) for name, guest in BASELINES.items() for scheme in schemes_of(guest, schemes)]
    width = max(9, *(len(name if scheme is None else f"{name} {scheme}") for name, scheme in base_rows))
    print(f"{'baseline':{width}} {'insns/round':>11} {'N':>13} | {'bt/direct per insn':>18} | "
          f"{'ns/insn (extra)':^15} | {'fixed ms (extra)':^16}")
    print(f"{'':{width}} {'':11} {'':13} | {'':18} | {'direct':>7} {'bt':>7} | {'direct':>7} {'bt':>8}")
    for name, scheme in base_rows:
        direct, bt = baselines[name, scheme, "direct"], baselines[name, scheme, "bt"]
        both = not isinstance(direct, Stopped) and not isinstance(bt, Stopped)
        label = name if scheme is None else f"{name} {scheme}"
        n = rounds_text(*(None if isinstance(b, Stopped) else b.run.iterations for b in (direct, bt)))
        print(f"{label:{width}} {BASELINES[name].per_round:11} {n:>13} | "
              f"{ratio(bt.per_instruction, direct.per_instruction) if both else 'n/a':>18} | "
              f"{na(direct, lambda b: number(b.per_instruction * 1e9, 2)):>7} "
              f"{na(bt, lambda b: number(b.per_instruction * 1e9, 2)):>7} | "
              f"{na(direct, lambda b: f'{b.fixed * 1e3:.1f}'):>7} {na(bt, lambda b: f'{b.fixed * 1e3:.1f}'):>8}")
    print("(loop0: the ring-0 loop `add; xor; dec; jnz`; loop3: the same in ring 3; spin: `inc; cmp [mem]; jb` "
          "with time in use;\nloop0pg: `xor; add; xor; dec; jnz` with paging on; pgmapped: loop0pg with "
          "`mov ecx, [page]; mov [pte], present entry; invlpg [page]`)\n")

    measures = measures_of(rows, runs, baselines, DETAIL_MODES)
    width = max(10, *(len(row.label) for row in rows))
    print(f"{'operation':{width}} {'base':8} {'N':>14} | {'cost (insns)':^15} | {'bt/':>5} | {'exits/op':^13} | "
          f"{'loop/op':^13} | {'bt':>4} | {'ns/op (extra)':^17}")
    print(f"{'':{width}} {'':8} {'':>14} | {'direct':>7} {'bt':>7} | {'dir.':>5} | {'direct':>6} {'bt':>6} | "
          f"{'direct':>6} {'bt':>6} | {'goal':>4} | {'direct':>8} {'bt':>8}")
    for row in rows:
        direct, bt = measures[row.label, "direct"], measures[row.label, "bt"]
        both = not isinstance(direct, Stopped) and not isinstance(bt, Stopped)
        n = rounds_text(*(None if isinstance(m, Stopped) else m.operations for m in (direct, bt)))
        print(f"{row.label:{width}} {row.micro.baseline:8} {n:>14} | "
              f"{na(direct, lambda m: number(m.cost)):>7} {na(bt, lambda m: number(m.cost)):>7} | "
              f"{ratio(bt.seconds, direct.seconds) if both else 'n/a':>5} | "
              f"{na(direct, lambda m: f'{m.exits:.2f}'):>6} {na(bt, lambda m: f'{m.exits:.2f}'):>6} | "
              f"{na(direct, lambda m: f'{m.loop_exits:.2f}'):>6} {na(bt, lambda m: f'{m.loop_exits:.2f}'):>6} | "
              f"{row.micro.goal:>4} | "
              f"{na(direct, lambda m: number(m.seconds * 1e9)):>8} {na(bt, lambda m: number(m.seconds * 1e9)):>8}")

    print("\nexits per operation by reason (run loop, with the wall time spent on them per operation, from the "
          "report's exit_seconds;\n`cache ...`: translation-cache exits, bt, handled inside the mode):")
    for row in rows:
        for mode in DETAIL_MODES:
            m = measures[row.label, mode]
            if isinstance(m, Stopped):
                print(f"  {row.label:{width}} {mode:6} {m.cell}")
                continue
            reasons = {r: n for r, n in m.reasons.items() if abs(n) >= 0.005}
            seconds = m.exit_seconds or {}
            text = ", ".join(f"{r} {n:.2f}" + (f" ({seconds[r] * 1e6:.1f} us)" if r in seconds else "")
                             for r, n in sorted(reasons.items(), key=lambda i: (-i[1], i[0])))
            print(f"  {row.label:{width}} {mode:6} {text or 'none'}")
    for mode in DETAIL_MODES:
        print(f"timer, {mode}: {na(measures['timer', mode], lambda m: m.note)}")
    print("\ncost: wall time per operation / the baseline's wall time per guest instruction, same mode (timer: "
          "per interrupt,\nagainst its spin loop; pgfault: against pgmapped, in loop0pg's instructions); bt/dir.: "
          "wall time per operation;\nexits/op: counters.exits + cache_exits, loop/op: counters.exits alone, per "
          "operation, the baseline's taken off;\nbt goal: the issue's bound on bt's exits.")


def compare_modes(runs: dict, rows: list[Row], schemes: tuple[Optional[str], ...]) -> None:
    """The Adams-and-Agesen table: each operation under the four modes, its cost in the mode's
    own guest-instruction equivalents, its wall time against direct's, and the monitor's work per
    operation (exits the run loop dispatched; vt: also the VM exits its controls select)."""
    print("\nall four modes (cost: guest-instruction equivalents of the mode's own baseline loop; x direct: "
          "wall time per operation / direct's; exits: run-loop exits per operation; vt: VM exits per operation)")
    width = max(10, *(len(row.label) for row in rows))
    print(f"{'operation':{width}} | " + " | ".join(f"{mode:^22}" for mode in MODES))
    print(f"{'':{width}} | " + " | ".join(f"{'cost':>7} {'x dir':>6} {'exits':>7}" for _ in MODES))
    measures = measures_of(rows, runs, baselines_of(runs, MODES, schemes), MODES)
    for row in rows:
        cells, direct = [], measures[row.label, "direct"]
        for mode in MODES:
            m = measures[row.label, mode]
            if isinstance(m, Stopped):
                cells.append(f"{m.cell:>22}")
                continue
            exits = m.vt_exits if mode == "vt" else m.loop_exits
            x_direct = "n/a" if isinstance(direct, Stopped) else ratio(m.seconds, direct.seconds)
            cells.append(f"{number(m.cost):>7} {x_direct:>6} {exits:7.2f}")
        print(f"{row.label:{width}} | " + " | ".join(cells))


def list_stopped(runs: dict) -> None:
    """Why the n/a cells are n/a: each mode's stop reason and message, with the guests it stopped."""
    stopped: dict[tuple, list[str]] = {}
    for (name, scheme, mode), run in runs.items():
        if isinstance(run, Stopped):
            guests = stopped.setdefault((mode, scheme, run.reason, run.message), [])
            name = name.removesuffix("-once")
            if name not in guests:
                guests.append(name)
    if not stopped:
        return
    print("\nruns that did not end with the guest's exit 0 (their rows read n/a there):")
    for (mode, scheme, reason, message), guests in stopped.items():
        under = mode if scheme is None else f"{mode} --paging {scheme}"
        print(f"  {under}: {reason}: {message} ({', '.join(guests)})")


def ratio(a: float, b: float) -> str:
    if a <= 0 or b <= 0:
        return "n/a"
    r = a / b
    if r >= 10_000:                             # against a native operation within the noise
        exponent = len(str(int(r))) - 1
        return f"{r / 10 ** exponent:.1f}e{exponent}"
    return f"{r:.2f}" if r < 100 else f"{r:.0f}"


def number(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if abs(value) < 100 else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main())
