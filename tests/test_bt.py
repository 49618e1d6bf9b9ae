"""Binary translation end to end: chaining, the lookup table, eviction, self-modifying code,
isolation of the monitor's structures, and engine bugs the translator works around."""

import json

import pytest
from capstone import CS_ARCH_X86, CS_MODE_64, Cs

from tests.cli import run_vmm, sample_arguments
from tests.guests import EXIT, EXIT0, HEX, flat_gdt, idt_setup, paging_on, run_image, run_source
from tests.samples import MANIFEST, REPO_ROOT
from translator.classify import Category, Procedure, classify
from vmm.exits import ExitReason, StopReason

LOOP = """
    mov esp, 0x90000
    mov ecx, 100000
    xor eax, eax
top:
    add eax, ecx
    call bump
    dec ecx
    jnz top
""" + EXIT + """
bump:
    inc eax
    ret
"""


def test_chained_loop_leaves_the_cache_rarely(tmp_path):
    result, _out, vm = run_source(tmp_path, LOOP, mode="bt")
    assert result.guest_value == (sum(range(1, 100001)) + 100000) & 0xFFFFFFFF
    cache, exits = vm.mode.cache.counters, vm.mode.exit_counts
    assert cache["links_made"] >= 3
    # 200,000 calls and returns: the returns hit the lookup table inside the cache
    assert sum(exits.values()) < 20, exits


def test_small_cache_evicts_and_still_runs_correctly(tmp_path):
    entry = next(e for e in MANIFEST if e["name"] == "exceptions")
    proc = run_vmm(*sample_arguments(entry), "--mode", "bt", "--tcache-size", "4", "--report", tmp_path / "r.json")
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes() and proc.returncode == 42
    cache = json.loads((tmp_path / "r.json").read_text())["counters"]["translation_cache"]
    assert cache["blocks_cached"] <= 4 and cache["evictions"] > 1000 and cache["links_broken"] > 1000


def test_cache_size_in_bytes(tmp_path):
    image = tmp_path / "g.s"
    image.write_text("mov eax, 0\n" + EXIT)
    assert run_vmm("run", image, "--tcache-size", "64K").returncode == 0
    bad = run_vmm("run", image, "--tcache-size", "0")
    assert bad.returncode == 2 and "--tcache-size must hold 1 to" in bad.stderr.decode()


def test_self_modifying_code_invalidates(tmp_path):
    entry = next(e for e in MANIFEST if e["name"] == "smc")
    proc = run_vmm(*sample_arguments(entry), "--mode", "bt", "--report", tmp_path / "r.json")
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes() and proc.returncode == 0
    counters = json.loads((tmp_path / "r.json").read_text())["counters"]
    assert counters["translation_cache"]["invalidations_smc"] > 10
    assert counters["cache_exits"]["smc_store"] > 10


def test_string_io_above_iopl_is_checked_before_it_runs(tmp_path):
    """The string_io sample's nine ring-3 ins/outs at IOPL 0 each pass the monitor's permission
    check first (QEMU's output: a refused insb stores nothing, a refused rep with ECX = 0
    faults); at IOPL 3 the same instructions run with no exit."""
    entry = next(e for e in MANIFEST if e["name"] == "string_io")
    proc = run_vmm(*sample_arguments(entry), "--mode", "bt", "--report", tmp_path / "r.json")
    assert proc.stdout == (REPO_ROOT / entry["expected"]).read_bytes() and proc.returncode == 0
    assert json.loads((tmp_path / "r.json").read_text())["counters"]["cache_exits"]["I/O permission"] == 9


def test_string_io_in_ring_0_costs_no_permission_exit(tmp_path):
    source = """
    mov esi, message
    mov dx, 0x3f8
    mov ecx, 3
    cld
    rep outsb
    mov eax, esi
    sub eax, message
""" + EXIT + """
message: .ascii "abc"
"""
    result, output, vm = run_source(tmp_path, source)
    assert output == b"abc" and result.guest_value == 3
    assert vm.mode.counters()["cache_exits"]["I/O permission"] == 0


