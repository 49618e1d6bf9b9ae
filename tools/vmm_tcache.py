"""vmm-tcache: inspect the binary translator's translation cache.

Input is either a guest image, which is run under `--mode bt` with the same options as `vmm run`
(its console output is captured, never printed), or a cache dump written by
`vmm run --dump-cache FILE.json` (recognised by content: JSON whose "format" is "vmm-tcache/1").

Views: a table of every block (default); `--block ADDR` / `--range LO-HI` side by side guest and
translated code aligned by the block's pc_map; `--summary`; `--dot FILE` for the chained-block
graph. `--json` prints the asked view as JSON. Every failure is one line on stderr and a non-zero
status.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
from typing import Optional, Sequence

if __package__ in (None, ""):   # run as `python tools/vmm_tcache.py`: make the repository importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vmm.builder import build_machine  # noqa: E402
from vmm.cli import Parser, add_guest_arguments, guest_config, parse_address  # noqa: E402
from vmm.console import BufferConsole  # noqa: E402
from vmm.errors import VmmError  # noqa: E402
from vmm.x86 import PAGE_SHIFT  # noqa: E402

PROG = "vmm-tcache"
DUMP_FORMAT = "vmm-tcache/1"
EXIT_SLOT = "exit slot"
PROFILE_MESSAGE = "no execution counts: run the image with --profile (or dump it with vmm run --profile --dump-cache)"


class ToolError(Exception):
    """One line on stderr and this exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# -- arguments ------------------------------------------------------------------------------------

def _range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    if not sep:
        raise argparse.ArgumentTypeError(f"invalid range {text!r} (expected LO-HI)")
    low, high = parse_address(lo.strip()), parse_address(hi.strip())
    if not 0 <= low < high <= 1 << 32:
        raise argparse.ArgumentTypeError(f"invalid range {text!r} (need 0 <= LO < HI <= 0x100000000)")
    return low, high


def _positive(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"count must be positive, got {value}")
    return value


def _guest_address(text: str) -> int:
    value = parse_address(text)
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"invalid address {text!r} (not a 32-bit address)")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = Parser(prog=PROG, description="Inspect the translation cache of a guest run under binary translation.")
    parser.add_argument("input", metavar="IMAGE|DUMP.json",
                        help="a guest image (run under bt) or a dump written by `vmm run --dump-cache`")
    run = parser.add_argument_group("running a guest image (as `vmm run --mode bt`)")
    add_guest_arguments(run)
    view = parser.add_argument_group("views")
    view.add_argument("--block", type=_guest_address, default=None, metavar="ADDR",
                      help="side by side guest and translated code of the block(s) holding ADDR")
    view.add_argument("--range", type=_range, default=None, metavar="LO-HI",
                      help="only blocks overlapping [LO, HI); shown side by side unless --table")
    view.add_argument("--table", action="store_true", help="the block table even with --block/--range")
    view.add_argument("--summary", action="store_true",
                      help="blocks per page, evictions/invalidations, exits by reason, rewrites by class")
    view.add_argument("--profile", action="store_true",
                      help="count executions inside the cache and show the hottest blocks (with --top N)")
    view.add_argument("--json", action="store_true", help="machine-readable output of the asked view")
    view.add_argument("--dot", default=None, metavar="FILE",
                      help="write the chained-block graph (rendered if FILE is .png/.svg and Graphviz is installed)")
    view.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                      help="ANSI colour in terminal output (auto: only when stdout is a terminal)")
    filters = parser.add_argument_group("filters")
    filters.add_argument("--sensitive-only", action="store_true",
                         help="only blocks holding a rewrite other than an exit slot")
    filters.add_argument("--top", type=_positive, default=None, metavar="N",
                         help="only the first N blocks by LRU position (most recently used first)")
    return parser


# -- input ----------------------------------------------------------------------------------------

def _looks_like_json(raw: bytes) -> bool:
    return raw.lstrip()[:1] in (b"{", b"[")


