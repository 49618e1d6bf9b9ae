"""Command line: `vmm run IMAGE ...`, `vmm audit IMAGE ...`. Every failure is one line on stderr and a non-zero status."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Optional, Sequence

from vmm import __version__, audit
from vmm.clock import CLOCKS
from vmm.builder import DEFAULT_LOAD_ADDRESS, DEFAULT_MEM_MIB, MachineConfig, build_machine
from vmm.console import StdioConsole
from vmm.display import ESCAPE_NAME, Display
from vmm.disks import parse_drive
from vmm.errors import ConfigError, VmmError
from vmm.loaders.multiboot import split_module_list
from vmm.exits import StopReason
from vmm.modes import DEFAULT_MODE, available_modes
from vmm.monitor_layout import ARENA_SLOT_SIZE, DEFAULT_TCACHE_BLOCKS, MAX_TCACHE_BLOCKS
from vmm.modes.vt import parse_exit_controls
from vmm.report import build_report, write_report
from vmm.trace import TRACE_FLAGS, parse_trace_flags

# Endings the guest chose; every other ending is explained on stderr.
_QUIET_ENDINGS = (StopReason.DEBUG_EXIT,)


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (not usage plus message), status 2."""

    def error(self, message: str) -> None:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def parse_address(text: str) -> int:
    """An address option's value: decimal, 0x hexadecimal or 0o octal."""
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}") from None


