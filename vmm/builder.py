"""The one place a machine is assembled from its configuration: memory, devices, image, CPU, mode."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

from vmm.boot import enter_protected_mode
from vmm.bus import PortBus
from vmm.clock import VirtualClock
from vmm.console import Console
from vmm.devices.debug_exit import DEBUG_EXIT_PORT, DEBUG_EXIT_PORTS, DebugExit
from vmm.devices.uart16550 import COM1_BASE, UART_PORTS, Uart16550
from vmm.engine import Engine
from vmm.errors import ConfigError
from vmm.exits import StopReason
from vmm.frames import FramePool
from vmm.loaders import LoadedImage, load_image
from vmm.loaders import multiboot
from vmm.memory import PhysicalMemory, UnbackedAccess
from vmm.modes import DEFAULT_MODE, available_modes
from vmm.monitor_layout import ARENA_SLOTS

MAX_TCACHE_BLOCKS = ARENA_SLOTS - 1
from vmm.gdbstub import GdbStub
from vmm.trace import Tracer
from vmm.vm import Limits, VirtualMachine

DEFAULT_MEM_MIB = 32
DEFAULT_LOAD_ADDRESS = 0x100000



@dataclass
class MachineConfig:
    image: str
    mode: str = DEFAULT_MODE
    mem_mib: int = DEFAULT_MEM_MIB
    append: str = ""
    initrd: list[str] = field(default_factory=list)
    load_address: int = DEFAULT_LOAD_ADDRESS
    max_instructions: Optional[int] = None
    timeout: Optional[float] = None
    log_unassigned_ports: bool = False
    tcache_blocks: Optional[int] = None      # translation cache capacity (bt)
    trace: frozenset = frozenset()           # -d flags (vmm/trace.py)
    trace_file: Optional[str] = None         # -D: the trace log (default stderr)
    profile: bool = False                    # --profile: count block executions inside the cache (bt)
    gdb_port: Optional[int] = None           # --gdb: serve the GDB remote protocol here
    gdb_wait: bool = False                   # --gdb-wait: stop before the first instruction
    clock: str = "virtual"                   # --clock: virtual (deterministic) or realtime
    vt_exits: Optional[frozenset] = None     # --vt-exits: the exit controls of --mode vt (None: default)
    watch_holes: bool = True                 # trap: record the virtualization holes the guest runs
    paging: Optional[str] = None             # --paging: shadow or nested (None: the mode's default)
    dump_cache: Optional[str] = None         # --dump-cache: where the mode's dump() goes after the run (bt)
    unassigned: str = "zero"                 # --unassigned: zero (QEMU's unassigned memory) or stop

    @property
    def paging_scheme(self) -> str:
        """The memory-virtualization scheme the run uses: the one asked for or the mode's
        default (the modes' paging_schemes: shadow page tables, vmm/shadow_paging.py, or nested
        paging, vmm/nested_paging.py); "native" for direct, whose guest paging runs on the
        engine's MMU as on the bare machine."""
        return self.paging or (available_modes()[self.mode].paging_schemes or ("native",))[0]

    def validate(self) -> None:
        modes = available_modes()
        if self.mode not in modes:
            raise ConfigError(f"unknown mode {self.mode!r} (available: {', '.join(sorted(modes))})")
        modes[self.mode].accepts(self)        # the options that belong to some modes only
        if self.max_instructions is not None and not 0 < self.max_instructions <= Limits.MAX_INSTRUCTIONS:
            raise ConfigError(f"--max-insns must be positive and at most {Limits.MAX_INSTRUCTIONS:.0e}, "
                              f"got {self.max_instructions}")
        if self.timeout is not None and not 0 < self.timeout <= Limits.MAX_TIMEOUT:     # nan, inf too
            raise ConfigError(f"--timeout must be positive and at most {Limits.MAX_TIMEOUT:g} seconds "
                              f"(leave it out for no limit), got {self.timeout:g}")
        if self.tcache_blocks is not None and not 1 <= self.tcache_blocks <= MAX_TCACHE_BLOCKS:
            raise ConfigError(f"--tcache-size must hold 1 to {MAX_TCACHE_BLOCKS} blocks, got {self.tcache_blocks}")
        if self.gdb_wait and self.gdb_port is None:
            raise ConfigError("--gdb-wait needs --gdb PORT")
        if self.gdb_port is not None and not 1 <= self.gdb_port <= 65535:
            raise ConfigError(f"--gdb port must be 1-65535, got {self.gdb_port}")
        if self.unassigned not in ("zero", "stop"):
            raise ConfigError(f"--unassigned must be zero or stop, got {self.unassigned!r}")
        if not 0 <= self.load_address < 1 << 32:
            raise ConfigError(f"--load-addr {self.load_address:#x} is not a 32-bit address")