def load_input(args: argparse.Namespace) -> tuple[dict, Optional[dict]]:
    """Returns (dump, run) where run describes the guest run when the tool ran the image itself."""
    path = args.input
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except IsADirectoryError:
        raise ToolError(f"{path}: is a directory") from None
    except OSError as error:
        raise ToolError(f"{path}: {error.strerror}") from None
    if _looks_like_json(raw) or path.lower().endswith(".json"):
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as error:
            raise ToolError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(document, dict) or document.get("format") != DUMP_FORMAT:
            found = document.get("format") if isinstance(document, dict) else None
            raise ToolError(f"{path}: not a {DUMP_FORMAT} cache dump (format {found!r})")
        args.input_is_dump = True
        validate_dump(document, path)
        return document, None
    return run_image(args)


def validate_dump(dump: dict, path: str) -> None:
    blocks = dump.get("blocks")
    if not isinstance(blocks, list):
        raise ToolError(f"{path}: malformed dump: no block list")
    needed = ("guest_address", "guest_size", "instructions", "host_address", "host_size", "host_bytes",
              "lru_position", "exits", "incoming", "rewrites", "pc_map", "key")
    for number, block in enumerate(blocks):
        if not isinstance(block, dict):
            raise ToolError(f"{path}: malformed dump: block {number} is not an object")
        missing = [name for name in needed if name not in block]
        if missing:
            raise ToolError(f"{path}: malformed dump: block {number} has no {', '.join(missing)}")
        try:
            bytes.fromhex(block["host_bytes"])
        except (TypeError, ValueError):
            raise ToolError(f"{path}: malformed dump: block {number} host_bytes is not hex") from None


def run_image(args: argparse.Namespace) -> tuple[dict, dict]:
    from vmm.report import build_report
    config = guest_config(args, args.input, "bt", profile=args.profile)
    console = BufferConsole()
    try:
        vm, image = build_machine(config, console)
        result = vm.run()
        report = build_report(config, image, vm, result)
        dump = vm.mode.dump()
    except VmmError as error:
        raise ToolError(str(error), error.exit_status) from None
    except OSError as error:
        raise ToolError(f"{error.filename or args.input}: {error.strerror}") from None
    run = {"image": args.input, "exit": report["exit"], "counters": report["counters"],
           "console_bytes": len(console.output)}
    return dump, run


# -- selection ------------------------------------------------------------------------------------

def block_end(block: dict) -> int:
    return block["guest_address"] + max(block["guest_size"], 1)


def is_sensitive(block: dict) -> bool:
    return any(rewrite["handling"] != EXIT_SLOT for rewrite in block["rewrites"])


def select_blocks(dump: dict, args: argparse.Namespace) -> list[dict]:
    blocks = list(dump["blocks"])
    if args.block is not None:
        blocks = [b for b in blocks if b["guest_address"] <= args.block < block_end(b)]
        if not blocks:
            raise ToolError(f"no translated block holds guest address {args.block:#x}")
    if args.range is not None:
        low, high = args.range
        blocks = [b for b in blocks if b["guest_address"] < high and block_end(b) > low]
    if args.sensitive_only:
        blocks = [b for b in blocks if is_sensitive(b)]
    if args.top is not None:
        return sorted(blocks, key=lambda b: b["lru_position"])[:args.top]
    return sorted(blocks, key=lambda b: (b["guest_address"], b["lru_position"]))


# -- output helpers -------------------------------------------------------------------------------

class Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled and text else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def mark(self, text: str) -> str:
        return self._wrap("33", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)


def _pad(text: str, plain: str, width: int) -> str:
    """Left-justify `text` (which may hold ANSI codes) by the width of its plain form."""
    return text + " " * max(0, width - len(plain))


def key_text(key: dict) -> str:
    text = f"{key.get('eip', 0):#x}"
    if key.get("single_step"):
        text += " tf"
    if key.get("cpl"):
        text += f" cpl{key['cpl']}"
    if key.get("address_space") is not None:
        text += f" as={key['address_space']:#x}" if isinstance(key["address_space"], int) else f" as={key['address_space']}"
    return text


