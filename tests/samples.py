"""The sample-guest manifest (sample_binaries/samples.json) and the build tool that owns it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _load_build_samples():
    """tools/build_samples.py is a script: load it by path."""
    if "build_samples" in sys.modules:
        return sys.modules["build_samples"]
    spec = importlib.util.spec_from_file_location("build_samples", REPO_ROOT / "tools" / "build_samples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["build_samples"] = module
    spec.loader.exec_module(module)
    return module


build_samples = _load_build_samples()
MANIFEST = build_samples.load_manifest()


def ids(entries):
    return [entry["name"] for entry in entries]
