"""vmm-tcache, the translation-cache inspection tool: views, formats, filters and errors."""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.samples import REPO_ROOT
from tools import vmm_tcache

TOOL = REPO_ROOT / "tools" / "vmm_tcache.py"
HELLO = "sample_binaries/hello.elf"
SENSITIVE = "sample_binaries/sensitive.elf"


def run_tool_process(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    """The tool as a user runs it: `python tools/vmm_tcache.py ...`."""
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, timeout=timeout,
                          cwd=REPO_ROOT)


def tool(capsys, *args) -> tuple[int, str, str]:
    status = vmm_tcache.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err


def tool_json(capsys, *args):
    status, out, err = tool(capsys, *args, "--json")
    assert status == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def dump_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("tcache") / "sensitive-cache.json"
    # --max-insns: blocks count instructions from the start, so the guest's first rdtsc does not
    # flush the cache to switch counting on (the dump keeps every block)
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", SENSITIVE, "--max-insns", "100000000",
                           "--dump-cache", str(path)],
                          capture_output=True, timeout=60, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr.decode()
    return path


@pytest.fixture(scope="module")
def dump(dump_path):
    return json.loads(dump_path.read_text())


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)


def pushfd_block(dump) -> dict:
    return next(b for b in dump["blocks"] if any(i["text"] == "pushfd" for i in b["instructions"]))


# -- the block table ------------------------------------------------------------------------------

def test_table_lists_every_block_of_the_dump(capsys, dump_path, dump):
    status, out, err = tool(capsys, dump_path)
    assert status == 0, err
    lines = out.splitlines()
    rows = [line for line in lines if re.match(r"0x[0-9a-f]{8}\s", line)]
    assert len(rows) == len(dump["blocks"])
    listed = {int(row.split()[0], 16) for row in rows}
    assert listed == {b["guest_address"] for b in dump["blocks"]}
    assert lines[-1] == f"{len(dump['blocks'])} of {len(dump['blocks'])} blocks"
    assert "\033[" not in out              # not a terminal: plain text


def test_table_row_shows_sizes_lru_exits_and_links(capsys, dump_path, dump):
    block = next(b for b in dump["blocks"] if any(e["chained_to"] for e in b["exits"]) and b["incoming"])
    status, out, _ = tool(capsys, dump_path)
    row = next(line for line in out.splitlines() if line.startswith(f"{block['guest_address']:#010x} "))
    fields = row.split()
    assert fields[1:5] == [str(block["guest_size"]), str(len(block["instructions"])),
                           f"{block['host_address']:#010x}", str(block["host_size"])]
    assert str(block["lru_position"]) in fields and str(len(block["incoming"])) in fields
    chained = next(e for e in block["exits"] if e["chained_to"])
    assert f"{chained['kind']}->{chained['chained_to']['guest']:#x}" in row


@pytest.mark.parametrize("image, console_text", [(HELLO, "Hello from the guest"), (SENSITIVE, "checks, all ok")])
def test_image_input_runs_the_guest_without_mixing_its_console(capsys, tmp_path, image, console_text):
    reference = tmp_path / "reference.json"
    proc = subprocess.run([sys.executable, "-m", "vmm", "run", image, "--dump-cache", str(reference)],
                          capture_output=True, timeout=60, cwd=REPO_ROOT)
    assert console_text.encode() in proc.stdout            # the guest does print ...
    status, out, err = tool(capsys, image)
    assert status == 0, err
    assert console_text not in out and console_text not in err   # ... but not through the tool
    expected = json.loads(reference.read_text())
    assert out.splitlines()[-1] == f"{len(expected['blocks'])} of {len(expected['blocks'])} blocks"
    table = tool_json(capsys, image)
    assert sorted(b["guest_address"] for b in table["blocks"]) == sorted(b["guest_address"] for b in expected["blocks"])


def test_image_input_takes_vmm_run_options(capsys):
    table = tool_json(capsys, SENSITIVE, "--tcache-size", "16")
    assert len(table["blocks"]) == 16
    summary = tool_json(capsys, SENSITIVE, "--tcache-size", "16", "--summary")
    assert summary["capacity_blocks"] == 16
    assert summary["removals"]["counters"]["evictions"] > 0
    assert summary["exits"]["source"] == "run"
    assert summary["exits"]["exits"]["port_out"] > 0 and summary["exits"]["cache_exits"]["branch"] > 0


def test_json_table_matches_the_dump(capsys, dump_path, dump):
    table = tool_json(capsys, dump_path)
    assert table["blocks_in_cache"] == len(table["blocks"]) == len(dump["blocks"])
    # one guest address may have several translations (other segment bases, other frames)
    by_host = {b["host_address"]: b for b in table["blocks"]}
    for block in dump["blocks"]:
        row = by_host[block["host_address"]]
        assert row["guest_address"] == block["guest_address"]
        assert row["host_address"] == block["host_address"]
        assert row["incoming"] == len(block["incoming"])
        assert [e["chained_to"] for e in row["exits"]] == [e["chained_to"] for e in block["exits"]]