def _log_unassigned(direction: str, port: int, size: int, value: int) -> None:
    print(f"vmm: unassigned port {direction} {port:#06x} size {size} value {value:#x}", file=sys.stderr)


def _unassigned_handler(tracer: Tracer, stop: bool):
    """What an access to unassigned guest-physical memory does beyond reading 0: a -d
    guest_errors line, and with --unassigned stop the end of the run (memory_fault)."""
    if not tracer.guest_errors and not stop:
        return None

    def handler(kind: str, address: int, size: int, _value: int) -> None:
        if tracer.guest_errors:
            tracer.unassigned(kind, address, size)
        if stop:
            raise UnbackedAccess(address, size, kind)
    return handler


def _open_trace(path: Optional[str]):
    if path is None:
        return None
    try:
        return open(path, "w")
    except OSError as error:
        raise ConfigError(f"-D {path}: {error.strerror}") from None


def build_machine(config: MachineConfig, console: Console,
                  pool: Optional[FramePool] = None) -> tuple[VirtualMachine, LoadedImage]:
    """A machine ready to run. Its RAM is frames of `pool` (machines given the same pool share
    its host memory, never its frames), or of a private pool sized for it; nothing is shared
    between machines otherwise. memory.release() gives the frames back."""
    config.validate()
    engine = Engine(long_mode=available_modes()[config.mode].long_mode)
    memory = PhysicalMemory(engine, config.mem_mib, pool)
    try:
        image = load_image(config.image, memory, config.load_address, reserved=(multiboot.RESERVED_AREA,))
        info_address = multiboot.write_boot_information(memory, image, config.image, config.append, config.initrd)
        enter_protected_mode(engine, memory, image.entry, multiboot.BOOTLOADER_MAGIC, info_address)

        bus = PortBus(on_unassigned=_log_unassigned if config.log_unassigned_ports else None)
        mode = available_modes()[config.mode].from_config(config)
        limits = Limits(config.max_instructions, config.timeout)
        tracer = Tracer(config.trace, _open_trace(config.trace_file) if config.trace else None)
        gdb = GdbStub(config.gdb_port, config.gdb_wait) if config.gdb_port is not None else None
        vm = VirtualMachine(engine, memory, bus, console, mode, limits, memory.until_address, tracer, gdb,
                            VirtualClock(config.clock))
        # The engine's walk of the guest's own tables (direct; vt with nested paging) makes
        # guest-physical addresses engine-physical ones; the other schemes map every page.
        memory.serve_unassigned(config.mode == "direct" or (config.mode == "vt" and config.paging_scheme == "nested"),
                                lambda: vm.cpu.table_register("gdtr")[0])
        memory.mmio.on_unassigned = _unassigned_handler(tracer, config.unassigned == "stop")
    except BaseException:
        memory.release()              # a shared pool gets the frames of a machine never built back
        raise

    # Port map (cf. kvmtool x86/ioport.c):
    #   0x0020 - 0x0021  i8259 master     0x00A0 - 0x00A1  i8259 slave
    #   0x0040 - 0x0043  i8254 PIT (channel 0 on IRQ0)
    #   0x00F4 - 0x00F7  isa-debug-exit
    #   0x03F8 - 0x03FF  COM1 16550A UART
    vm.interrupts.register(bus)
    bus.register(DEBUG_EXIT_PORT, DEBUG_EXIT_PORTS, DebugExit(
        lambda value: vm.request_stop(StopReason.DEBUG_EXIT, f"guest wrote {value:#x} to isa-debug-exit", value)))
    bus.register(COM1_BASE, UART_PORTS, Uart16550(console))
    return vm, image
