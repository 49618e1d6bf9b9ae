"""The translation cache as data: every block, its code, exits, links and rewrites, for
`vmm run --dump-cache` and the inspection tool."""

from __future__ import annotations

from cache.tcache import TranslationCache


def dump_cache(cache: TranslationCache) -> dict:
    blocks = []
    for position, block in enumerate(cache.blocks()):       # most recently used first
        translation = block.translation
        exits = []
        for index, site in enumerate(translation.exits):
            target = block.links.get(index)
            exits.append({
                "index": index,
                "kind": site.kind.value,
                "host_offset": site.offset,
                "guest_target": site.guest_eip if site.chainable else None,
                "instruction": site.owner,
                "chained_to": None if target is None else {"guest": target.guest.address, "host": target.host},
            })
        blocks.append({
            "guest_address": block.guest.address,
            "guest_size": block.guest.guest_size,
            "guest_bytes": b"".join(i.bytes for i in block.guest.instructions).hex(),
            "instructions": [{"address": i.address, "text": str(i), "handling": i.rule.handling.value,
                              "category": i.rule.category.value} for i in block.guest.instructions],
            "end": block.guest.end.value,
            "key": {"eip": block.key.eip, "single_step": block.key.single_step, "physical": block.key.physical},
            "guest_physical": [list(r) for r in block.ranges],    # where its bytes are (paging)
            "host_address": block.host,
            "host_size": block.host_size,
            # as the cache holds it now: chained exits and filled inline caches patched in
            "host_bytes": cache.arena.read(block.host, block.host_size).hex(),
            "lru_position": position,
            "executions": cache.executions(block),
            "exits": exits,
            "incoming": sorted(({"guest": source.guest.address, "exit": index} for source, index in block.incoming),
                               key=lambda link: (link["guest"], link["exit"])),
            "rewrites": [{"guest_address": r.guest_eip, "text": r.text, "handling": r.handling.value,
                          "procedure": r.procedure.value, "host_offset": r.host_offset, "host_size": r.host_size}
                         for r in translation.rewrites],
            "pc_map": [[entry.offset, entry.guest_eip] for entry in translation.pc_map],
        })
    return {
        "format": "vmm-tcache/1",
        "capacity_blocks": cache.capacity,
        "slot_size": cache.arena.slot_size,
        "counters": dict(sorted(cache.counters.items())),
        "events_total": cache.counters["events"],
        "events": [{"event": event, "guest_address": address, "cause": cause} for event, address, cause in cache.events],
        "blocks": blocks,
    }
