"""Microbenchmarks after Adams and Agesen (ASPLOS 2006): what one guest operation costs, bt against direct.

    python bench/bench_micro.py [--quick] [--scale 1.0] [--keep DIR]

Each microbenchmark is a guest (bench/guests/micro.S, built at run time into a temporary
directory with gcc -m32 and ld, as tools/build_samples.py builds the samples) that repeats ONE
operation N times in a loop; a baseline guest runs the same loop without it, and again with
N = 1 for the run's fixed cost (start-up, translation). Every guest runs once under direct and
once under bt (one `vmm run --report` each); everything printed comes from those reports:

  cost       wall time per operation in guest-instruction equivalents: (op loop's time per
             round - baseline's time per round) / baseline's time per guest instruction, the
             fixed cost taken off and both under the SAME mode. The timer interrupt is measured
             against its spin loop: (run time - fixed cost - spin instructions retired x the
             spin baseline's time per instruction) / interrupts delivered.
  bt/direct  bt's wall time per operation / direct's.
  exits/op   monitor exits per operation: counters.exits plus (bt) counters.cache_exits, the
             baseline's (fixed) exits taken off, divided by N (the timer: by the interrupts
             delivered). Under bt one return to the monitor can be in both counters: a
             translation-cache exit that goes on to the run loop (a callout, a guest exception,
             a budget exit that ends in an event) is counted in each.
  loop/op    the same with counters.exits alone: exits the run loop dispatched.

Operations: int 0x80 from ring 3 to a DPL-3 interrupt gate whose handler is `iretd` (its
baseline loop runs in ring 3 too); `in al, dx` from the unassigned port 0x80; cli+sti;
pushfd+popfd; call+ret of an empty function; `div ecx` with ECX = 0, whose #DE handler adds 2 to
the saved EIP; IRQ0 from the PIT (mode 2, divisor 20: every 1680 guest instructions on the
virtual clock) with an EOI+iretd handler while the guest spins with IF = 1. All but the system
call run at ring 0. Absolute times move with the machine and are only an extra column; nothing
here is asserted.
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
# trap runs without its hole watch (a Python call per engine block, not part of trap-and-emulate's
# own cost); its cli/sti guest traps twice a round (tens of microseconds), so its guests run N / 100
MODE_SCALE = {"trap": 0.01}
PIT_DIVISOR = 20                 # IRQ0 every 20 PIT ticks = 1680 guest instructions (virtual clock)
TRAP_TIMEOUT = 30                  # s: trap, a guest a hole sent astray must still end
QUICK = 0.01                     # --quick: N / 100 (the baselines: N / 10, to stay well above their fixed cost)
QUICK_BASELINE = 0.1


@dataclass
class Guest:
    name: str
    defines: tuple[str, ...]     # -D for micro.S (ITERATIONS is added)
    iterations: int              # N of the full run (--quick and --scale multiply it)
    per_round: int = 0           # baselines: guest instructions per loop round


@dataclass
class Micro:
    name: str
    guest: Guest
    baseline: str                # the baseline guest's name
    goal: str = ""               # what the issue asks of bt's exits per operation


BASELINES = {
    "loop0": Guest("loop0", ("OP_NONE",), 200_000_000, per_round=4),
    "loop3": Guest("loop3", ("OP_NONE", "RING3"), 200_000_000, per_round=4),
    "spin": Guest("spin", ("SPIN_NONE",), 20_000_000, per_round=3),
}

MICROS = [
    Micro("syscall", Guest("syscall", ("OP_SYSCALL", "RING3"), 20_000), "loop3", "<= 2"),
    Micro("in", Guest("in", ("OP_IN",), 200_000), "loop0"),
    Micro("cli/sti", Guest("cli_sti", ("OP_CLI_STI",), 40_000_000), "loop0", "0"),
    Micro("pushf/popf", Guest("pushf_popf", ("OP_PUSHF_POPF",), 40_000_000), "loop0", "0"),
    Micro("call/ret", Guest("call_ret", ("OP_CALL_RET",), 40_000_000), "loop0"),
    Micro("divide", Guest("divide", ("OP_DIVIDE",), 20_000), "loop0"),
    Micro("timer", Guest("timer", ("SPIN_TIMER", f"PIT_DIVISOR={PIT_DIVISOR}"), 10_000), "spin"),
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

    @property
    def exits(self) -> int:
        """counters.exits + counters.cache_exits."""
        return sum(self.exit_reasons().values())

    @property
    def loop_exits(self) -> int:
        return sum(self.report["counters"]["exits"].values())


def run_vmm(image: Path, mode: str, iterations: int, directory: Path) -> Optional[Run]:
    """The run's report; None when a mode that is not exact (trap: its holes) got the guest
    wrong. direct and bt must always finish."""
    report = directory / f"{image.stem}.{mode}.json"
    # trap: a guest a hole sends astray must still end: a wall-clock bound (an instruction bound
    # would make the engine count every instruction, and slow what it measures)
    bound = ["--timeout", str(TRAP_TIMEOUT), "--no-hole-watch"] if mode == "trap" else []
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", str(image), "--mode", mode, "--report", str(report),
                           *bound], capture_output=True, cwd=ROOT)
    if not report.exists():
        raise SystemExit(f"bench: {image.name} under {mode} failed: {proc.stderr.decode().strip()}")
    result = json.loads(report.read_text())
    if result["exit"]["reason"] != "debug_exit" or result["exit"]["guest_value"] != 0:
        if mode == "trap":
            return None
        raise SystemExit(f"bench: {image.name} under {mode} ended badly: {result['exit']['message']}\n"
                         f"{proc.stdout.decode(errors='replace')}")
    return Run(result, iterations)


@dataclass
class Baseline:
    fixed: float                 # s: the N = 1 run
    per_round: float             # s per loop round, fixed cost off
    per_instruction: float       # s per guest instruction
    exits: int                   # of the N run (fixed: they do not grow with N)
    loop_exits: int
    reasons: dict[str, int]


def baseline(guest: Guest, full: Run, once: Run) -> Baseline:
    per_round = (full.wall - once.wall) / max(1, full.iterations - once.iterations)
    return Baseline(once.wall, per_round, per_round / guest.per_round, full.exits, full.loop_exits,
                    full.exit_reasons())


@dataclass
class Measure:
    seconds: float               # wall time per operation
    cost: float                  # in the baseline's guest-instruction equivalents
    exits: float                 # per operation: counters.exits + cache_exits
    loop_exits: float            # per operation: counters.exits
    reasons: dict[str, float]    # exits per operation by reason
    operations: int              # N, or the interrupts delivered
    note: str = ""


def measure(micro: Micro, op: Run, base: Baseline) -> Measure:
    note = ""
    if micro.name == "timer":
        operations = sum(op.report["counters"]["external_interrupts"].values())
        spin = op.report["registers"]["esi"] * BASELINES[micro.baseline].per_round
        per_operation = (op.wall - base.fixed - spin * base.per_instruction) / operations
        clock = op.report["counters"]["clock"]
        retired = clock["cycles"] - clock["idle_cycles"]
        note = (f"{operations} interrupts delivered, {spin / operations:.0f} spin-loop + "
                f"{(retired - spin) / operations:.1f} other guest instructions retired per interrupt")
    else:
        operations = op.iterations
        per_operation = (op.wall - base.fixed) / op.iterations - base.per_round
    reasons = {reason: (n - base.reasons.get(reason, 0)) / operations for reason, n in op.exit_reasons().items()}
    return Measure(per_operation, per_operation / base.per_instruction, (op.exits - base.exits) / operations,
                   (op.loop_exits - base.loop_exits) / operations, reasons, operations, note)


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
    with tempfile.TemporaryDirectory(prefix="bench_micro-") as scratch:
        directory = Path(args.keep) if args.keep else Path(scratch)
        directory.mkdir(parents=True, exist_ok=True)
        shared = build_shared(directory)
        runs: dict[tuple[str, str], Run] = {}
        builds = [(guest.name, guest.defines, max(2, int(guest.iterations * baseline_scale)))
                  for guest in BASELINES.values()]
        builds += [(micro.guest.name, micro.guest.defines, max(1, int(micro.guest.iterations * scale)))
                   for micro in MICROS]
        builds += [(f"{guest.name}-once", guest.defines, 1) for guest in BASELINES.values()]
        for name, defines, iterations in builds:
            for mode in MODES:
                scaled = iterations if name.endswith("-once") else max(1, int(iterations * MODE_SCALE.get(mode, 1)))
                image = build(f"{name}-{scaled}", defines, scaled, shared, directory)
                runs[name, mode] = run_vmm(image, mode, scaled, directory)
        report(runs)
        compare_modes(runs)
    print(f"\nwhole benchmark: {time.perf_counter() - started:.1f} s")
    return 0


def report(runs: dict) -> None:
    """The detailed table, bt against direct."""
    baselines = {(name, mode): baseline(guest, runs[name, mode], runs[f"{name}-once", mode])
                 for name, guest in BASELINES.items() for mode in DETAIL_MODES}
    print(f"{'baseline':9} {'insns/round':>11} {'N':>10} | {'bt/direct per insn':>18} | "
          f"{'ns/insn (extra)':^15} | {'fixed ms (extra)':^16}")
    print(f"{'':9} {'':11} {'':10} | {'':18} | {'direct':>7} {'bt':>7} | {'direct':>7} {'bt':>8}")
    for name, guest in BASELINES.items():
        direct, bt = baselines[name, "direct"], baselines[name, "bt"]
        print(f"{name:9} {guest.per_round:11} {runs[name, 'direct'].iterations:10} | "
              f"{ratio(bt.per_instruction, direct.per_instruction):>18} | "
              f"{direct.per_instruction * 1e9:7.2f} {bt.per_instruction * 1e9:7.2f} | "
              f"{direct.fixed * 1e3:7.1f} {bt.fixed * 1e3:8.1f}")
    print("(loop0: the ring-0 loop `add; xor; dec; jnz`; loop3: the same in ring 3; spin: `inc; cmp [mem]; jb` "
          "with time in use)\n")

    measures = {(micro.name, mode): measure(micro, runs[micro.guest.name, mode], baselines[micro.baseline, mode])
                for micro in MICROS for mode in DETAIL_MODES}
    print(f"{'operation':10} {'base':5} {'N':>8} | {'cost (insns)':^15} | {'bt/':>5} | {'exits/op':^13} | "
          f"{'loop/op':^13} | {'bt':>4} | {'ns/op (extra)':^17}")
    print(f"{'':10} {'':5} {'':>8} | {'direct':>7} {'bt':>7} | {'dir.':>5} | {'direct':>6} {'bt':>6} | "
          f"{'direct':>6} {'bt':>6} | {'goal':>4} | {'direct':>8} {'bt':>8}")
    for micro in MICROS:
        direct, bt = measures[micro.name, "direct"], measures[micro.name, "bt"]
        print(f"{micro.name:10} {micro.baseline:5} {bt.operations:8} | {number(direct.cost):>7} {number(bt.cost):>7} | "
              f"{ratio(bt.seconds, direct.seconds):>5} | {direct.exits:6.2f} {bt.exits:6.2f} | "
              f"{direct.loop_exits:6.2f} {bt.loop_exits:6.2f} | {micro.goal:>4} | "
              f"{number(direct.seconds * 1e9):>8} {number(bt.seconds * 1e9):>8}")

    print("\nexits per operation by reason (run loop; `cache ...`: translation-cache exits, bt):")
    for micro in MICROS:
        for mode in DETAIL_MODES:
            reasons = {r: n for r, n in measures[micro.name, mode].reasons.items() if abs(n) >= 0.005}
            text = ", ".join(f"{r} {n:.2f}" for r, n in sorted(reasons.items(), key=lambda i: (-i[1], i[0])))
            print(f"  {micro.name:10} {mode:6} {text or 'none'}")
    for mode in DETAIL_MODES:
        print(f"timer, {mode}: {measures['timer', mode].note}")
    print("\ncost: wall time per operation / the baseline's wall time per guest instruction, same mode (timer: "
          "per interrupt,\nagainst its spin loop); bt/dir.: wall time per operation; exits/op: counters.exits + "
          "cache_exits, loop/op:\ncounters.exits alone, per operation, the baseline's taken off; bt goal: the "
          "issue's bound on bt's exits.")


def compare_modes(runs: dict) -> None:
    """The Adams-and-Agesen table: each operation under the four modes, its cost in the mode's
    own guest-instruction equivalents, its wall time against direct's, and the monitor's work per
    operation (exits the run loop dispatched; vt: also the VM exits its controls select)."""
    print("\nall four modes (cost: guest-instruction equivalents of the mode's own baseline loop; x direct: "
          "wall time per operation / direct's; exits: run-loop exits per operation; vt: VM exits per operation)")
    print(f"{'operation':10} | " + " | ".join(f"{mode:^22}" for mode in MODES))
    print(f"{'':10} | " + " | ".join(f"{'cost':>7} {'x dir':>6} {'exits':>7}" for _ in MODES))
    baselines = {}
    for name, guest in BASELINES.items():
        for mode in MODES:
            full, once = runs[name, mode], runs[f"{name}-once", mode]
            baselines[name, mode] = baseline(guest, full, once) if full and once else None
    for micro in MICROS:
        cells, direct = [], None
        for mode in MODES:
            run, base = runs[micro.guest.name, mode], baselines[micro.baseline, mode]
            if run is None or base is None:
                cells.append(f"{'went wrong (a hole)':>22}")
                continue
            m = measure(micro, run, base)
            direct = m if mode == "direct" else direct
            exits = m.loop_exits
            if mode == "vt":
                vt = run.report["counters"]["vt_exits"]
                base_vt = runs[micro.baseline, mode].report["counters"]["vt_exits"]
                exits = (sum(vt.values()) - sum(base_vt.values())) / m.operations
            cells.append(f"{number(m.cost):>7} {ratio(m.seconds, direct.seconds):>6} {exits:7.2f}")
        print(f"{micro.name:10} | " + " | ".join(cells))


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a > 0 and b > 0 else "n/a"


def number(value: float) -> str:
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


if __name__ == "__main__":
    sys.exit(main())
