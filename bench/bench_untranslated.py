"""What watching costs the untranslated modes on a compute-bound guest: ratios measured in one run.

    python bench/bench_untranslated.py [--scale 1.0] [--repeat 3]

Two pairs, each the same guest under a mode with and without the monitor's watch over the
code it runs:
  trap-watch/trap    `--mode trap` (the hole watch on, its default) against `--mode trap
                     --no-hole-watch`
  vt-shadow/vt       `--mode vt --paging shadow` (VT-x without EPT: cr_access, invlpg and task
                     switches watched) against `--mode vt` (nested paging, default exits)
Each guest runs a hot loop of loads, stores and arithmetic (bench_bt.py's `compute`) after one
`pushfd; popfd` (two holes under trap: the watch must still name them, each with count 1).
`compute` runs with paging off, `compute-pg` with it on (an identity map of 0-4 MiB in 4 KiB
pages). A watch paid per executed engine block costs a Python call per round of the loop (the
ratios were 250-270 for trap, 165-170 for vt); paid per translation, they stay near 1. Printed:
each pair's ratio of run times (the reports' wall_time_s, the fastest of --repeat runs of
each), and whether the holes were reported. Nothing is asserted here (tests/test_watch_cost.py
asserts a bound).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.samples import build_samples                    # noqa: E402  (Multiboot wrapper)
from tests.guests import watched_loop                      # noqa: E402  (the loop guest, shared with its test)
from vmm.loaders.assembly import assemble                 # noqa: E402

LOAD = 0x100000
GUESTS = {"compute": False, "compute-pg": True}      # the loop, paging off / on
ITERATIONS = 160_000_000      # bench_bt.py's compute: about 0.35 s unwatched here
PAIRS = [
    ("trap-watch/trap", ["--mode", "trap"], ["--mode", "trap", "--no-hole-watch"]),
    ("vt-shadow/vt", ["--mode", "vt", "--paging", "shadow"], ["--mode", "vt"]),
]


def loop_guest(directory: Path, iterations: int, paging: bool) -> Path:
    """A Multiboot image of the loop guest (paging on or off), exit status 0."""
    source = watched_loop(iterations, paging)
    code = assemble(source, LOAD, "loop")
    image = directory / f"loop{'-pg' if paging else ''}-{iterations}.elf"
    image.write_bytes(build_samples.wrap_multiboot(LOAD, [(LOAD, code, len(code))]))
    return image


def run(image: Path, options: list[str], report: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", str(image), *options, "--report", str(report)],
                          capture_output=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {image.name} {' '.join(options)}: status {proc.returncode}: "
                         f"{proc.stderr.decode().strip()}")
    return json.loads(report.read_text())


def fastest(image: Path, options: list[str], report: Path, repeat: int) -> dict:
    return min((run(image, options, report) for _ in range(max(1, repeat))), key=lambda r: r["wall_time_s"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help=f"multiply the loop's {ITERATIONS} rounds")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each kind; the fastest counts (default 3)")
    args = parser.parse_args(argv)
    iterations = max(1, int(ITERATIONS * args.scale))
    print(f"{'guest':11} {'pair':16} {'ratio':>7}  hole reported")
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        for name, paging in GUESTS.items():
            image = loop_guest(directory, iterations, paging)
            for label, watched, fast in PAIRS:
                slow_report = fastest(image, watched, directory / "watched.json", args.repeat)
                fast_report = fastest(image, fast, directory / "fast.json", args.repeat)
                ratio = slow_report["wall_time_s"] / max(fast_report["wall_time_s"], 1e-9)
                holes = slow_report["counters"].get("virtualization_holes")
                hole = "-" if holes is None else \
                    ("yes" if sorted((h["instruction"], h["count"]) for h in holes) == [("popfd", 1), ("pushfd", 1)]
                     else f"NO: {holes}")
                print(f"{name:11} {label:16} {ratio:7.2f}  {hole}", flush=True)
    print("ratio: run time (report wall_time_s) with the watch / without it, fastest of each.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