def test_store_into_the_next_instruction_takes_effect_after_a_jump(tmp_path):
    source = """
    mov esp, 0x90000
    mov byte ptr [patched + 1], 0x2a
    jmp patched
patched:
    mov eax, 7
""" + EXIT
    result, _out, _vm = run_source(tmp_path, source, mode="bt")
    assert result.guest_value == 0x2A


@pytest.mark.parametrize("target, what", [
    (0xFF500000, "the translation cache"),
    (0xFF040000, "the lookup table"),
    (0xFF0E8000, "the virtual-CPU block"),
    (0xFF0EA000, "the privileged virtual-CPU page"),
    (0xFF010000, "the shadow GDT"),
])
def test_guest_cannot_write_monitor_structures(tmp_path, target, what):
    # The monitor's structures are at these guest-physical addresses, but translated code sees
    # the monitor only far above 4 GiB (docs/isolation.md): to the guest this is unassigned
    # memory, as on QEMU: the store vanishes, the read back gives 0, the structure is untouched.
    source = f"mov dword ptr [{target:#x}], 0xcccccccc\nmov eax, dword ptr [{target:#x}]\n" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), what
    assert vm.memory.mmio.counters()["unassigned"] == {"reads": 1, "writes": 1}
    assert b"\xcc\xcc\xcc\xcc" not in bytes(vm.memory.monitor_view(target - vm.memory.monitor.base, 4))


def test_guest_cannot_execute_the_translation_cache(tmp_path):
    result, _out, _vm = run_source(tmp_path, "mov eax, 0xff500000\njmp eax\n", mode="bt")
    assert result.reason is StopReason.MEMORY_FAULT
    assert "fetch of no memory at 0xff500000" in result.message


_NATIVE_IN_TRANSLATIONS = {Procedure.INTERRUPT_FLAG, Procedure.POPF, Procedure.PUSHF, Procedure.PORT_IO}


@pytest.mark.parametrize("name", ["sensitive", "exceptions", "calls"])
def test_no_sensitive_instruction_runs_untranslated(name):
    """Disassemble every translation: a privileged or sensitive instruction may appear only as
    part of its own inline emulation (cli/sti, pushf/popf natively at IOPL 1, port I/O)."""
    entry = next(e for e in MANIFEST if e["name"] == name)
    _result, _out, vm = run_image(str(REPO_ROOT / entry["image"]), mode="bt")
    capstone = Cs(CS_ARCH_X86, CS_MODE_64)          # translated code is 64-bit
    capstone.detail = True
    checked = 0
    for block in vm.mode.cache.blocks():
        for insn in capstone.disasm(bytes(block.translation.code), block.host):
            rule = classify(insn)
            if rule.category in (Category.PRIVILEGED, Category.SENSITIVE, Category.FAR_TRANSFER):
                if insn.id == 240:        # int3: the exit sites themselves
                    continue
                assert rule.procedure in _NATIVE_IN_TRANSLATIONS, (hex(insn.address), insn.mnemonic, insn.op_str)
            checked += 1
    assert checked > 100


def test_engine_loope_flags_bug_is_worked_around(tmp_path):
    """Unicorn 2.1.1 shows garbage flags after loope following a flag-setting instruction in the
    same engine block; the translator starts a fresh engine block before loope/loopne."""
    source = """
    mov esp, 0x90000
    mov ebx, 0x9500
    mov ebp, 0x208000
    sub ebx, ebp
    mov ecx, 1
    cld
    loope next
next:
    pushfd
    pop eax
""" + EXIT
    direct, _out, _vm = run_source(tmp_path, source, mode="direct")
    translated, _out, _vm = run_source(tmp_path, source, mode="bt")
    assert translated.guest_value == 0x87                    # SF PF CF from the sub, bit 1
    assert direct.guest_value != 0x87, "Unicorn fixed the loope flags bug: drop the workaround"


