"""The software CPU's engine: vmcore's build of unicorn (engine/unicorn) and the stock wheel.

``scripts/build-engine`` (part of README's test command) builds unicorn's release with
vmcore's patches: RAM writes that go straight to memory once no translated code is left
in a page, and a kick read where each translation block starts. Self-modifying code must
still run as written (guest/smc.S), on every engine; the kick must stop the guest between
instructions, never in one, from any thread, also when it comes before the run.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, in_process, kvm_refuses_pae_paging

unicorn = pytest.importorskip("unicorn")
from unicorn import x86_const as X  # noqa: E402
from unicorn.unicorn_py3.unicorn import uclib  # noqa: E402

from vmcore.accel.unicorn_layout import engine_kick  # noqa: E402

SMC = REPO / "machines" / "smc.yaml"
REP_STRINGS = REPO / "machines" / "rep-strings.yaml"
BUILD_ENGINE = REPO / "scripts" / "build-engine"
STOCK = REPO / ".cache" / "engine" / "stock"  # the wheel's library, kept by scripts/build-engine

needs_engine_build = pytest.mark.skipif(engine_kick(uclib) is None,
                                        reason="the stock unicorn is installed: scripts/build-engine builds vmcore's")


def test_self_modifying_code_runs_as_rewritten(accel: str) -> None:
    if accel == "kvm" and (reason := kvm_refuses_pae_paging()) is not None:
        pytest.skip(reason)
    result = in_process(SMC, "devices.console.backend=memory", accel=accel)
    assert (result["kind"], result["console"]) == ("halted", "abdxy\n"), result["message"]


def test_rep_movs_and_stos_give_what_their_iterations_give(accel: str) -> None:
    # vmcore's engine runs rep movs/stos iterations in bulk where no slow path is needed
    # (engine/unicorn/patches/0014-fast-rep-strings.patch): overlapping copies, a
    # backwards one, a 16-bit address size's wrap and a copy over code that ran must
    # still come out as a plain loop makes them (and as KVM and the stock engine do).
    result = in_process(REP_STRINGS, "devices.console.backend=memory", accel=accel)
    assert (result["kind"], result["console"]) == ("halted", "abcdefgh\n"), result["message"]


def test_the_stock_engine_runs_self_modifying_code_and_timers_too() -> None:
    """The software CPU without vmcore's patches (the wheel from PyPI): block hooks for kicks."""
    library = STOCK / "libunicorn.so.2"
    if not library.exists():
        pytest.skip(f"no stock unicorn library at {library} (scripts/build-engine keeps one there)")
    code = ("import ctypes, json, sys\n"
            "from unicorn.unicorn_py3.unicorn import uclib\n"
            "assert not hasattr(uclib, 'vmcore_kick'), 'not the stock library'\n"
            "from tests.helpers import in_process\n"
            "out = {name: in_process(path, 'devices.console.backend=memory', accel='tcg')\n"
            "       for name, path in json.loads(sys.argv[1]).items()}\n"
            "print(json.dumps({k: (v['kind'], v['console']) for k, v in out.items()}))\n")
    profiles = {"smc": str(SMC), "rm_timer": str(REPO / "machines" / "rm-timer.yaml"), "rep_strings": str(REP_STRINGS)}
    env = {**os.environ, "LIBUNICORN_PATH": str(STOCK)}
    run = subprocess.run([sys.executable, "-c", code, json.dumps(profiles)], capture_output=True, text=True,
                         env=env, cwd=REPO, timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["smc"] == ["halted", "abdxy\n"]
    assert got["rm_timer"] == ["exit", "rm ticks: 10\n"]  # ten timer interrupts, each taken where it came
    assert got["rep_strings"] == ["halted", "abcdefgh\n"]  # iteration by iteration, as translated


# --- the kick, on a bare engine -------------------------------------------------------------------

# 64-bit: inc rax; inc rbx; jmp back: two registers that are equal between instructions of the loop
# only where a stop falls on the jump's target (the block start), never between the incs.
LOOP = bytes([0x48, 0xFF, 0xC0, 0x48, 0xFF, 0xC3, 0xEB, 0xF8])
BASE = 0x1000
NO_END = (1 << 64) - 1


def _engine() -> object:
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(BASE, LOOP)
    return uc


@needs_engine_build
def test_a_kick_before_the_run_stops_it_before_its_first_instruction() -> None:
    kick, unkick = engine_kick(uclib)
    uc = _engine()
    kick(uc._uch)
    uc.emu_start(BASE, NO_END)
    assert uc.reg_read(X.UC_X86_REG_RIP) == BASE
    assert uc.reg_read(X.UC_X86_REG_RAX) == 0
    assert unkick(uc._uch) == 0  # taken by the run


@needs_engine_build
def test_a_kick_from_another_thread_stops_the_guest_at_a_block_start() -> None:
    kick, unkick = engine_kick(uclib)
    uc = _engine()
    for _ in range(20):
        timer = threading.Timer(0.002, kick, (uc._uch,))
        timer.start()
        uc.emu_start(uc.reg_read(X.UC_X86_REG_RIP) or BASE, NO_END)
        timer.join()
        rax, rbx = uc.reg_read(X.UC_X86_REG_RAX), uc.reg_read(X.UC_X86_REG_RBX)
        assert uc.reg_read(X.UC_X86_REG_RIP) == BASE
        assert rax == rbx and rax > 0
    assert unkick(uc._uch) == 0


@needs_engine_build
def test_unkick_drops_a_kick_not_taken() -> None:
    kick, unkick = engine_kick(uclib)
    uc = _engine()
    kick(uc._uch)
    assert unkick(uc._uch) == 1
    uc.emu_start(BASE, NO_END, count=1000)  # runs: the count ends it, not a kick
    assert uc.reg_read(X.UC_X86_REG_RAX) > 0


# --- a stop asked for during an access (engine/unicorn/patches/0008) -------------------------------

MMIO = 0x20000


def test_a_stop_asked_for_in_an_mmio_callback_leaves_that_instruction_to_run_again() -> None:
    """Either engine stops right after the access, the instruction not done and nothing after it run:
    unicorn checks after every access; vmcore's build only after an access's slow path."""
    # mov %eax, MMIO; inc %rbx; mov MMIO, %ecx; inc %rbx; hlt
    code = bytes([0x89, 0x04, 0x25]) + MMIO.to_bytes(4, "little") + bytes([0x48, 0xFF, 0xC3]) \
        + bytes([0x8B, 0x0C, 0x25]) + MMIO.to_bytes(4, "little") + bytes([0x48, 0xFF, 0xC3, 0xF4])
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(0, 0x10000)
    uc.mem_write(BASE, code)
    seen: list[tuple[str, int]] = []

    def read(engine: object, offset: int, size: int, _data: object) -> int:
        seen.append(("read", offset))
        engine.emu_stop()  # type: ignore[attr-defined]
        return 0x55

    def write(engine: object, offset: int, size: int, value: int, _data: object) -> None:
        seen.append(("write", value))
        engine.emu_stop()  # type: ignore[attr-defined]

    uc.mmio_map(MMIO, 0x1000, read, None, write, None)
    uc.reg_write(X.UC_X86_REG_RAX, 0x1234)
    uc.emu_start(BASE, NO_END)
    assert seen == [("write", 0x1234)]
    assert (uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_RBX)) == (BASE, 0)
    uc.reg_write(X.UC_X86_REG_RIP, BASE + 7)  # past the store, as vmcore's replay would finish it
    uc.emu_start(BASE + 7, NO_END)
    assert seen[-1] == ("read", 0)
    assert (uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_RBX)) == (BASE + 10, 1)
    assert uc.reg_read(X.UC_X86_REG_RCX) == 0  # the load's instruction did not complete
    uc.emu_start(BASE + 17, NO_END)  # the rest runs on
    assert uc.reg_read(X.UC_X86_REG_RBX) == 2


