"""The one place a machine is assembled from its configuration: memory, devices, image, CPU, mode."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from vmm.bios import write_firmware_state
from vmm.boot import enter_linux, enter_protected_mode
from vmm.bus import PortBus
from vmm.clock import CPU_HZ, VirtualClock
from vmm.console import Console, NullConsole
from vmm.devices.bmdma import BusMasterIde
from vmm.devices.acpi_pm import APM_BASE, APM_PORTS, GPE0_BASE, GPE0_LENGTH, PM_BASE, PM_PORTS, SCI_IRQ, AcpiPm, Apm
from vmm.devices.debug_exit import DEBUG_EXIT_PORT, DEBUG_EXIT_PORTS, DebugExit
from vmm.devices.hpet import HPET_BASE, HPET_SIZE, Hpet
from vmm.devices.ide import IDE_BASE, IDE_CONTROL, IDE_IRQ, IDE_PORTS, IdeChannel
from vmm.devices.i8042 import I8042, I8042_COMMAND, I8042_DATA
from vmm.devices.mc146818 import MC146818, VIRTUAL_START_EPOCH
from vmm.devices.pci import CONFIG_DATA, IDE_BMDMA_SIZE, PciHost, host_bridge, ide_function, isa_bridge
from vmm.devices.reset import PORT92, RESET_CONTROL, Port92, ResetControl
from vmm.devices.uart16550 import COM1_BASE, COM1_IRQ, COM2_BASE, COM2_IRQ, UART_PORTS, Uart16550
from vmm.devices.vga import VGA_BASE, VGA_PORTS, VgaText
from vmm.disks import DriveSpec, open_drives
from vmm.dma import DmaRemapper
from vmm.engine import Engine
from vmm.errors import ConfigError
from vmm.exits import StopReason
from vmm.frames import FramePool
from vmm.loaders import LoadedImage, load_image
from vmm.loaders import bzimage, multiboot
from vmm.memory import PhysicalMemory, UnbackedAccess
from vmm.modes import DEFAULT_MODE, available_modes
from vmm.monitor_layout import MAX_TCACHE_BLOCKS
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
    drives: list[DriveSpec] = field(default_factory=list)   # --drive: IDE disks (vmm/disks.py)

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
                  pool: Optional[FramePool] = None, keyboard: Optional[Console] = None) -> tuple[VirtualMachine, LoadedImage]:
    """A machine ready to run. Its RAM is frames of `pool` (machines given the same pool share
    its host memory, never its frames), or of a private pool sized for it; nothing is shared
    between machines otherwise. memory.release() gives the frames back. `keyboard`'s input
    (host bytes) is typed on the PS/2 keyboard (vmm/keyboard.py); without it, nothing is."""
    config.validate()
    engine = Engine(long_mode=available_modes()[config.mode].long_mode)
    memory = PhysicalMemory(engine, config.mem_mib, pool)
    # Wall time at the start: a fixed date under the virtual clock (every run the same), the
    # host's under --clock realtime (UTC, as QEMU's default -rtc base=utc).
    start_epoch = VIRTUAL_START_EPOCH if config.clock == "virtual" else int(time.time())
    try:
        write_firmware_state(memory, start_epoch)      # before the image: its bytes win, as on QEMU
        image = load_image(config.image, memory, config.load_address)
        if image.kind == "linux":
            boot_params = bzimage.write_boot_params(memory, config.image, image, config.append, config.initrd)
            enter_linux(engine, memory, image.entry, boot_params)
        else:
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
        disks = open_drives(config.drives)
    except BaseException:
        memory.release()              # a shared pool gets the frames of a machine never built back
        raise

    # Port map (QEMU's pc machine; docs/architecture.md has the table):
    #   0x0020 - 0x0021  i8259 master     0x00A0 - 0x00A1  i8259 slave
    #   0x0040 - 0x0043  i8254 PIT (channel 0 on IRQ0)
    #   0x0060, 0x0064   i8042 PS/2 controller and keyboard (IRQ1)
    #   0x0061           port B: PIT channel 2's gate and OUT (the platform's: vmm/interrupts.py)
    #   0x0070 - 0x0071  MC146818 RTC/CMOS (IRQ8)
    #   0x0092           port 92: A20 gate, fast reset
    #   0x00B2 - 0x00B3  APM control and status (0xB2 is the FADT's SMI_CMD)
    #   0x00F4 - 0x00F7  isa-debug-exit
    #   0x01F0 - 0x01F7  IDE primary channel command block (IRQ 14), 0x03F6 its control register
    #   0x02F8 - 0x02FF  COM2 16550A UART (IRQ3, nothing attached)
    #   0x03C0 - 0x03DF  VGA (CRT controller at 0x3D4/0x3D5)
    #   0x03F8 - 0x03FF  COM1 16550A UART (IRQ4, the console)
    #   0x0600 - 0x063F  PIIX4 PM (SeaBIOS's PMBA): PM1a event, control, the PM timer (SCI on IRQ 9)
    #   0x0CF8, 0x0CFA   PCI CONFIG_ADDRESS      0x0CFC - 0x0CFF  PCI CONFIG_DATA
    #   0x0CF9           reset control register
    #   0xAFE0 - 0xAFE3  PIIX4 GPE0 block
    #   0xC000 - 0xC00F  PIIX3 IDE bus-master registers (BAR4: where the guest puts them)
    interrupts = vm.interrupts
    interrupts.register(bus)
    # The local APIC (0xFEE00000) and the I/O APIC (0xFEC00000) on the MMIO bus; the APIC's MSR
    # and CPUID bit through the guest's CPU view; an APIC write that needs the run to end asks
    # the mode (from inside the engine's access).
    interrupts.register_mmio(memory.mmio)
    interrupts.end_run = vm.mode.end_run_after_mmio
    vm.cpu.platform = interrupts

    def reset(why: str) -> None:
        vm.request_stop(StopReason.RESET, f"guest reset the machine: {why}")

    # The HPET (0xFED00000) and the PIIX4's ACPI registers on guest time; the RTC's IRQ 8 goes
    # through the HPET, which cuts it (and the PIT's IRQ0) off in legacy replacement mode.
    vm.clock.in_flight = vm.mode.instructions_in_flight
    hpet = Hpet(interrupts.precise_now_ns, interrupts.set_gsi)
    interrupts.hpet = hpet
    interrupts.timers.append(hpet)
    interrupts.clocked_mmio(hpet, HPET_BASE, HPET_SIZE, memory.mmio)
    acpi_pm = AcpiPm(interrupts.precise_now_ns, interrupts.device_irq(SCI_IRQ),
                     power_off=lambda why: vm.request_stop(StopReason.POWERED_OFF, f"guest powered off: {why}"),
                     suspend=lambda why: vm.request_stop(StopReason.UNSUPPORTED, f"{why}: not modelled"))
    interrupts.timers.append(acpi_pm)
    interrupts.clocked_ports(acpi_pm, PM_BASE, PM_PORTS, bus, timer=True)
    interrupts.clocked_ports(acpi_pm.gpe_port(), GPE0_BASE, GPE0_LENGTH, bus)
    apm = Apm(acpi_pm.apm_control)
    bus.register(APM_BASE, APM_PORTS, apm)
    rtc_irq = interrupts.device_irq(8)
    hpet.rtc_irq = rtc_irq
    rtc = MC146818(lambda: vm.clock.cycles, CPU_HZ, start_epoch, memory.ram_size, hpet.rtc_input)
    interrupts.attach_rtc(rtc, bus)
    kbc = I8042(reset, lambda irq, level: interrupts.device_irq(irq)(level), host_input=keyboard)
    bus.register(I8042_DATA, 1, kbc)
    bus.register(I8042_COMMAND, 1, kbc.command_port())
    if keyboard is not None:
        interrupts.input_sources.append(kbc)      # typed keys wake the guest as COM1's bytes do
        vm.at_exit.append(keyboard.close)
    port92, reset_control = Port92(reset), ResetControl(reset)
    bus.register(PORT92, 1, port92)
    bus.register(RESET_CONTROL, 1, reset_control)
    bus.register(DEBUG_EXIT_PORT, DEBUG_EXIT_PORTS, DebugExit(
        lambda value: vm.request_stop(StopReason.DEBUG_EXIT, f"guest wrote {value:#x} to isa-debug-exit", value)))
    # The UARTs are on guest time for their receive FIFO's character timeout: a deadline each,
    # which they tell the platform when it moves and the platform fires.
    com1 = Uart16550(console, interrupts.device_irq(COM1_IRQ), name="com1",
                     now_ns=interrupts.precise_now_ns, deadline_moved=interrupts.deadline_moved)
    com2 = Uart16550(NullConsole(), interrupts.device_irq(COM2_IRQ), name="com2",
                     now_ns=interrupts.precise_now_ns, deadline_moved=interrupts.deadline_moved)
    bus.register(COM1_BASE, UART_PORTS, com1)
    bus.register(COM2_BASE, UART_PORTS, com2)
    interrupts.input_sources += [com1, com2]
    interrupts.timers += [com1, com2]
    vga = VgaText(memory.read)
    bus.register(VGA_BASE, VGA_PORTS, vga)
    vm.screen = vga
    vm.devices.update({device.name: device for device in (rtc, kbc, port92, reset_control, com1, com2, vga,
                                                          interrupts.apic, interrupts.ioapic, hpet, acpi_pm, apm)})
    vm.ide = IdeChannel(disks, interrupts.device_irq(IDE_IRQ), tracer.disk_command if tracer.disk else None)
    vm.at_exit.append(vm.ide.close)       # what the guest wrote is in the files when the run ends
    bus.register(IDE_BASE, IDE_PORTS, vm.ide)
    bus.register(IDE_CONTROL, 1, vm.ide.control)
    # PCI bus 0 as QEMU's pc machine has it: the i440FX, the PIIX3's ISA bridge and IDE function,
    # whose bus master reaches guest RAM only through the DMA remapping (vmm/dma.py).
    bmdma = BusMasterIde(DmaRemapper(memory), lambda: ide_pci.bus_master)
    ide_pci = ide_function(lambda base: bus.map_overlay(base, IDE_BMDMA_SIZE, bmdma))
    vm.ide.dma, bmdma.channels[0].ide = bmdma.channels[0], vm.ide
    pci = PciHost([host_bridge(memory.ram_size), isa_bridge(), ide_pci])
    for base, length, port in pci.address_ports:
        bus.register(base, length, port)
    bus.register(CONFIG_DATA, 4, pci)
    vm.devices.update({"pci": pci, "bmdma": bmdma})
    return vm, image