def test_engine_cmpxchg8b_flags_bug_is_worked_around(tmp_path):
    source = """
    mov esp, 0x90000
    mov al, 0x7f
    add al, 1
    cmpxchg8b qword ptr [0x200000]
    pushfd
    pop eax
""" + EXIT
    direct, _out, _vm = run_source(tmp_path, source, mode="direct")
    translated, _out, _vm = run_source(tmp_path, source, mode="bt")
    assert translated.guest_value & 0x8D5 == 0x890           # OF SF AF from the add, ZF clear
    assert direct.guest_value & 0x8D5 != 0x890, "Unicorn fixed the cmpxchg8b flags bug: drop the workaround"


def test_dump_cache_describes_blocks_links_and_rewrites(tmp_path):
    # counting from the start (--max-insns): the guest's rdtsc does not flush the cache
    proc = run_vmm("run", "sample_binaries/sensitive.elf", "--max-insns", "100000000",
                   "--dump-cache", tmp_path / "cache.json")
    assert proc.returncode == 0
    dump = json.loads((tmp_path / "cache.json").read_text())
    assert dump["format"] == "vmm-tcache/1" and dump["counters"]["blocks_translated"] >= len(dump["blocks"]) > 10
    rewrites = [r for block in dump["blocks"] for r in block["rewrites"]]
    assert {"inline", "callout", "exit slot", "lookup"} <= {r["handling"] for r in rewrites}
    assert any(r["procedure"] == "pushf" for r in rewrites)
    chained = [e for block in dump["blocks"] for e in block["exits"] if e["chained_to"]]
    assert chained and all(bytes.fromhex(b["host_bytes"]) for b in dump["blocks"])
    by_address = {block["guest_address"]: block for block in dump["blocks"]}
    for exit_ in chained:        # every link is recorded at both ends
        target = by_address[exit_["chained_to"]["guest"]]
        assert target["incoming"]
    assert [block["lru_position"] for block in dump["blocks"]] == list(range(len(dump["blocks"])))


def test_untranslatable_form_stops_the_run_with_one_line(tmp_path):
    image = tmp_path / "j16.s"
    image.write_text("mov eax, 5\n.byte 0x66, 0xe9, 0x00, 0x00\nmov dx, 0xf4\nout dx, eax\n")
    proc = run_vmm("run", image)
    assert proc.returncode == 122
    assert proc.stderr.decode() == "vmm: not translatable: 16-bit near branch jmp 0x100009 at 0x100005\n"


def test_cli_sti_pushf_popf_cost_no_exit(tmp_path):
    source = """
    mov esp, 0x90000
    mov ecx, 100000
top:
    pushfd
    cli
    add eax, ecx
    popfd
    pushfd
    pop ebx
    sti
    cli
    dec ecx
    jnz top
""" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode="bt")
    assert result.reason is StopReason.DEBUG_EXIT
    assert vm.exits.get(ExitReason.CALLOUT, 0) == 0                 # 800,000 sensitive instructions, no callout
    assert sum(vm.mode.exit_counts.values()) < 10, vm.mode.exit_counts
    # pushfd shows the guest's own IOPL (0) and IF (cleared by cli), not the deprivileged real IOPL 1
    assert result.registers["ebx"] & 0x3200 == 0