# -- side by side ---------------------------------------------------------------------------------

def test_side_by_side_names_the_pushf_rewrite(capsys, dump_path, dump):
    block = pushfd_block(dump)
    address = next(i["address"] for i in block["instructions"] if i["text"] == "pushfd")
    status, out, err = tool(capsys, dump_path, "--block", hex(address))
    assert status == 0, err
    line = next(line for line in out.splitlines() if f"{address:#010x}  pushfd" in line)
    guest, rewrite, host = (cell.strip() for cell in line.split("|"))
    assert rewrite == "inline: pushf"
    rewrite = next(r for r in block["rewrites"] if r["guest_address"] == address)
    start = block["host_address"] + rewrite["host_offset"]
    # the rewrite starts by moving to the monitor's stack for pushfq (64-bit host code)
    assert any(line.endswith(f"{start:#x}  mov r11, rsp") for line in out.splitlines())
    assert any("pushfq" in line for line in out.splitlines())


def test_side_by_side_aligns_every_host_instruction_by_pc_map(capsys, dump_path, dump):
    block = pushfd_block(dump)
    view = tool_json(capsys, dump_path, "--block", hex(block["guest_address"]))
    [shown] = view["blocks"]
    assert [row["guest"]["address"] for row in shown["rows"]] == [i["address"] for i in block["instructions"]]
    hosts = [h for row in shown["rows"] for h in row["host"]]
    assert sum(h["size"] for h in hosts) == block["host_size"]           # all the code, once, in order
    assert [h["offset"] for h in hosts] == sorted(h["offset"] for h in hosts)
    pc_map = dict((offset, eip) for offset, eip in block["pc_map"])
    for row in shown["rows"]:
        for host in row["host"]:
            if host["offset"] in pc_map and "pc_map_eip" not in host:
                assert pc_map[host["offset"]] == row["guest"]["address"]
    pushf_row = next(row for row in shown["rows"] if row["guest"]["text"] == "pushfd")
    [rewrite] = pushf_row["rewrites"]
    assert (rewrite["handling"], rewrite["procedure"]) == ("inline", "pushf")
    inside = [h for h in pushf_row["host"]
              if rewrite["host_offset"] <= h["offset"] < rewrite["host_offset"] + rewrite["host_size"]]
    assert sum(h["size"] for h in inside) == rewrite["host_size"]
    # the call's exit slot sits with the call, not with the instruction before it
    call_row = next(row for row in shown["rows"] if row["guest"]["text"].startswith("call"))
    assert any("exit" in h for h in call_row["host"])


def test_range_selects_overlapping_blocks(capsys, dump_path, dump):
    low, high = 0x100100, 0x100200
    view = tool_json(capsys, dump_path, "--range", f"{low:#x}-{high:#x}", "--table")
    expected = [b["host_address"] for b in dump["blocks"]
                if b["guest_address"] < high and b["guest_address"] + b["guest_size"] > low]
    assert sorted(b["host_address"] for b in view["blocks"]) == sorted(expected) and expected
    side = tool_json(capsys, dump_path, "--range", f"{low:#x}-{high:#x}")
    assert side["view"] == "side_by_side" and len(side["blocks"]) == len(expected)


# -- filters --------------------------------------------------------------------------------------

def test_sensitive_only(capsys, dump_path, dump):
    table = tool_json(capsys, dump_path, "--sensitive-only")
    expected = {b["guest_address"] for b in dump["blocks"]
                if any(r["handling"] != "exit slot" for r in b["rewrites"])}
    assert 0 < len(expected) < len(dump["blocks"])
    assert {b["guest_address"] for b in table["blocks"]} == expected


def test_top_takes_the_most_recently_used(capsys, dump_path, dump):
    table = tool_json(capsys, dump_path, "--top", "5")
    assert [b["lru_position"] for b in table["blocks"]] == [0, 1, 2, 3, 4]
    status, out, _ = tool(capsys, dump_path, "--top", "3")
    assert out.splitlines()[-1] == f"3 of {len(dump['blocks'])} blocks"


# -- summary --------------------------------------------------------------------------------------