def test_loads_and_stores_in_ram_run_on_without_a_stop() -> None:
    """Accesses that miss the TLB take the slow path too; with no stop asked for they go on."""
    # Touch 64 pages (a TLB miss each): mov %rax, (%rdi); add $4096, %rdi; dec %ecx; jnz; hlt
    code = bytes([0x48, 0x89, 0x07, 0x48, 0x81, 0xC7, 0x00, 0x10, 0x00, 0x00, 0xFF, 0xC9, 0x75, 0xF2, 0xF4])
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    uc.mem_map(0, 0x100000)
    uc.mem_write(BASE, code)
    uc.reg_write(X.UC_X86_REG_RDI, 0x40000)
    uc.reg_write(X.UC_X86_REG_RCX, 64)
    uc.reg_write(X.UC_X86_REG_RAX, 0x1122334455667788)
    uc.emu_start(BASE, BASE + len(code) - 1)
    assert uc.reg_read(X.UC_X86_REG_RCX) == 0
    assert all(uc.mem_read(0x40000 + 4096 * k, 8) == (0x1122334455667788).to_bytes(8, "little") for k in range(64))


# --- scripts/build-engine -------------------------------------------------------------------------

def test_build_engine_says_which_engine_is_installed() -> None:
    run = subprocess.run([sys.executable, str(BUILD_ENGINE), "--check"], capture_output=True, text=True, timeout=60)
    lines = dict(line.split(": ", 1) for line in run.stdout.splitlines())
    assert lines["this tree"].startswith("unicorn_2_1_4_vmcore_")
    assert run.returncode == (0 if lines["installed"] == lines["this tree"] else 1)
    if all(shutil.which(tool) for tool in ("cmake", "make", "patch", "gcc")):
        # README's test command runs scripts/build-engine first: with the tools there, it is this tree's build.
        assert run.returncode == 0, f"{run.stdout}(run scripts/build-engine)"