def exit_text(exit: dict) -> str:
    chained = exit.get("chained_to")
    if chained:
        return f"{exit['kind']}->{chained['guest']:#x}"
    if exit.get("guest_target") is not None:
        return f"{exit['kind']}({exit['guest_target']:#x} unchained)"
    return exit["kind"]


def format_table(headers: list[str], rows: list[list[str]], style: Style, right: set[int] = frozenset()) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: list[str], header: bool = False) -> str:
        parts = []
        for i, cell in enumerate(cells):
            last = i == len(cells) - 1
            text = cell.rjust(widths[i]) if i in right else (cell if last else cell.ljust(widths[i]))
            parts.append(text)
        out = "  ".join(parts).rstrip()
        return style.bold(out) if header else out

    return "\n".join([line(headers, True)] + [line(r) for r in rows])


# -- the block table ------------------------------------------------------------------------------

def table_rows(blocks: list[dict]) -> list[dict]:
    return [{
        "guest_address": b["guest_address"], "guest_size": b["guest_size"], "instructions": len(b["instructions"]),
        "host_address": b["host_address"], "host_size": b["host_size"], "key": b["key"],
        "lru_position": b["lru_position"],
        "exits": [{"index": e["index"], "kind": e["kind"], "guest_target": e.get("guest_target"),
                   "chained_to": e.get("chained_to")} for e in b["exits"]],
        "incoming": len(b["incoming"]),
    } for b in blocks]


def render_table(blocks: list[dict], total: int, style: Style) -> str:
    headers = ["guest", "len", "insns", "host", "hsize", "key", "lru", "in", "exits (kind->chained guest)"]
    rows = [[f"{b['guest_address']:#010x}", str(b["guest_size"]), str(len(b["instructions"])),
             f"{b['host_address']:#010x}", str(b["host_size"]), key_text(b["key"]), str(b["lru_position"]),
             str(len(b["incoming"])), ", ".join(exit_text(e) for e in b["exits"]) or "-"] for b in blocks]
    footer = f"{len(blocks)} of {total} blocks"
    return format_table(headers, rows, style, right={1, 2, 4, 6, 7}) + "\n" + footer


# -- side by side ---------------------------------------------------------------------------------

def disassemble(code: bytes, address: int) -> list[dict]:
    from translator.x86decode import listing_with_data
    return [{"address": i.address, "offset": i.address - address, "size": i.size, "bytes": i.bytes.hex(),
             "text": f"{i.mnemonic} {i.op_str}".strip()}
            for i in listing_with_data(code, address, 64)]   # translated code is 64-bit (docs/isolation.md)


def side_by_side(block: dict) -> dict:
    """Guest instructions with the host instructions generated for each (by pc_map). Host code
    that pc_map attributes to an address outside the block (exit slots map to their branch
    target) stays with the guest instruction before it, tagged with that address."""
    host = disassemble(bytes.fromhex(block["host_bytes"]), block["host_address"])
    pc_map = sorted((int(offset), int(eip)) for offset, eip in block["pc_map"])
    guest_addresses = [i["address"] for i in block["instructions"]]
    rows = collections.OrderedDict((address, []) for address in guest_addresses)
    rewrites = collections.defaultdict(list)
    for rewrite in block["rewrites"]:
        rewrites[rewrite["guest_address"]].append(rewrite)
    exits_at = {e["host_offset"]: e for e in block["exits"]}
    spans = [(r["host_offset"], r["host_offset"] + r["host_size"], r["guest_address"]) for r in block["rewrites"]]
    current = guest_addresses[0] if guest_addresses else None
    for insn in host:
        mapped = None
        for offset, eip in pc_map:
            if offset > insn["offset"]:
                break
            mapped = eip
        entry = dict(insn)
        if mapped not in rows:      # an exit slot maps to its target: the rewrite's span names the instruction
            owner = next((eip for start, end, eip in spans if start <= insn["offset"] < end and eip in rows), None)
            if owner is not None:
                current = owner
                entry["pc_map_eip"] = mapped
                mapped = None
        if mapped in rows:
            current = mapped
        elif mapped is not None:
            entry["pc_map_eip"] = mapped
        exit = exits_at.get(insn["offset"])
        if exit is not None:
            entry["exit"] = exit
        if current is None:
            continue
        rows[current].append(entry)
    out_rows = []
    for guest in block["instructions"]:
        out_rows.append({"guest": guest, "rewrites": rewrites.get(guest["address"], []), "host": rows[guest["address"]]})
    return {"guest_address": block["guest_address"], "guest_size": block["guest_size"],
            "host_address": block["host_address"], "host_size": block["host_size"], "key": block["key"],
            "lru_position": block["lru_position"], "rows": out_rows}