def test_summary_counts_rewrites_by_procedure(capsys, dump_path, dump):
    summary = tool_json(capsys, dump_path, "--summary")
    expected = collections.Counter(r["procedure"] for b in dump["blocks"] for r in b["rewrites"])
    assert summary["rewrites"]["by_procedure"] == dict(expected)
    handling = collections.Counter(r["handling"] for b in dump["blocks"] for r in b["rewrites"])
    assert summary["rewrites"]["by_handling"] == dict(handling)
    pages = collections.Counter(b["guest_address"] >> 12 for b in dump["blocks"])
    assert {int(p, 16) >> 12: v["blocks"] for p, v in summary["pages"].items()} == dict(pages)
    assert summary["exits"]["source"] == "dump"
    assert summary["exits"]["exits"] == dump["run"]["exits"] and dump["run"]["exits"]["callout"] > 0
    status, out, _ = tool(capsys, dump_path, "--summary")
    assert re.search(rf"^\s+pushf\s+{expected['pushf']}$", out, re.M)
    assert "hottest blocks: no execution counts" in out


def test_summary_reports_invalidations_by_cause(capsys, tmp_path):
    path = tmp_path / "smc.json"
    subprocess.run([sys.executable, "-m", "vmm", "run", "sample_binaries/smc.elf", "--dump-cache", str(path)],
                   capture_output=True, timeout=60, cwd=REPO_ROOT, check=True)
    dump = json.loads(path.read_text())
    summary = tool_json(capsys, path, "--summary")
    assert summary["removals"]["counters"]["invalidations"] == dump["counters"]["invalidations"] > 0
    events = {(e["event"], e["cause"]): e["count"] for e in summary["removals"]["events"]}
    assert events[("invalidated", "smc")] == sum(1 for e in dump["events"] if e["cause"] == "smc")


def test_profile_needs_counts_in_the_dump(capsys, dump_path):
    status, out, err = tool(capsys, dump_path, "--profile")
    assert status == 2 and out == ""
    assert err.startswith("vmm-tcache: no execution counts: run the image with --profile") and err.count("\n") == 1


# -- graph ----------------------------------------------------------------------------------------

def test_dot_shows_every_block_and_every_chained_exit(capsys, dump_path, dump, tmp_path):
    path = tmp_path / "graph.dot"
    status, out, err = tool(capsys, dump_path, "--dot", path)
    assert status == 0, err
    text = path.read_text()
    assert text.startswith("digraph")
    nodes = re.findall(r'^\s+(b[0-9a-f]+) \[label="(0x[0-9a-f]+)\\n(\d+) insns(?:\\n(\d+) chained in", style=bold)?"?\];$',
                       text, re.M)
    edges = re.findall(r'^\s+(b[0-9a-f]+) -> (b[0-9a-f]+) \[(?:style=dashed, )?tooltip="([^"]+)"\];$', text, re.M)
    stubs = dict(re.findall(r'^\s+(s\d+) \[shape=plain, fontcolor=gray35, label="\u2192 (0x[0-9a-f]+)"\];$', text, re.M))
    into_stubs = re.findall(r'^\s+(b[0-9a-f]+) -> (s\d+) \[(?:style=dashed, )?color=gray50, tooltip="([^"]+)"\];$',
                            text, re.M)
    unchained = re.findall(r"<td>(0x[0-9a-f]+) \((\d+)\)</td>", text)
    by_host = {f"b{b['host_address']:x}": b for b in dump["blocks"]}
    # every block once: a node of the graph, or a cell of the table of blocks chained to no other
    drawn = {int(a, 16) for _, a, _, _ in nodes} | {int(a, 16) for a, _ in unchained}
    assert len(nodes) + len(unchained) == len(dump["blocks"]) and drawn == {b["guest_address"] for b in dump["blocks"]}
    # every chained exit once: an edge to its block, or to a label naming a block chained into
    # from 8 or more (drawn once, bold, with that count)
    # (a label names the target's guest address: one guest address may have several translations)
    chained = [(b, e) for b in dump["blocks"] for e in b["exits"] if e["chained_to"]]
    guest_of = {f"b{b['host_address']:x}": b["guest_address"] for b in dump["blocks"]}
    shown = [(source, guest_of[target], kind) for source, target, kind in edges] + \
        [(source, int(stubs[stub], 16), kind) for source, stub, kind in into_stubs]
    assert sorted(shown) == sorted((f"b{b['host_address']:x}", guest_of[f"b{e['chained_to']['host']:x}"], e["kind"])
                                   for b, e in chained) and chained
    into = collections.Counter(e["chained_to"]["host"] for b, e in chained if e["chained_to"]["host"] != b["host_address"])
    hubs = {name: int(count) for name, _a, _i, count in nodes if count}
    assert hubs and hubs == {f"b{host:x}": count for host, count in into.items() if count >= 8}
    assert {by_host[source]["guest_address"] for source, _, _ in into_stubs} <= drawn


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_dot_picture_of_a_small_guest_stays_readable(capsys, dump_path, tmp_path):
    # sensitive.elf's 395 blocks: drawn as one dot graph, the callers of its print routine and
    # a hundred unchained blocks side by side, the PNG was 32181 x 1696 pixels (20131 x 1459
    # without --max-insns); in rows it is about 2950 x 4400, at a legible font size.
    target = tmp_path / "graph.png"
    status, out, err = tool(capsys, dump_path, "--dot", target)
    assert status == 0, err
    width, height = _png_size(target)
    assert width <= 4000 and height <= 5000 and max(width, height) / min(width, height) < 2.5, (width, height)


