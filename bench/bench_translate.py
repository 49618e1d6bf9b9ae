"""The binary translator's cost per block on a real workload: microseconds per translated block and
per guest instruction (decode, classify, emit and install into the cache), on Debian's Linux kernel.

    python bench/bench_translate.py [--max-insns 2450000000] [--tcache-size 4096] [--profile]
    python bench/bench_translate.py --sizes 4096,16384,65535 [--max-insns N]
    python bench/bench_translate.py --replay 3 [--profile] [--max-insns N]

Runs the kernel (../shared/guests/linux/vmlinuz, 256 MiB, console=ttyS0) under bt in this process
up to --max-insns guest instructions (the decompressor runs about the first 2.3 G, 543 blocks; by
2.45 G the early kernel has made 36,846: translation is what it costs). Every call of the mode's
translation is timed (wall time: a cyclic garbage collection it triggers counts, and the heap of
cached blocks makes those grow). Prints the blocks translated, the guest instructions they hold,
microseconds per block and per instruction, the evictions and the whole run's wall time.
--profile: a cProfile of translation alone (the run around it is not profiled), its top
functions. --sizes: one run per cache capacity (evictions and wall time for each).
--replay ROUNDS: after the run, the blocks cached then (those of the address space it stopped in)
are translated again ROUNDS times, not into the cache: the translator alone in CPU time, and a
digest of its output (code, exits, pc maps) that a change meant to keep the output must keep.
Absolute figures move with the machine (2 shared cores): compare runs made one after the other,
never across machines.

Figures (--max-insns 2450000000 --replay 3: 29,833 blocks, 108,008 instructions, digest
5318192e13273d7e throughout): 173.3 us/block with a block decoded twice when retried shorter or
found to need its self-check (a third of the decodes), 122.7 decoded once, 120.7 with operands
parsed on demand and mov classified by opcode. The whole Linux boot to its power-off (vmm run
... --mode bt), the two run side by side on a loaded machine: fixed 256-byte slots, 32,767
blocks: 106,858 translations for 78,890 distinct keys (EIPs), 67,404 evictions, 90.5 s of
translation, 149.6 s user CPU; pieces of each block's size (cache/arena.py), 65,535 blocks, and
the translator above: 83,812 translations, 13,549 evictions, 63.1 s of translation, 123.9 s.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import io
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vmm.builder import MachineConfig, build_machine      # noqa: E402
from vmm.console import BufferConsole                      # noqa: E402

KERNEL = ROOT.parent / "shared" / "guests" / "linux" / "vmlinuz"


def run(image: Path, max_insns: int, tcache: int, profile: bool) -> dict:
    config = MachineConfig(image=str(image), mode="bt", mem_mib=256, append="console=ttyS0",
                           max_instructions=max_insns, tcache_blocks=tcache)
    vm, _image = build_machine(config, BufferConsole())
    mode = vm.mode
    translate = mode._translate
    profiler = cProfile.Profile() if profile else None
    spent = [0.0]

    def timed(key):
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        try:
            return translate(key)
        finally:
            if profiler is not None:
                profiler.disable()
            spent[0] += time.perf_counter() - started

    mode._translate = timed
    started = time.perf_counter()
    result = vm.run()
    wall = time.perf_counter() - started
    cache = mode.cache.counters
    figures = {"exit": result.reason.value, "wall": wall, "translation": spent[0],
               "blocks": cache["blocks_translated"], "instructions": cache["instructions_translated"],
               "evictions": cache["evictions"], "invalidations": cache["invalidations"],
               "links_made": cache["links_made"], "engine_invalidations": getattr(mode.engine, "_invalidations", None)}
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(35)
        figures["profile"] = text.getvalue()
    return figures


def replay(image: Path, max_insns: int, rounds: int, profile: bool) -> dict:
    """Run to max_insns, then translate the cached blocks again `rounds` times (not into the
    cache): the translator's cost alone on a fixed set of real blocks, and a digest of what it
    makes (code, exits, pc map), which a change that must keep the output equal must keep."""
    from vmm.memory import PageFault, UnbackedAccess
    config = MachineConfig(image=str(image), mode="bt", mem_mib=256, append="console=ttyS0",
                           max_instructions=max_insns)
    vm, _image = build_machine(config, BufferConsole())
    vm.run()
    mode = vm.mode
    keys = []
    for block in mode.cache.blocks():
        key = block.key
        if not block.guest.instructions:
            continue
        try:      # only blocks of the address space the run stopped in
            if key.physical != (mode.paging.code_address((key.cs_base + key.eip) & 0xFFFFFFFF)
                                if mode.paging.on else -1):
                continue
        except (PageFault, UnbackedAccess):
            continue
        keys.append(key)
    keys.sort(key=lambda key: (key.physical, key.eip, key.single_step, key.segment_bases, key.cs_base))
    profiler = cProfile.Profile() if profile else None
    digest = hashlib.sha256()
    started = time.process_time()
    if profiler is not None:
        profiler.enable()
    for round_number in range(rounds):
        for key in keys:
            guest, translation, _ranges = mode.translation_for(key)
            if round_number == 0:
                digest.update(bytes(translation.code))
                digest.update(repr([(site.kind.value, site.offset, site.guest_eip, site.branch)
                                    for site in translation.exits]).encode())
                digest.update(repr([(entry.offset, entry.guest_eip, entry.restore)
                                    for entry in translation.pc_map]).encode())
    if profiler is not None:
        profiler.disable()
    spent = time.process_time() - started
    figures = {"blocks": len(keys), "instructions": sum(len(mode.cache.translated(key).guest.instructions)
                                                         for key in keys),
               "seconds": spent, "digest": digest.hexdigest()[:16]}
    if profiler is not None:
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
        figures["profile"] = text.getvalue()
    return figures


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=KERNEL)
    parser.add_argument("--max-insns", type=int, default=2_450_000_000)
    parser.add_argument("--tcache-size", type=int, default=None, help="cache capacity in blocks (default: bt's)")
    parser.add_argument("--sizes", default=None, help="comma-separated capacities: one run each")
    parser.add_argument("--profile", action="store_true", help="cProfile translation alone")
    parser.add_argument("--replay", type=int, default=0, metavar="ROUNDS",
                        help="translate the blocks cached at --max-insns again ROUNDS times (CPU time, digest)")
    args = parser.parse_args(argv)
    if not args.image.exists():
        print(f"bench: {args.image} is missing (see ../shared/guests/linux/README.md)", file=sys.stderr)
        return 2
    if args.replay:
        figures = replay(args.image, args.max_insns, args.replay, args.profile)
        per_round = figures["seconds"] / args.replay
        print(f"replayed {figures['blocks']} blocks ({figures['instructions']} instructions) x {args.replay}: "
              f"{per_round / max(figures['blocks'], 1) * 1e6:.1f} us/block, "
              f"{per_round / max(figures['instructions'], 1) * 1e6:.1f} us/insn (CPU time); "
              f"output digest {figures['digest']}")
        if args.profile:
            print(figures["profile"])
        return 0
    sizes = [int(size) for size in args.sizes.split(",")] if args.sizes else [args.tcache_size]
    print(f"{'tcache':>6} {'blocks':>7} {'insns':>8} {'us/block':>8} {'us/insn':>7} {'xlate s':>7} "
          f"{'evictions':>9} {'wall s':>7}  exit")
    for size in sizes:
        figures = run(args.image, args.max_insns, size, args.profile)
        blocks, instructions = max(figures["blocks"], 1), max(figures["instructions"], 1)
        print(f"{size or 'dflt':>6} {figures['blocks']:7d} {figures['instructions']:8d} "
              f"{figures['translation'] / blocks * 1e6:8.1f} {figures['translation'] / instructions * 1e6:7.1f} "
              f"{figures['translation']:7.2f} {figures['evictions']:9d} {figures['wall']:7.1f}  {figures['exit']}",
              flush=True)
        if args.profile:
            print(figures["profile"])
    print("us/block, us/insn: translation (decode, classify, emit, install) per block translated and per guest "
          "instruction in them;\nwall s: the whole run in this process.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