@needs_engine_build
def _build_engine_script() -> Any:
    """scripts/build-engine as a module (it has no .py suffix)."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("vmcore_build_engine", str(BUILD_ENGINE))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.mark.parametrize("data_filter", [True, False], ids=["tarfile-data-filter", "python-3.11.2"])
def test_build_engine_unpacks_plain_files_and_refuses_names_outside_its_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_filter: bool) -> None:
    # Debian 12's python3 (3.11.2) has no tarfile "data" filter: the script checks the names itself.
    import io
    import tarfile

    script = _build_engine_script()
    if not data_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)

    def archive(*names: str) -> tarfile.TarFile:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as out:
            for name in names:
                info = tarfile.TarInfo(name)
                info.size = 2
                out.addfile(info, io.BytesIO(b"ok"))
        buffer.seek(0)
        return tarfile.open(fileobj=buffer)

    script.extract(archive("unicorn-2.1.4/src/a.c", "unicorn-2.1.4/README"), tmp_path / "out")
    assert (tmp_path / "out" / "unicorn-2.1.4" / "src" / "a.c").read_bytes() == b"ok"
    with pytest.raises((SystemExit, tarfile.TarError)):
        script.extract(archive("../escaped.c"), tmp_path / "out")
    assert not (tmp_path / "escaped.c").exists()


def test_the_engine_names_its_build() -> None:
    function = uclib.vmcore_engine
    function.restype = ctypes.c_char_p
    assert function().decode().startswith("unicorn_2_1_4_vmcore_")


def test_the_accelerators_kicker_stops_a_run_before_it_starts_on_either_engine() -> None:
    """vmcore's build: the engine's kick, no block hooks (one-block steps need the hooks: can_step is
    False). The stock wheel: the block hooks."""
    from vmcore.accel.unicorn import _Kicker
    uc = _engine()
    kicker = _Kicker(uc)
    assert kicker.usable
    assert kicker.can_step == (engine_kick(uclib) is None)
    kicker.kick()
    uc.emu_start(BASE, NO_END)
    kicker.settle()
    assert (uc.reg_read(X.UC_X86_REG_RIP), uc.reg_read(X.UC_X86_REG_RAX)) == (BASE, 0)
    kicker.hold()  # a kick while held waits for release
    kicker.kick()
    uc.ctl_flush_tb()  # a count needs blocks translated with unicorn's counting hook (as the accelerator does)
    uc.emu_start(BASE, NO_END, count=6)
    assert uc.reg_read(X.UC_X86_REG_RAX) == 2
    kicker.release()
    uc.emu_start(BASE, NO_END)
    kicker.settle()
    assert uc.reg_read(X.UC_X86_REG_RAX) == 2


# --- what the engine states (0003-cpu-layout, 0004-pushf-clears-rf) --------------------------------

@needs_engine_build
def test_the_layout_the_engine_states_is_the_one_the_experiments_find() -> None:
    """vmcore's build says where its CPU's fields are (offsetof, no 40 ms of experiments per process);
    the experiments that a stock unicorn needs must find the same offsets in it."""
    from vmcore.accel.unicorn_layout import _probe_cpu_layout, stated_cpu_layout
    stated = stated_cpu_layout(uclib)
    assert stated is not None and stated.svm is not None
    assert stated == _probe_cpu_layout()


# Real mode: an iretd frame whose EFLAGS image has RF set, to the next instruction, then pushfd.
_IRET_RF = bytes([
    0x66, 0x9C, 0x66, 0x58,              # pushfd; pop eax
    0x66, 0x0D, 0x00, 0x00, 0x01, 0x00,  # or eax, RF
    0x66, 0x50, 0x66, 0x0E,              # push eax; push cs (32-bit)
    0x66, 0x68, 0x16, 0x10, 0x00, 0x00,  # push dword 0x1016 (past the iretd)
    0x66, 0xCF,                          # iretd: loads RF
    0x66, 0x9C, 0x66, 0x5B,              # pushfd; pop ebx: RF is still set (the next instruction has not completed)
    0xF4])                               # hlt


def test_pushf_stores_rflags_with_rf_clear_after_an_iret_set_it() -> None:
    """SDM, PUSHF: the image has RF (and VM) clear. A stock unicorn stores RF as it is, which is
    why vmcore emulates real-mode iret there (vmcore.accel.intercepts); vmcore's build fixes pushf."""
    from vmcore.accel.unicorn_layout import pushf_clears_rf
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_16)
    uc.mem_map(0, 0x10000)
    uc.mem_write(BASE, _IRET_RF)
    uc.reg_write(X.UC_X86_REG_ESP, 0x8000)
    uc.emu_start(BASE, BASE + len(_IRET_RF) - 1)  # to the hlt
    assert uc.reg_read(X.UC_X86_REG_EAX) & (1 << 16)  # the image had RF
    rf = bool(uc.reg_read(X.UC_X86_REG_EBX) & (1 << 16))
    assert rf == (not pushf_clears_rf(uclib))