def rewrite_label(rewrite: dict) -> str:
    return f"{rewrite['handling']}: {rewrite['procedure']}"


def host_label(entry: dict) -> str:
    text = f"{entry['address']:#010x}  {entry['text']}"
    notes = []
    if "exit" in entry:
        exit = entry["exit"]
        chained = exit.get("chained_to")
        notes.append(f"exit {exit['index']} {exit['kind']}"
                     + (f" chained to {chained['guest']:#x}" if chained else " unchained"))
    if "pc_map_eip" in entry:
        notes.append(f"pc_map {entry['pc_map_eip']:#x}")
    return text + (f"  ; {'; '.join(notes)}" if notes else "")


def render_side_by_side(views: list[dict], style: Style) -> str:
    chunks = []
    for view in views:
        header = (f"block {view['guest_address']:#010x} ({view['guest_size']} bytes, {len(view['rows'])} insns)"
                  f" -> {view['host_address']:#010x} ({view['host_size']} bytes)  key {key_text(view['key'])}"
                  f"  lru {view['lru_position']}")
        lines = [style.bold(header)]
        left = [f"{row['guest']['address']:#010x}  {row['guest']['text']}" for row in view["rows"]]
        marks = [", ".join(rewrite_label(r) for r in row["rewrites"]) for row in view["rows"]]
        lw = max([len("guest")] + [len(text) for text in left])
        mw = max([len("rewrite")] + [len(text) for text in marks])
        lines.append(style.bold(f"{'guest'.ljust(lw)} | {'rewrite'.ljust(mw)} | translated"))
        for row, text, mark in zip(view["rows"], left, marks):
            hosts = row["host"] or [None]
            for number, entry in enumerate(hosts):
                guest_cell = text if number == 0 else ""
                mark_cell = mark if number == 0 else ""
                host_cell = host_label(entry) if entry else style.dim("(no code)")
                lines.append(f"{guest_cell.ljust(lw)} | {_pad(style.mark(mark_cell), mark_cell, mw)} | {host_cell}".rstrip())
        chunks.append("\n".join(lines))
    return "\n\n".join(chunks) if chunks else "no blocks selected"


# -- summaries ------------------------------------------------------------------------------------