FLAGS_ACROSS_INDIRECT_BRANCHES = """
    mov esp, 0x90000
    mov dword ptr [0x200000], 0x002
    mov dword ptr [0x200004], 0x003
    mov dword ptr [0x200008], 0x006
    mov dword ptr [0x20000c], 0x012
    mov dword ptr [0x200010], 0x042
    mov dword ptr [0x200014], 0x082
    mov dword ptr [0x200018], 0x802
    mov dword ptr [0x20001c], 0x8d7
    mov dword ptr [0x200020], t0
    mov dword ptr [0x200024], t1
    mov dword ptr [0x200028], t2
    mov dword ptr [0x20002c], t3
    mov dword ptr [0x200030], t4
    mov dword ptr [0x200034], t5
    mov dword ptr [0x200038], t6
    mov dword ptr [0x20003c], t7
    xor ebx, ebx
    mov esi, 3000
again:
    mov eax, esi
    and eax, 7
    push dword ptr [0x200000 + eax*4]
    popfd
    call dword ptr [0x200020 + eax*4]
    pushfd
    pop edx
    xor ebx, edx
    rol ebx, 3
    mov edx, esi
    and edx, 7
    mov edx, dword ptr [0x200020 + edx*4]
    push dword ptr [0x200000 + eax*4]
    popfd
    jmp edx
back:
    dec esi
    jnz again
    mov eax, ebx
""" + EXIT + "".join(f"""
t{k}:
    pushfd
    pop edx
    xor ebx, edx
    ror ebx, 5
    cmp esp, 0x8fffc
    jne from_jmp{k}
    push dword ptr [0x200000 + {(k * 3) % 8} * 4]
    popfd
    ret
from_jmp{k}:
    jmp back
""" for k in range(8))


def test_flags_survive_every_path_of_an_indirect_branch(tmp_path):
    """Every arithmetic flag pattern crosses ret, call [mem] (its target computed into ecx)
    and jmp reg (compared in place) through the learning exit, the inline cache and the lookup
    table (eight targets: more than the inline cache holds)."""
    results = {}
    for mode in ("direct", "bt"):
        result, _out, vm = run_source(tmp_path, FLAGS_ACROSS_INDIRECT_BRANCHES, mode=mode)
        assert result.reason is StopReason.DEBUG_EXIT
        results[mode] = result.registers
    assert results["bt"] == results["direct"]
    counters = vm.mode.cache.counters
    assert counters["predictions_set"] >= 8 and vm.mode.exit_counts.get("lookup miss", 0) >= 8


def test_native_cpuid_and_rdtsc_run_alone(tmp_path):
    # bt runs cpuid (and rdtsc) by itself on the engine in a monitor stub. Regression: with the
    # engine's exits on, emu_start's `until` no longer ended that run, and the zero bytes after
    # the instruction ran as `add [eax], al`, adding to guest memory at CPUID's EAX.
    source = """
    mov edi, 0
    mov ecx, 0x1000
    mov al, 0x5a
    cld
    rep stosb
    mov eax, 0
    cpuid
    mov dword ptr [0x7000], eax
    mov eax, 1
    cpuid
    mov dword ptr [0x7004], eax
    mov eax, 0
""" + EXIT
    result, _out, vm = run_source(tmp_path, source, mode="bt")
    direct, _out, direct_vm = run_source(tmp_path, source, mode="direct")
    assert result.reason is StopReason.DEBUG_EXIT and result.guest_value == 0
    assert vm.memory.read(0x7000, 8) == direct_vm.memory.read(0x7000, 8)
    assert vm.memory.read(0, 0x1000) == b"\x5a" * 0x1000


def test_x87_state_saves_hold_the_guest_address_not_the_host_one(tmp_path):
    # fnstenv and fxsave store the address of the last x87 instruction. Translated code is host
    # code, so the engine stores the address in the translation cache (a monitor address the
    # guest must never see); the monitor puts the guest's address there (docs/isolation.md).
    # The bare machine (direct) stores the guest's own address: both must agree.
    source = """
    mov esp, 0x90000
    mov eax, cr4
    or eax, 0x200                       /* OSFXSR: fxsave allowed */
    mov cr4, eax
    fninit
last_x87:
    fld1
    mov ebx, 0x20000
    fnstenv [ebx]
    fxsave [0x20100]
    mov eax, dword ptr [0x2000c]        /* fnstenv: FIP */
    mov ecx, dword ptr [0x20108]        /* fxsave: FIP */
    mov edx, dword ptr [0x2010c]        /* fxsave: FCS and the reserved half */
    mov esi, last_x87
""" + EXIT
    results = {}
    for mode in ("bt", "direct"):
        result, _out, _vm = run_source(tmp_path, source, mode=mode)
        registers = result.registers
        results[mode] = (registers["eax"], registers["ecx"], registers["edx"] & 0xFFFF0000)
        assert registers["eax"] == registers["esi"] == registers["ecx"], (mode, registers)
    assert results["bt"] == results["direct"]


