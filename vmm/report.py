"""The machine-readable account of a run: what ran, how it ended, final registers, counters."""

from __future__ import annotations

import json

from vmm.builder import MachineConfig
from vmm.exits import ExitReason, RunResult
from vmm.loaders import LoadedImage
from vmm.vm import VirtualMachine
from vmm.x86 import vector_name


def build_report(config: MachineConfig, image: LoadedImage, vm: VirtualMachine, result: RunResult) -> dict:
    return {
        "image": config.image,
        "image_kind": image.kind,
        "entry": image.entry,
        "mode": config.mode,
        "paging": config.paging_scheme,
        "memory_mib": config.mem_mib,
        "exit": {
            "reason": result.reason.value,
            "status": result.exit_status,
            "guest_value": result.guest_value,
            "message": result.message,
        },
        "registers": result.registers,
        "counters": {
            "exits": {reason.value: vm.exits[reason] for reason in sorted(ExitReason, key=lambda r: r.value)},
            "port_io": vm.bus.counters(),
            "mmio": vm.memory.mmio.counters(),
            "exceptions": {f"{vector} {vector_name(vector)}": count
                           for vector, count in sorted(vm.delivery.delivered.items())},
            "external_interrupts": {f"{vector:#04x}": count for vector, count in sorted(vm.external_interrupts.items())},
            "callouts": vm.emulator.counters(),
            "task_switches": dict(sorted(vm.tasks.performed.items())),
            "disks": vm.ide.counters() if vm.ide is not None else {},
            "clock": {"kind": "realtime" if vm.clock.realtime else "virtual", "cycles": vm.clock.cycles,
                      "idle_cycles": vm.clock.idle_cycles, "time_in_use": vm.interrupts.in_use},
            **vm.mode.counters(),
        },
        "screen": vm.screen.screen() if vm.screen is not None else None,
        "devices": {name: device.state() for name, device in sorted(vm.devices.items())},
        "wall_time_s": round(vm.wall_time, 6),
        # the monitor's handling of each exit (counters.exits) and the interrupt window after it, by reason
        "exit_seconds": {reason.value: round(vm.exit_seconds[reason], 6)
                         for reason in sorted(ExitReason, key=lambda r: r.value)},
        "physical_to_machine": vm.memory.p2m.as_json(),
        "frame_pool": vm.memory.pool.counters(),
    }


def write_report(path: str, report: dict) -> None:
    with open(path, "w") as handle:
        json.dump(report, handle, indent=2)
        handle.write("\n")