def _deliveries(profile_name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, bytes, list[tuple[int, dict[str, Any]]], bool]:
    """A tcg run of a bundled profile with every interrupt vmcore's Python IDT delivery serves
    recorded: its stop, the console's output, the deliveries (vector, keywords), and whether the
    engine delivered hardware interrupts itself."""
    from vmcore.accel import RunLimits
    from vmcore.accel.idt import IdtDelivery
    from vmcore.machine import Machine
    from vmcore.profile import Profile

    delivered: list[tuple[int, dict[str, Any]]] = []
    original = IdtDelivery.deliver

    def deliver(self, vector, **kwargs):  # type: ignore[no-untyped-def]
        delivered.append((vector, kwargs))
        return original(self, vector, **kwargs)

    monkeypatch.setattr(IdtDelivery, "deliver", deliver)
    profile = Profile.load(REPO / "machines" / f"{profile_name}.yaml", ("devices.console.backend=memory",))
    with Machine.build(profile) as machine:
        stop = machine.run("tcg", RunLimits(timeout=20))
        return stop, bytes(machine.devices["console"].output), delivered, machine.accelerator._hardirq is not None


@needs_engine_build
def test_the_engine_takes_hardware_interrupts_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """0005-hardirq-ack: the CPU delivers the 8259's interrupts with QEMU's own code, asking the
    controller for the vector as it takes one; vmcore's Python IDT delivery serves none of them
    (it still serves a stock engine: the stock test above runs rm-timer there)."""
    stop, output, delivered, hardirq = _deliveries("rm-timer", monkeypatch)
    assert hardirq
    assert (stop.kind, output) == ("exit", b"rm ticks: 10\n"), stop.message
    assert [vector for vector, kwargs in delivered if kwargs.get("external")] == []


@needs_engine_build
def test_the_engine_delivers_real_mode_software_interrupts_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """0010-native-real-mode-ints: ``int 21h`` in real mode goes through the IVT in the engine
    (QEMU's do_interrupt_real); the #DE after it, an exception, still reaches vmcore's IDT
    delivery (vmcore.accel.idt), which serves both on a stock engine."""
    stop, output, delivered, _hardirq = _deliveries("int-ivt", monkeypatch)
    assert (stop.kind, output) == ("halted", b"int21\nde\nivt ok\n"), stop.message
    assert [(vector, kwargs.get("software", False)) for vector, kwargs in delivered] == [(0, False)]  # the #DE only