def test_x87_state_saves_through_a_based_segment(tmp_path):
    # The same through a DS based at 0x10000, which 64-bit host code ignores: the image must land
    # at base + offset (the emitter adds the base) and the fix-up must find it there.
    source = flat_gdt(0x6000) + """
    mov dword ptr [0x6018], 0x0000ffff      /* 0x18: data, base 0x10000, 4 GiB */
    mov dword ptr [0x601c], 0x00cf9201
    mov word ptr [0x6020], 0x1f
    lgdt [0x6020]
    mov esp, 0x90000
    fninit
last_x87:
    fld1
    mov ax, 0x18
    mov ds, ax
    mov ebx, 0x10000
    fnstenv [ebx]                            /* linear 0x20000 */
    mov ax, 0x10
    mov ds, ax
    mov eax, dword ptr [0x2000c]             /* FIP */
    mov ecx, dword ptr [0x1000c]             /* nothing stored at the unbased address */
    mov esi, last_x87
""" + EXIT
    for mode in ("bt", "direct"):
        result, _out, _vm = run_source(tmp_path, source, mode=mode)
        registers = result.registers
        assert result.reason.value == "debug_exit", (mode, result.message)
        assert (registers["eax"], registers["ecx"]) == (registers["esi"], 0), (mode, registers)


# Paging on (one 4 MiB page), a call into a page 8 KiB away (a link across pages), then CR0.WP
# set: the address space's shadow is rebuilt and the old one dropped while the engine was still
# on it. Unlinking the cross-page link invalidated the engine's translations through the dropped
# tables: the lookups faulted inside Unicorn and left its exception state set, so the hidden
# fault of the next push arrived as a double fault and the machine triple-faulted (every
# kvm-unit-tests case that calls setup_vm stopped there). QEMU 7.2 runs it to the end: exit 0.
WP_AFTER_LINKS = """
    mov esp, 0x90000
    mov dword ptr [0x10000], 0x83
    mov eax, cr4
    or eax, 0x10
    mov cr4, eax
""" + paging_on(0x10000) + """
    call far_away
    mov eax, cr0
    or eax, 0x10000
    mov cr0, eax
    call far_away
    push 5
    pop eax
    mov eax, 0
""" + EXIT + """
    .skip 0x2000
far_away:
    ret
"""


