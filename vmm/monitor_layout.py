"""The map of the monitor's region: every area's offset, size, engine permissions and owner, in one table that every user imports (as Firecracker's arch/x86_64/layout.rs)."""

from __future__ import annotations

from dataclasses import dataclass

from translator.layout import LOOKUP_TABLE_SIZE
from vmm.engine import PROT_EXEC, PROT_READ, PROT_WRITE

# The monitor keeps its own structures (boot descriptor table, translation cache, lookup table,
# virtual-CPU block) at the top of the 32-bit physical space, above any guest RAM, as VMware and
# Xen reserve the top of the address space for themselves. Parts are mapped into the engine only
# when used, each with its own permissions (PhysicalMemory.map_monitor_area); the rest is a hole.
MONITOR_BASE = 0xFF000000
MONITOR_SIZE = 0x1000000                 # 16 MiB, to the end of the 32-bit physical space
# Under bt the engine runs translated code in long mode and sees the same areas at this linear
# address, far above anything a 32-bit guest address reaches (docs/isolation.md).
MONITOR_LINEAR = 0x7F0000000000

# The translation cache's arena holds each block's code in a piece of its size (cache/arena.py: a
# buddy allocator of 32-byte granules); a block's code is at most one slot (a block whose code is
# longer is retranslated shorter), and the arena's first slot is bt's one-shot slot.
ARENA_SLOT_SIZE = 256                    # (not the 5-byte exit slot: translator/emitter.py)
ARENA_SIZE = 0x800000                    # 8 MiB
# The cache's capacity in blocks (--tcache-size), each numbered for its --profile counter (one u32
# a block). The default is the largest: the arena, not the count, bounds the cache then (blocks
# average about 105 bytes of code, their pieces about 135). The Linux boot to its power-off, with
# fixed 256-byte slots (32,767 blocks): 106,858 translations for 78,890 distinct keys, 67,404
# evictions; with pieces: 83,812 translations, 13,549 evictions, about 63,000 blocks cached.
MAX_TCACHE_BLOCKS = 65535
DEFAULT_TCACHE_BLOCKS = MAX_TCACHE_BLOCKS

# Offsets from MONITOR_BASE (physical) and MONITOR_LINEAR (bt's linear view); sizes in bytes.
BOOT_GDT_OFFSET, BOOT_GDT_SIZE = 0x0, 0x1000
DIRECTORY_OFFSET, DIRECTORY_SIZE = 0x4000, 0x1000
SHADOW_GDT_OFFSET, SHADOW_GDT_SIZE = 0x10000, 0x10000      # 8192 descriptors: the architectural maximum
SHADOW_LDT_OFFSET, SHADOW_LDT_SIZE = 0x20000, 0x10000
LOOKUP_OFFSET, LOOKUP_SIZE = 0x40000, LOOKUP_TABLE_SIZE
# The pages translated code touches on every block sit where guest pages rarely are for the
# engine's TLB, which is direct mapped by page number mod 256: at offsets 0xE8000-0xEA000 (both
# bases are multiples of 1 MiB) they share slots with guest pages 0x0E8-0x0EA (the BIOS area)
# and 0x1E8.. (2 MiB into a kernel), not with a kernel's first pages at 1 MiB (offset 0x2000 made
# a guest store to 0x102000 and a monitor access evict each other: 5x slower loops).
VCPU_OFFSET, VCPU_SIZE = 0xE8000, 0x1000
SCRATCH_OFFSET, SCRATCH_SIZE = 0xE9000, 0x1000
VCPU_PRIVILEGED_OFFSET, VCPU_PRIVILEGED_SIZE = 0xEA000, 0x1000
TABLES_OFFSET, TABLES_SIZE = 0x100000, 0x310000    # 4 KiB page tables for up to 3 GiB of RAM + the monitor
# trap's shadow GDT and LDT, one view per virtual ring (vmm/shadow_tables.py): 4 x (GDT + LDT)
RING_VIEWS_OFFSET, RING_VIEWS_SIZE = 0x410000, 0x80000
PROFILE_OFFSET, PROFILE_SIZE = 0x490000, (MAX_TCACHE_BLOCKS + 1) * 4
ARENA_OFFSET = 0x500000
POOL_OFFSET, POOL_SIZE = 0xD00000, 0x2F0000         # 752 pages of shadow page tables
UNASSIGNED_PAGE_OFFSET, UNASSIGNED_PAGE_SIZE = MONITOR_SIZE - 0x2000, 0x1000
UNTIL_PAGE_OFFSET, UNTIL_PAGE_SIZE = MONITOR_SIZE - 0x1000, 0x1000