def test_dot_renders_with_graphviz_when_installed(capsys, dump_path, tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "dot"        # records its arguments and input, as `dot -Tsvg -o FILE` would write FILE
    fake.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import sys
        out = sys.argv[sys.argv.index("-o") + 1]
        open(out, "w").write(" ".join(sys.argv[1:]) + "\\n" + sys.stdin.read())
        """))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    target = tmp_path / "graph.svg"
    status, _, err = tool(capsys, dump_path, "--dot", target, "--top", "4")
    assert status == 0, err
    first, rest = target.read_text().split("\n", 1)
    assert first.startswith("-Tsvg -o") and rest.startswith("digraph")


def test_dot_without_graphviz_writes_text(capsys, dump_path, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))          # no dot here
    status, out, err = tool(capsys, dump_path, "--dot", tmp_path / "graph.png", "--top", "4")
    assert status == 0
    assert not (tmp_path / "graph.png").exists()
    assert (tmp_path / "graph.dot").read_text().startswith("digraph")
    assert "graph.dot" in out and err.count("\n") == 1


# -- as a script, colour, errors ------------------------------------------------------------------

def test_runs_as_a_script_with_plain_output_when_piped(dump_path, dump):
    proc = run_tool_process(dump_path, "--top", "2")
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"\033[" not in proc.stdout
    assert proc.stdout.decode().splitlines()[-1] == f"2 of {len(dump['blocks'])} blocks"


def test_colour_only_when_asked_or_on_a_terminal(capsys, dump_path):
    status, out, _ = tool(capsys, dump_path, "--top", "2", "--color", "always")
    assert "\033[1m" in out
    status, out, _ = tool(capsys, dump_path, "--top", "2", "--json", "--color", "always")
    assert "\033[" not in out


def _error_cases(tmp_path, dump_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"format": "vmm-tcache/1", "blocks": [')
    other = tmp_path / "report.json"
    other.write_text('{"format": "something-else", "blocks": []}')
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"format": "vmm-tcache/1", "blocks": [{"guest_address": 1}]}))
    return [
        ([tmp_path / "missing.json"], 1, "No such file"),
        ([bad_json], 1, "not valid JSON"),
        ([other], 1, "not a vmm-tcache/1 cache dump"),
        ([broken], 1, "malformed dump"),
        ([dump_path, "--block", "zz"], 2, "invalid address"),
        ([dump_path, "--block", "0x10"], 1, "no translated block holds guest address 0x10"),
        ([dump_path, "--range", "0x200-0x100"], 2, "invalid range"),
        ([dump_path, "--frobnicate"], 2, "unrecognized arguments"),
        ([dump_path, "--top", "0"], 2, "count must be positive"),
        ([tmp_path / "missing.elf"], 1, "No such file"),
        ([SENSITIVE, "--tcache-size", "0"], 2, "--tcache-size"),
    ]


def test_errors_are_one_line_without_traceback(tmp_path, dump_path):
    for args, status, fragment in _error_cases(tmp_path, dump_path):
        proc = run_tool_process(*args)
        err = proc.stderr.decode()
        assert proc.returncode == status, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err, (args, err)
        assert err.startswith("vmm-tcache: ") and fragment in err, (args, err)
        assert proc.stdout == b"", args


def test_profile_ranks_blocks_by_executions_counted_in_the_cache(capsys, tmp_path):
    # calls.elf runs a 5,000,000-step loop: its block must come first with that count
    status, out, err = tool(capsys, "sample_binaries/calls.elf", "--profile", "--top", "3", "--json")
    assert status == 0, err
    rows = json.loads(out)["blocks"]
    assert len(rows) == 3 and rows[0]["executions"] >= 4_999_999
    assert rows[0]["executions"] >= rows[1]["executions"] >= rows[2]["executions"]
    path = tmp_path / "profiled.json"
    subprocess.run([sys.executable, "-m", "vmm", "run", "sample_binaries/calls.elf", "--profile",
                    "--dump-cache", str(path)], capture_output=True, timeout=60, cwd=REPO_ROOT, check=True)
    dump = json.loads(path.read_text())
    assert max(block["executions"] for block in dump["blocks"]) == rows[0]["executions"]