def test_cr0_wp_change_after_cross_page_links(tmp_path):
    result, _out, _vm = run_source(tmp_path, WP_AFTER_LINKS, mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message


# ltr with a null selector: QEMU 7.2's helper_ltr (and the engine under direct and vt) leaves TR
# invalid without a fault, where the SDM documents #GP(0); bt and trap emulated the SDM's #GP and
# kvm-unit-tests' emulator case died of it. QEMU printed 0000 (no #GP) for this guest
# (with selector 4, null but TI set, QEMU raises #GP as the emulator does).
NULL_LTR = "    mov esp, 0x7000\n" + idt_setup({13: "gp"}) + """
    xor eax, eax
    ltr ax
    mov eax, 0x1234
    str ax
    call hex16
    call nl
""" + EXIT0 + """
gp:
    mov al, 'G'
    call putc
""" + EXIT0 + HEX


@pytest.mark.parametrize("mode", ["bt", "direct", "trap", "vt"])
def test_ltr_of_a_null_selector_leaves_tr_invalid_as_qemu_does(tmp_path, mode):
    result, output, _vm = run_source(tmp_path, NULL_LTR, mode=mode)
    assert (result.reason, output) == (StopReason.DEBUG_EXIT, b"0000\n"), result.message


# EFER under bt: the engine runs translated code in long mode, and the guest's rdmsr showed its
# LME|LMA|NXE (0xd00) and a wrmsr ended long mode under the translated code (a monitor bug; an
# isolation hole had it gone on). It is virtual now, holding what the engine's own CPU model
# keeps for a 32-bit guest under direct, the reference: SCE and NXE here. (QEMU's qemu32 has no
# SYSCALL, LM or NX and reads 0 whatever is written: the CPU models differ, as pmu.flat shows.)
EFER_GUEST = """
    mov esp, 0x7000
    mov ecx, 0xc0000080
    rdmsr
    call hex32
    mov ecx, 0xc0000080
    mov eax, 0x801
    xor edx, edx
    wrmsr
    mov ecx, 0xc0000080
    rdmsr
    call hex32
    call nl
""" + EXIT0 + HEX


def test_efer_is_the_guests_own_under_bt(tmp_path):
    outputs = {}
    for mode in ("bt", "direct"):
        result, outputs[mode], _vm = run_source(tmp_path, EFER_GUEST, mode=mode)
        assert result.reason is StopReason.DEBUG_EXIT, result.message
    assert outputs["bt"] == outputs["direct"] == b"0000000000000801\n"


# A kernel writing IA32_GS_BASE (0xC0000101) reached the long-mode engine's GS base under bt: with
# the monitor's linear address there (0x7F00000E9000, the scratch page), a GS store from
# translated code landed in the monitor. A 32-bit CPU forms 32-bit linear addresses: direct,
# given the same write, stores at 0xE9800 in guest RAM, and so does bt now. (QEMU's i386 target
# has no such MSR and ignores the write.)
GS_BASE_ESCAPE = """
    mov esp, 0x7000
    mov ecx, 0xc0000101
    mov eax, 0x000e9000
    mov edx, 0x7f00
    wrmsr
    mov eax, 0xdeadbeee                 /* made at run time: no translation holds the value */
    inc eax
    mov dword ptr gs:[0x800], eax
    mov eax, 0
""" + EXIT0


@pytest.mark.parametrize("mode", ["bt", "direct"])
def test_a_gs_base_msr_above_4_gib_stays_in_guest_memory(tmp_path, mode):
    result, _output, vm = run_source(tmp_path, GS_BASE_ESCAPE, mode=mode)
    assert result.reason is StopReason.DEBUG_EXIT, result.message
    assert b"\xef\xbe\xad\xde" not in bytes(vm.memory.monitor_view(0, vm.memory.monitor.size))
    assert vm.memory.read(0xE9800, 4) == b"\xef\xbe\xad\xde"


# A loop whose two halves join: `jnz top` (the back edge) and `jmp next` (into a block the even
# half translated first) lead to blocks translated before them on the same page, so they are
# chained when translated; the five others exit once each, as every first edge did before.
JOINING_LOOP = """
    mov ecx, 1000
    xor eax, eax
top:
    add eax, ecx
    test ecx, 1
    jz even
    add eax, 3
    jmp next
even:
    sub eax, 1
next:
    dec ecx
    jnz top
    sub eax, 500500 + 1500 - 500
""" + EXIT


def test_edges_to_blocks_already_on_the_page_are_chained_when_translated(tmp_path):
    result, _out, vm = run_source(tmp_path, JOINING_LOOP, mode="bt")
    assert (result.reason, result.guest_value) == (StopReason.DEBUG_EXIT, 0), result.message
    assert vm.mode.exit_counts["branch"] == 5 and vm.mode.cache.counters["links_made"] == 7