@dataclass(frozen=True)
class Area:
    """One area of the monitor region. `perms` are the engine's (PROT_*) where it is mapped;
    `supervisor` areas are mapped supervisor-only in bt's linear view; `owner` writes it."""
    name: str
    offset: int
    size: int
    perms: int
    owner: str
    what: str
    supervisor: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def access(self) -> str:
        """The engine's permissions in words, as docs/architecture.md shows them."""
        words = [word for bit, word in ((PROT_READ, "read"), (PROT_WRITE, "write"), (PROT_EXEC, "execute"))
                 if self.perms & bit]
        return "/".join(words) + (", supervisor-only" if self.supervisor else "")


AREAS = (
    Area("boot GDT", BOOT_GDT_OFFSET, BOOT_GDT_SIZE, PROT_READ | PROT_WRITE, "vmm/boot.py",
         "boot GDT (descriptors pre-marked accessed), MMIO: the table while the guest's GDTR names it, "
         "else unassigned memory (vmm/memory.py)"),
    Area("directory", DIRECTORY_OFFSET, DIRECTORY_SIZE, PROT_READ, "vmm/monitor_paging.py",
         "PML4 of the monitor's long-mode tables (bt)"),
    Area("shadow GDT", SHADOW_GDT_OFFSET, SHADOW_GDT_SIZE, PROT_READ, "vmm/shadow_tables.py",
         "shadow GDT (bt)", supervisor=True),
    Area("shadow LDT", SHADOW_LDT_OFFSET, SHADOW_LDT_SIZE, PROT_READ, "vmm/shadow_tables.py",
         "shadow LDT (bt)", supervisor=True),
    Area("lookup table", LOOKUP_OFFSET, LOOKUP_SIZE, PROT_READ, "cache/tcache.py",
         "lookup table, 65536 entries of (guest, host) (bt)"),
    Area("vcpu", VCPU_OFFSET, VCPU_SIZE, PROT_READ, "vmm/modes/bt/vcpu.py",
         "virtual-CPU block (bt)"),
    Area("scratch", SCRATCH_OFFSET, SCRATCH_SIZE, PROT_READ | PROT_WRITE, "vmm/modes/bt/mode.py",
         "scratch page: instruction budget (its high half: the wake for host input), I/O site, a small "
         "monitor stack for pushfq/popfq (bt)"),
    Area("vcpu privileged", VCPU_PRIVILEGED_OFFSET, VCPU_PRIVILEGED_SIZE, PROT_READ, "vmm/modes/bt/vcpu.py",
         "privileged virtual-CPU page: control registers for `mov r, crN` (bt)", supervisor=True),
    Area("page tables", TABLES_OFFSET, TABLES_SIZE, PROT_READ, "vmm/monitor_paging.py",
         "the monitor's long-mode page tables (bt)"),
    Area("ring views", RING_VIEWS_OFFSET, RING_VIEWS_SIZE, PROT_READ, "vmm/shadow_tables.py",
         "shadow GDT and LDT of each virtual ring, 64 KiB each, ring 0's first (trap): supervisor-only in "
         "trap's shadow and flat tables; under nested paging at MONITOR_LINEAR + offset"),
    Area("profile", PROFILE_OFFSET, PROFILE_SIZE, PROT_READ | PROT_WRITE, "cache/tcache.py",
         "execution counters, one per cached block (bt, --profile)"),
    Area("arena", ARENA_OFFSET, ARENA_SIZE, PROT_READ | PROT_EXEC, "cache/arena.py",
         f"translation cache arena, {ARENA_SIZE >> 20} MiB: each block's code in a piece of its size, "
         f"at most {ARENA_SLOT_SIZE} bytes (bt)"),
    Area("shadow pool", POOL_OFFSET, POOL_SIZE, PROT_READ, "vmm/shadow_paging.py",
         "pool of shadow page directories and tables (shadow paging) and of trap's and vt's flat tables, in "
         "no linear map"),
    Area("unassigned page", UNASSIGNED_PAGE_OFFSET, UNASSIGNED_PAGE_SIZE, PROT_READ | PROT_WRITE, "vmm/memory.py",
         "MMIO: unassigned memory (reads 0, stores dropped) for guest pages behind the monitor's own areas "
         "(trap, vt: 32-bit shadow entries, and trap's loans of them)"),
    Area("until", UNTIL_PAGE_OFFSET, UNTIL_PAGE_SIZE, PROT_READ | PROT_EXEC, "vmm/memory.py",
         "the never-executed `until` page"),
)


def markdown_table() -> str:
    """docs/architecture.md's "Monitor region" table, made from AREAS (tests check they agree)."""
    rows = ["| offset | size | area | engine access | owner |", "|---|---|---|---|---|"]
    for area in AREAS:
        size = f"{area.size >> 20} MiB" if area.size % 0x100000 == 0 else f"0x{area.size:X}"
        rows.append(f"| 0x{area.offset:06X} | {size} | {area.what} | {area.access} | {area.owner} |")
    return "\n".join(rows)