def summarize(dump: dict, blocks: list[dict], run: Optional[dict]) -> dict:
    pages = collections.defaultdict(lambda: {"blocks": 0, "instructions": 0, "guest_bytes": 0})
    for b in blocks:
        page = pages[b["guest_address"] >> PAGE_SHIFT << PAGE_SHIFT]
        page["blocks"] += 1
        page["instructions"] += len(b["instructions"])
        page["guest_bytes"] += b["guest_size"]
    counters = dump.get("counters", {})
    events = dump.get("events", [])
    by_event = collections.Counter((e.get("event"), e.get("cause")) for e in events)
    removal_counters = {name: value for name, value in counters.items()
                        if name == "evictions" or name.startswith("invalidations")}
    removals_counted = counters.get("evictions", 0) + counters.get("invalidations", 0)
    categories = collections.Counter()
    handlings = collections.Counter()
    procedures = collections.Counter()
    for b in blocks:
        category_of = {i["address"]: i.get("category") for i in b["instructions"]}
        for r in b["rewrites"]:
            categories[category_of.get(r["guest_address"], "unknown")] += 1
            handlings[r["handling"]] += 1
            procedures[r["procedure"]] += 1
    if run is not None:
        exits = {"source": "run", "exits": run["counters"].get("exits", {}),
                 "cache_exits": run["counters"].get("cache_exits", {})}
    elif "exits" in dump.get("run", {}):     # dumps written by `vmm run --dump-cache` say how the run went
        exits = {"source": "dump", "exits": dump["run"]["exits"], "cache_exits": dump["run"].get("cache_exits", {}),
                 "note": ""}
    else:
        exits = {"source": "dump", "exits": None, "cache_exits": None,
                 "note": "the dump holds no exit counts by reason; run the image with vmm-tcache for them"}
    exit_sites = collections.Counter(e["kind"] for b in blocks for e in b["exits"])
    summary = {
        "blocks": len(blocks),
        "blocks_in_cache": len(dump["blocks"]),
        "capacity_blocks": dump.get("capacity_blocks"),
        "slot_size": dump.get("slot_size"),
        "pages": {f"{page:#010x}": value for page, value in sorted(pages.items())},
        "removals": {
            "counters": dict(sorted(removal_counters.items())),
            "events": [{"event": event, "cause": cause, "count": count}
                       for (event, cause), count in sorted(by_event.items(), key=lambda i: (str(i[0][0]), str(i[0][1])))],
            "events_recorded": len(events),
            "events_truncated": len(events) < removals_counted,
        },
        "exits": exits,
        "exit_sites": dict(sorted(exit_sites.items())),
        "rewrites": {"by_category": dict(sorted(categories.items())), "by_handling": dict(sorted(handlings.items())),
                     "by_procedure": dict(sorted(procedures.items()))},
        "counters": counters,
        "hottest_blocks": hottest(blocks, 10) if _profiled(blocks) else PROFILE_MESSAGE,
    }
    if run is not None:
        summary["run"] = {"image": run["image"], "exit": run["exit"], "console_bytes": run["console_bytes"]}
    return summary


def _counts(title: str, counts: dict, style: Style) -> list[str]:
    lines = [style.bold(title)]
    if not counts:
        return lines + ["  (none)"]
    width = max(len(str(name)) for name in counts)
    return lines + [f"  {str(name).ljust(width)}  {value:>7}" for name, value in counts.items()]


def render_summary(summary: dict, style: Style) -> str:
    lines = []
    if "run" in summary:
        ex = summary["run"]["exit"]
        lines.append(f"guest {summary['run']['image']}: {ex['reason']} (status {ex['status']}), "
                     f"{summary['run']['console_bytes']} console bytes captured")
    lines.append(f"{summary['blocks']} blocks shown of {summary['blocks_in_cache']} in the cache "
                 f"(capacity {summary['capacity_blocks']} blocks of {summary['slot_size']} bytes)")
    lines.append("")
    lines.append(style.bold("blocks per guest page"))
    lines.append(format_table(["page", "blocks", "insns", "guest bytes"],
                              [[page, str(v["blocks"]), str(v["instructions"]), str(v["guest_bytes"])]
                               for page, v in summary["pages"].items()], Style(False), right={1, 2, 3})
                 .replace("\n", "\n  ").join(["  ", ""]))
    lines.append("")
    removals = summary["removals"]
    lines += _counts("evictions and invalidations (counters)", removals["counters"], style)
    lines += _counts("  by event and cause (events)",
                     {f"{e['event']} ({e['cause']})": e["count"] for e in removals["events"]}, Style(False))
    if removals["events_truncated"]:
        lines.append(f"  note: the dump keeps only the last {removals['events_recorded']} events")
    lines.append("")
    exits = summary["exits"]
    if exits["exits"] is not None:
        when = "this run" if exits["source"] == "run" else "the dumped run"
        # (the report lists every reason and kind, 0 or not: the text shows those that happened)
        lines += _counts(f"exits by reason ({when})", {k: v for k, v in exits["exits"].items() if v}, style)
        lines += _counts(f"exits inside the translator by kind ({when})",
                         {k: v for k, v in exits["cache_exits"].items() if v}, style)
    else:
        lines.append(style.bold("exits by reason") + ": " + exits["note"])
    lines += _counts("exit sites in the shown blocks by kind", summary["exit_sites"], style)
    lines.append("")
    rewrites = summary["rewrites"]
    lines += _counts("sensitive instructions by category", rewrites["by_category"], style)
    lines += _counts("rewrites by handling", rewrites["by_handling"], style)
    lines += _counts("rewrites by procedure", rewrites["by_procedure"], style)
    lines.append("")
    if isinstance(summary["hottest_blocks"], str):
        lines.append(f"hottest blocks: {summary['hottest_blocks']}")
    else:
        lines += _counts("hottest blocks (executions)", {f"{row['guest_address']:#010x}": row["executions"]
                                                         for row in summary["hottest_blocks"]}, style)
    return "\n".join(lines)