def _module_list(text: str) -> list[str]:
    try:
        return split_module_list(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _cache_size(text: str) -> int:
    """'4096' is a block count; '2M', '512K' or '65536B' are bytes of translated code, a block
    counted at the largest size one can have (its code in the arena takes at most that)."""
    units = {"B": 1, "K": 1 << 10, "M": 1 << 20}
    try:
        if text[-1:].upper() in units:
            return int(text[:-1]) * units[text[-1].upper()] // ARENA_SLOT_SIZE
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid cache size {text!r}") from None


def add_guest_arguments(group) -> None:
    """The options that say which guest runs and on what machine (shared with vmm-tcache)."""
    group.add_argument("--mem", type=int, default=DEFAULT_MEM_MIB, metavar="MiB",
                       help=f"guest RAM in MiB (default {DEFAULT_MEM_MIB})")
    group.add_argument("--append", default="", metavar="CMDLINE", help="kernel command line")
    group.add_argument("--initrd", type=_module_list, default=[], metavar="FILE[,FILE...]",
                       help="Multiboot modules, or a Linux bzImage's initrd, as QEMU's -initrd (',,' is a comma in a name)")
    group.add_argument("--load-addr", type=parse_address, default=DEFAULT_LOAD_ADDRESS, metavar="ADDR",
                       help="load address of flat binaries and assembly (default 0x100000)")
    group.add_argument("--max-insns", type=int, default=None, metavar="N", help="stop after about N instructions")
    group.add_argument("--clock", choices=CLOCKS, default="virtual",
                       help="guest time: 'virtual' counts guest instructions (100 MHz, the same on every "
                            "run; default), 'realtime' follows the host clock")
    group.add_argument("--timeout", type=float, default=None, metavar="SECONDS", help="stop after this wall time")
    group.add_argument("--unassigned", choices=("zero", "stop"), default="zero",
                       help="guest-physical memory with nothing behind it: 'zero' reads 0 and drops stores, as "
                            "QEMU's PC (default); 'stop' ends the run at the first access (memory_fault, 121)")
    group.add_argument("--tcache-size", type=_cache_size, default=None, metavar="BLOCKS|BYTES",
                       help=f"translation cache capacity: a block count, or bytes with K/M suffix "
                            f"(counted at {ARENA_SLOT_SIZE} bytes, the largest block; default "
                            f"{DEFAULT_TCACHE_BLOCKS} blocks)")


def guest_config(args, image: str, mode: str, **more) -> MachineConfig:
    """MachineConfig from the options add_guest_arguments defined (plus any others given)."""
    return MachineConfig(
        image=image, mode=mode, mem_mib=args.mem, append=args.append,
        initrd=args.initrd,
        load_address=args.load_addr, max_instructions=args.max_insns, timeout=args.timeout, clock=args.clock,
        tcache_blocks=args.tcache_size, unassigned=args.unassigned, **more)


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog="vmm", description="A type 2 virtual machine monitor for 32-bit x86 guests.")
    parser.add_argument("--version", action="version", version=f"vmm {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    run = commands.add_parser("run", help="run a guest image")
    run.add_argument("image", help="Linux bzImage, Multiboot or plain ELF32 kernel, flat binary, or .s/.asm source")
    run.add_argument("--mode", default=DEFAULT_MODE, choices=sorted(available_modes()),
                     help="bt: binary translation (default); direct: untranslated, the reference; trap: "
                          "trap-and-emulate (kernel at ring 3, the 386's holes show); vt: hardware-assisted model")
    add_guest_arguments(run)
    run.add_argument("--profile", action="store_true",
                     help="count each translated block's executions inside the cache (bt; for vmm-tcache)")
    run.add_argument("--dump-cache", default=None, metavar="FILE.json",
                     help="write the final translation cache (bt) for vmm-tcache")
    run.add_argument("--gdb", type=int, default=None, metavar="PORT",
                     help="serve the GDB remote protocol on localhost:PORT (gdb: target remote :PORT)")
    run.add_argument("--gdb-wait", action="store_true", help="with --gdb: wait for gdb before the first instruction")
    run.add_argument("-d", dest="trace", default="", metavar="FLAG[,FLAG...]",
                     help="trace: " + ", ".join(f"{flag} ({what})" for flag, what in TRACE_FLAGS.items()))
    run.add_argument("-D", dest="trace_file", default=None, metavar="FILE", help="write the trace here (default stderr)")
    run.add_argument("--drive", action="append", default=[], metavar="file=PATH,if=ide,index=N[,...]",
                     help="an IDE disk, QEMU-style: index 0/1 the primary master/slave, format=raw (the "
                          "file itself, written in place) or overlay (copy-on-write, the file never written; "
                          "overlay=PATH keeps the writes in a file, otherwise in memory), readonly")
    run.add_argument("--report", default=None, metavar="FILE.json", help="write a JSON report of the run")
    run.add_argument("--screen", action="store_true",
                     help="print the VGA text screen (80x25) on stderr when the run ends")
    run.add_argument("--display", action="store_true",
                     help=f"show the VGA text screen live in the terminal (as QEMU's -display curses), COM1's "
                          f"output beneath it; keys typed go to the PS/2 keyboard; {ESCAPE_NAME} ends the run")
    run.add_argument("--keyboard-input", default=None, metavar="FILE",
                     help="type FILE's bytes on the PS/2 keyboard as scan codes ('-': standard input, which "
                          "then no longer feeds COM1); a FIFO types as it is written")
    run.add_argument("--log-unassigned-ports", action="store_true",
                     help="log accesses to ports no device claims (stderr)")
    run.add_argument("--no-hole-watch", action="store_true",
                     help="trap: do not record virtualization holes (their watch costs a call per "
                          "translated block and per run of a block holding one)")
    run.add_argument("--paging", default=None, choices=("shadow", "nested"),
                     help="memory virtualization: shadow page tables (bt and trap's default; vt as VT-x "
                          "without EPT) or nested paging (vt's default; bt and trap through the engine's "
                          "virtual TLB); direct has the bare machine's MMU")
    run.add_argument("--vt-exits", default=None, metavar="LIST",
                     help="vt: the exit controls, 'default' (io,hlt,cpuid,external_interrupt), 'all', a list, "
                          "or +list to add to the default; the report shows them and counts exits by reason")
    audit_parser = commands.add_parser(
        "audit", help="report the sensitive instructions a guest executes and whether trap-and-emulate "
                      "could virtualize it", description=audit.__doc__.splitlines()[0], epilog=audit.AUDIT_EPILOG)
    audit_parser.add_argument("image", help="Linux bzImage, Multiboot or plain ELF32 kernel, flat binary, or .s/.asm source")
    add_guest_arguments(audit_parser)
    audit.add_arguments(audit_parser)
    return parser


def _failure(error: Exception) -> int:
    """One line on stderr for a bad image, option or file; the exit status it calls for."""
    if isinstance(error, OSError):
        print(f"vmm: {error.filename or ''}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"vmm: {error}", file=sys.stderr)
    return error.exit_status


def _keyboard_input(path: Optional[str]) -> Optional[StdioConsole]:
    """--keyboard-input: the file (or standard input, '-') read as a console's input side."""
    if path is None:
        return None
    if path == "-":
        return StdioConsole(out_fd=-1, in_fd=0)
    try:
        return StdioConsole(out_fd=-1, in_fd=os.open(path, os.O_RDONLY))
    except OSError as error:
        raise ConfigError(f"--keyboard-input {path}: {error.strerror}") from None


def _audit(args) -> int:
    """`vmm audit`: the guest runs under bt with profiling, in a cache that evicts nothing unless
    --tcache-size says otherwise (see vmm/audit.py)."""
    if args.tcache_size is None:
        args.tcache_size = MAX_TCACHE_BLOCKS
    config = guest_config(args, args.image, "bt", profile=True)
    try:
        return audit.run(args, config)
    except (VmmError, OSError) as error:
        return _failure(error)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:           # bare `vmm`: what it can do, as a usage error
        print(parser.format_help(), end="", file=sys.stderr)
        return 2
    if args.command == "audit":
        return _audit(args)
    try:
        trace = parse_trace_flags(args.trace)
        vt_exits = parse_exit_controls(args.vt_exits) if args.vt_exits is not None else None
        drives = []
        for text in args.drive:
            drives.append(parse_drive(text, next_index=len(drives)))
    except VmmError as error:
        print(f"vmm: error: {error}", file=sys.stderr)
        return 2
    config = guest_config(args, args.image, args.mode, log_unassigned_ports=args.log_unassigned_ports,
                          trace=trace, trace_file=args.trace_file, gdb_port=args.gdb, gdb_wait=args.gdb_wait,
                          profile=args.profile, vt_exits=vt_exits, watch_holes=not args.no_hole_watch,
                          paging=args.paging, dump_cache=args.dump_cache, drives=drives)
    try:
        display = Display() if args.display else None
        if display is not None and args.keyboard_input is not None:
            raise ConfigError("--keyboard-input and --display both type on the keyboard: use one")
        if display is not None:
            console, keyboard = display.serial, display.keyboard
        else:
            keyboard = _keyboard_input(args.keyboard_input)
            console = StdioConsole(in_fd=None if args.keyboard_input == "-" else 0)
        vm, image = build_machine(config, console, keyboard=keyboard)
        with display if display is not None else contextlib.nullcontext():
            if display is not None:
                display.start(vm.screen)
            result = vm.run()
        if args.screen:
            sys.stderr.write(vm.screen.render())
        if args.report:
            write_report(args.report, build_report(config, image, vm, result))
        if config.dump_cache:
            dump = vm.mode.dump()
            dump["run"] = {"image": config.image, "mode": config.mode, "append": config.append,
                           "initrd": config.initrd, "exit": result.reason.value,
                           "exits": {reason.value: count for reason, count in vm.exits.items()},
                           "cache_exits": vm.mode.counters().get("cache_exits", {})}
            write_report(config.dump_cache, dump)
    except (VmmError, OSError) as error:
        return _failure(error)
    if result.reason not in _QUIET_ENDINGS:
        print(f"vmm: {result.message}", file=sys.stderr)
    return result.exit_status


def entry_point() -> None:
    try:
        status = main()
    except KeyboardInterrupt:     # Ctrl-C outside a run (a run ends itself: status 130, its report)
        print("vmm: interrupted", file=sys.stderr)
        status = 130
    sys.exit(status)
