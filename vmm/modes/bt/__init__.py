"""Binary translation, in the VMware style (the mode's facade: mode.py): a package of collaborators,
each owning its own state, so the names importers use stay `vmm.modes.bt.*`."""

from vmm.modes.bt.budget import BUDGET_MAX, InstructionBudget
from vmm.modes.bt.mode import CACHE_COUNTERS, CACHE_EXIT_KINDS, ONE_SHOT_SLOT, BinaryTranslationMode
from vmm.modes.bt.vcpu import CODE64_SELECTOR, SEGMENT_IDS, SEGMENT_NAMES, TranslatedCpu, VcpuBlock

__all__ = ["BUDGET_MAX", "CACHE_COUNTERS", "CACHE_EXIT_KINDS", "CODE64_SELECTOR", "ONE_SHOT_SLOT",
           "SEGMENT_IDS", "SEGMENT_NAMES", "BinaryTranslationMode", "InstructionBudget", "TranslatedCpu", "VcpuBlock"]