# -- graph ----------------------------------------------------------------------------------------

def graph(blocks: list[dict]) -> dict:
    nodes = {b["host_address"]: b for b in blocks}
    edges = []
    for b in blocks:
        for e in b["exits"]:
            chained = e.get("chained_to")
            if chained and chained["host"] in nodes:
                edges.append({"from": b["host_address"], "to": chained["host"], "kind": e["kind"], "exit": e["index"]})
    return {"nodes": [{"id": host, "guest_address": b["guest_address"], "instructions": len(b["instructions"])}
                      for host, b in nodes.items()], "edges": edges}


# Layout of the drawing. Graphviz's dot puts every block on a rank and the components side by
# side, which for a translation cache (scores of blocks chained into one subroutine, dozens chained
# to nothing) gives a picture tens of thousands of pixels wide. So: a block chained into from
# HUB_PREDECESSORS blocks or more is drawn once, and each exit into it ends at a small label
# naming it; blocks chained to no other go into one table; the components are laid out in rows
# of about ROW_WIDTH blocks (invisible anchor nodes between the rows).
HUB_PREDECESSORS = 8
ROW_WIDTH = 20
TABLE_COLUMNS = 8
LEGEND = ("solid: chained branch   dashed: chained by an inline-cache prediction   bold: a block chained into "
          f"from {HUB_PREDECESSORS} or more blocks, drawn once (grey \u2192 ADDR: a chained exit into it)")


def _rank_width(members: list[int], successors: dict) -> int:
    """How many blocks of a component share its widest rank, ranks counted breadth first from
    its blocks nothing in it chains into (an estimate of the room dot gives it)."""
    inside = set(members)
    entered = {target for node in members for target in successors[node] if target in inside}
    frontier = [node for node in members if node not in entered] or members[:1]
    seen, widest = set(frontier), len(frontier)
    while frontier:
        frontier = [t for node in frontier for t in successors[node] if t in inside and t not in seen]
        seen.update(frontier)
        frontier = list(dict.fromkeys(frontier))
        widest = max(widest, len(frontier))
    return widest


