"""The sample-guest manifest (sample_binaries/samples.json) and the build tool that owns it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_script(relative_path: str):
    """A script of the repository (tools/build_samples.py, bench/*.py: not in a package), loaded
    by path once, as the module named after its file."""
    name = Path(relative_path).stem
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


build_samples = load_script("tools/build_samples.py")
MANIFEST = build_samples.load_manifest()


def ids(entries):
    return [entry["name"] for entry in entries]
