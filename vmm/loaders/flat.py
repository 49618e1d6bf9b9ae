"""Flat binaries: raw bytes copied to --load-addr and entered at their first byte."""

from __future__ import annotations

from vmm.loaders import LoadedImage, check_placement


def load(name, data, memory, load_address, reserved=()) -> LoadedImage:
    check_placement(memory, f"{name}: flat image", load_address, len(data), reserved)
    memory.write(load_address, data)
    end = load_address + len(data)
    return LoadedImage("flat", load_address, load_address, end, [(load_address, len(data))])
