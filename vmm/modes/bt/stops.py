"""Why translated code returned to the monitor (CacheExit, noted by the interrupt hook) and what
handling it decided (Resume, RunOneShot or Exit), shared by bt's dispatcher and fault handler."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Union

from cache.tcache import TranslatedBlock
from translator.emitter import ExitSite
from vmm.exits import VmExit


class CacheExitKind(enum.Enum):
    SITE = "site"                 # an int3 exit site of a translation (or of the one-shot)
    FAULT = "fault"               # an exception of a guest instruction, reflected to the guest
    PAGE_FAULT = "page_fault"     # a #PF of the monitor's tables (hidden, true, SMC) or a nested refusal


@dataclass
class CacheExit:
    """Why translated code returned to the monitor, noted by the interrupt hook."""
    kind: CacheExitKind
    host_eip: int
    block: Optional[TranslatedBlock] = None
    site_index: int = 0
    site: Optional[ExitSite] = None
    vector: int = 0
    error_code: int = 0
    address: int = 0              # page faults: the linear address (CR2)


@dataclass(frozen=True)
class Resume:
    """Go on running translated code at a host address."""
    host: int


@dataclass(frozen=True)
class RunOneShot:
    """Run the guest instruction at `eip` alone, outside the cache, next."""
    eip: int


@dataclass(frozen=True)
class Exit:
    """Leave translated code for the run loop."""
    vm_exit: VmExit


Outcome = Union[Resume, RunOneShot, Exit]