def dot_text(g: dict) -> str:
    nodes = {node["id"]: node for node in g["nodes"]}
    predecessors = collections.Counter(edge["to"] for edge in g["edges"] if edge["from"] != edge["to"])
    hubs = {node for node, count in predecessors.items() if count >= HUB_PREDECESSORS}
    drawn = [edge for edge in g["edges"] if edge["to"] not in hubs or edge["from"] == edge["to"]]
    into_hubs = [edge for edge in g["edges"] if edge["to"] in hubs and edge["from"] != edge["to"]]
    successors: dict = collections.defaultdict(list)
    neighbours: dict = collections.defaultdict(set)
    for edge in drawn:
        successors[edge["from"]].append(edge["to"])
        neighbours[edge["from"]].add(edge["to"])
        neighbours[edge["to"]].add(edge["from"])
    linked = set(neighbours) | hubs | {edge["from"] for edge in into_hubs}

    def address(node: int) -> int:
        return nodes[node]["guest_address"]

    components, placed = [], set()
    for start in sorted(linked, key=address):
        if start in placed:
            continue
        members, stack = [], [start]
        placed.add(start)
        while stack:
            node = stack.pop()
            members.append(node)
            for other in neighbours[node] - placed:
                placed.add(other)
                stack.append(other)
        components.append(sorted(members, key=address))
    rows, row, width = [], [], 0
    for members in components:
        wide = _rank_width(members, successors)
        if row and width + wide > ROW_WIDTH:
            rows.append(row)
            row, width = [], 0
        row.append(members)
        width += wide
    if row:
        rows.append(row)

    lines = ["digraph tcache {",
             f'  graph [fontname=monospace, fontsize=11, labelloc=t, label="{LEGEND}"];',
             '  node [shape=box, fontname=monospace, fontsize=10, margin="0.05,0.02", height=0.3];',
             "  edge [arrowsize=0.6];"]
    for node in sorted(linked, key=address):
        n = nodes[node]
        if node in hubs:
            lines.append(f'  b{node:x} [label="{n["guest_address"]:#x}\\n{n["instructions"]} insns\\n'
                         f'{predecessors[node]} chained in", style=bold];')
        else:
            lines.append(f'  b{node:x} [label="{n["guest_address"]:#x}\\n{n["instructions"]} insns"];')
    for edge in drawn:
        style = "style=dashed, " if edge["kind"] == "predicted" else ""
        lines.append(f'  b{edge["from"]:x} -> b{edge["to"]:x} [{style}tooltip="{edge["kind"]}"];')
    for index, edge in enumerate(into_hubs):
        style = "style=dashed, " if edge["kind"] == "predicted" else ""
        lines.append(f'  s{index} [shape=plain, fontcolor=gray35, label="\u2192 {address(edge["to"]):#x}"];')
        lines.append(f'  b{edge["from"]:x} -> s{index} [{style}color=gray50, tooltip="{edge["kind"]}"];')
    has_successor = {edge["from"] for edge in drawn if edge["from"] != edge["to"]}
    for number, row in enumerate(rows):
        lines.append(f"  row{number} [style=invis, shape=point, width=0, height=0];")
        for members in row:
            entered = {target for node in members for target in successors[node] if target != node}
            for node in [node for node in members if node not in entered] or members[:1]:
                lines.append(f"  row{number} -> b{node:x} [style=invis];")
            for node in members:
                if node not in has_successor:
                    lines.append(f"  b{node:x} -> row{number + 1} [style=invis];")
    unchained = sorted((node for node in nodes if node not in linked), key=address)
    if unchained:
        cells = [f"<td>{address(node):#x} ({nodes[node]['instructions']})</td>" for node in unchained]
        table = "".join("<tr>" + "".join(cells[at:at + TABLE_COLUMNS]) + "</tr>"
                        for at in range(0, len(cells), TABLE_COLUMNS))
        lines.append(f'  unchained [shape=plain, label=<<table border="0" cellborder="1" cellspacing="0" '
                     f'cellpadding="3"><tr><td colspan="{TABLE_COLUMNS}"><b>{len(unchained)} blocks chained '
                     f'to or from no other (address, instructions)</b></td></tr>{table}</table>>];')
    lines.append(f"  row{len(rows)} [style=invis, shape=point, width=0, height=0];")
    if unchained:
        lines.append(f"  row{len(rows)} -> unchained [style=invis];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def write_dot(path: str, g: dict) -> str:
    """Writes the graph; returns the file written."""
    text = dot_text(g)
    extension = os.path.splitext(path)[1].lower()
    if extension in (".png", ".svg"):
        dot = shutil.which("dot")
        if dot:
            try:
                done = subprocess.run([dot, f"-T{extension[1:]}", "-o", path], input=text.encode(),
                                      capture_output=True, timeout=120)
            except (OSError, subprocess.TimeoutExpired) as error:
                raise ToolError(f"dot failed: {error}") from None
            if done.returncode != 0:
                detail = done.stderr.decode(errors="replace").strip().splitlines()
                raise ToolError(f"dot failed: {detail[0] if detail else f'status {done.returncode}'}")
            return path
        path = os.path.splitext(path)[0] + ".dot"
        print(f"{PROG}: Graphviz `dot` is not installed: writing the graph as text to {path}", file=sys.stderr)
    try:
        with open(path, "w") as handle:
            handle.write(text)
    except OSError as error:
        raise ToolError(f"{path}: {error.strerror}") from None
    return path


# -- main -----------------------------------------------------------------------------------------

def _use_colour(choice: str) -> bool:
    if choice != "auto":
        return choice == "always"
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


def _profiled(blocks: list[dict]) -> bool:
    return any(block.get("executions") is not None for block in blocks)


def hottest(blocks: list[dict], count: int) -> list[dict]:
    ranked = sorted(blocks, key=lambda block: (-(block.get("executions") or 0), block["guest_address"]))
    return [{"guest_address": b["guest_address"], "executions": b.get("executions") or 0,
             "instructions": len(b["instructions"]), "text": "; ".join(i["text"] for i in b["instructions"][:3])}
            for b in ranked[:count]]


def render_hottest(rows: list[dict], total: int) -> str:
    lines = [f"{'guest':10}  {'executions':>12}  {'insns':>5}  first instructions"]
    lines += [f"{row['guest_address']:#010x}  {row['executions']:>12}  {row['instructions']:>5}  {row['text']}"
              for row in rows]
    lines.append(f"{len(rows)} hottest of {total} blocks")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.block is not None and args.range is not None:
        raise ToolError("--block and --range cannot be used together", 2)
    dump, run_info = load_input(args)
    blocks = select_blocks(dump, args)
    style = Style(_use_colour(args.color) and not args.json)

    if args.dot:
        g = graph(blocks)
        written = write_dot(args.dot, g)
        if args.json:
            print(json.dumps({"dot": written, **g}, indent=2))
        else:
            print(f"wrote {len(g['nodes'])} blocks and {len(g['edges'])} chained exits to {written}")
        return 0
    if args.profile:
        if not _profiled(dump["blocks"]):
            raise ToolError(PROFILE_MESSAGE, 2)
        # --top here means the N hottest, not the N most recently used
        candidates = select_blocks(dump, argparse.Namespace(**{**vars(args), "top": None}))
        rows = hottest(candidates, args.top or 10)
        print(json.dumps({"view": "profile", "blocks": rows}, indent=2) if args.json
              else render_hottest(rows, len(dump["blocks"])))
        return 0
    if args.summary:
        summary = summarize(dump, blocks, run_info)
        print(json.dumps(summary, indent=2) if args.json else render_summary(summary, style))
        return 0
    if (args.block is not None or args.range is not None) and not args.table:
        views = [side_by_side(b) for b in blocks]
        print(json.dumps({"view": "side_by_side", "blocks": views}, indent=2) if args.json
              else render_side_by_side(views, style))
        return 0
    if args.json:
        print(json.dumps({"view": "table", "blocks_in_cache": len(dump["blocks"]), "blocks": table_rows(blocks)},
                         indent=2))
    else:
        print(render_table(blocks, len(dump["blocks"]), style))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit:      # --help (0) or a bad option (2, one line already printed)
        return exit.code if isinstance(exit.code, int) else 2
    try:
        return run(args)
    except ToolError as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return error.status
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        if getattr(args, "input_is_dump", False):      # a dump with unexpected content
            print(f"{PROG}: {args.input}: malformed dump: {type(error).__name__}: {error}", file=sys.stderr)
        else:
            print(f"{PROG}: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    except Exception as error:   # noqa: BLE001 - never a traceback
        print(f"{PROG}: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def main_entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
