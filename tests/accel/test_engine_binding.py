"""vmcore's own calls into unicorn's library (vmcore.accel.engine), against the package's binding and the guest.

The software CPU drives the library through ctypes itself: the package's Python binding is
never imported by a run (it cost about 15 ms of each `vmcore run`). The constants are the
package's; registers, memory, hooks and controls must do what the binding's calls do, which
the guest's own instructions (sgdt, movdqu, rdmsr) check here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

unicorn = pytest.importorskip("unicorn")
from unicorn import x86_const as package_x86  # noqa: E402

from vmcore.accel import engine  # noqa: E402
from vmcore.accel.engine import UC_ARCH_X86, UC_MODE_32, UC_MODE_64, X, Uc, UcError  # noqa: E402

CODE, DATA = 0x1000, 0x2000


def test_the_constants_are_the_packages() -> None:
    assert {k: v for k, v in vars(X).items() if k.startswith("UC_")} == \
        {k: v for k, v in vars(package_x86).items() if k.startswith("UC_")}
    for name in dir(engine):
        if name.startswith("UC_"):
            assert getattr(engine, name) == getattr(unicorn, name), name
    assert engine.__version__ == unicorn.__version__


def test_a_software_cpu_run_never_imports_the_package_binding() -> None:
    code = ("import sys\n"
            "from vmcore.machine import Machine\nfrom vmcore.profile import Profile\nfrom vmcore.accel import RunLimits\n"
            "from vmcore.machine import resolve_profile\n"
            "m = Machine.build(Profile.load(resolve_profile('hello'), ['devices.console.backend=memory']))\n"
            "with m:\n    stop = m.run('tcg', RunLimits(timeout=20))\n"
            "print(stop.kind, sorted(n for n in sys.modules if n == 'unicorn' or n.startswith('unicorn.')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.split(None, 1) == ["halted", "[]\n"], done.stderr


def _engine(mode: int, code: bytes) -> Uc:
    uc = Uc(UC_ARCH_X86, mode)
    uc.mem_map(0, 0x10000)
    uc.mem_write(CODE, code)
    return uc


def test_registers_read_back_and_reach_the_guest() -> None:
    # sgdt [DATA] ; movdqu [DATA+16], xmm0 ; rdmsr (ECX: IA32_SYSENTER_CS) ; hlt
    code = bytes.fromhex("0f010425" "00200000" "f30f7f042510200000" "0f32" "f4")
    uc = _engine(UC_MODE_64, code)
    uc.reg_write(X.UC_X86_REG_GDTR, (0, 0x1234_5678_9ABC, 0x2F, 0))
    xmm = 0x0011_2233_4455_6677_8899_AABB_CCDD_EEFF
    uc.reg_write(X.UC_X86_REG_XMM0, xmm)
    uc.msr_write(0x174, 0x10)
    uc.reg_write(X.UC_X86_REG_ECX, 0x174)
    uc.reg_write(X.UC_X86_REG_RAX, -1)  # masked to 64 bits, as the binding's c_uint64 wraps it
    assert uc.reg_read(X.UC_X86_REG_RAX) == (1 << 64) - 1
    uc.emu_start(CODE, CODE + len(code) - 1)
    stored = uc.mem_read(DATA, 32)
    assert int.from_bytes(stored[0:2], "little") == 0x2F and int.from_bytes(stored[2:10], "little") == 0x1234_5678_9ABC
    assert int.from_bytes(stored[16:32], "little") == xmm
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x10 and uc.msr_read(0x174) == 0x10
    assert uc.reg_read(X.UC_X86_REG_GDTR)[1:3] == (0x1234_5678_9ABC, 0x2F)
    assert uc.reg_read(X.UC_X86_REG_XMM0) == xmm
    uc.reg_write(X.UC_X86_REG_FP0, (0x8000_0000_0000_0001, 0x3FFF))
    assert uc.reg_read(X.UC_X86_REG_FP0) == (0x8000_0000_0000_0001, 0x3FFF)
    assert uc.ctl_get_mode() == UC_MODE_64
    assert (0, 0xFFFF, engine.UC_PROT_ALL) in list(uc.mem_regions())


def test_a_callbacks_exception_stops_the_run_there_and_comes_out_of_emu_start() -> None:
    # out 0x80, al ; inc ebx ; hlt
    code = bytes.fromhex("e680" "43" "f4")
    uc = _engine(UC_MODE_32, code)
    seen = []

    class Stop(Exception):
        pass

    def on_out(engine_: Uc, port: int, size: int, value: int, data: str) -> None:
        seen.append((engine_ is uc, port, size, data))
        raise Stop("from the hook")

    handle = uc.hook_add(engine.UC_HOOK_INSN, on_out, "data", 1, 0, X.UC_X86_INS_OUT)
    with pytest.raises(Stop):
        uc.emu_start(CODE, CODE + len(code) - 1)
    assert seen == [(True, 0x80, 1, "data")]
    # The stop takes effect where the engine looks next, the end of the block (the package's
    # binding stops there too): before the hlt.
    assert uc.reg_read(X.UC_X86_REG_EIP) == CODE + 3 and uc.reg_read(X.UC_X86_REG_EBX) == 1
    uc.hook_del(handle)
    uc.emu_start(CODE, CODE + len(code) - 1)  # no hook left: it runs through, nothing raised
    assert uc.reg_read(X.UC_X86_REG_EBX) == 2 and len(seen) == 1


def test_a_refused_call_raises_the_engines_error() -> None:
    uc = Uc(UC_ARCH_X86, UC_MODE_32)
    with pytest.raises(UcError) as excinfo:
        uc.mem_read(0x5000, 4)  # nothing mapped there
    assert excinfo.value.errno == unicorn.UC_ERR_READ_UNMAPPED
    assert "unmapped" in str(excinfo.value).lower()
    with pytest.raises(UcError):
        uc.hook_add(engine.UC_HOOK_INSN, lambda *a: None, None, 1, 0, X.UC_X86_INS_RDTSC)  # no such hook


def test_libunicorn_path_is_looked_at_first(tmp_path: Path) -> None:
    stock = REPO / ".cache" / "engine" / "stock"
    if not (stock / engine.LIBRARY).is_file():
        pytest.skip("no stock library kept (scripts/build-engine keeps the wheel's in .cache/engine/stock)")
    code = "from vmcore.accel.engine import library; print(library()._name)"
    for folder, expected in ((stock, stock / engine.LIBRARY), (tmp_path, None)):
        env = {**os.environ, "LIBUNICORN_PATH": str(folder)}
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
        name = done.stdout.strip()
        if expected is not None:
            assert name == str(expected)
        else:  # an empty folder: the package's own library, as the package's loader falls back
            assert name.endswith(f"unicorn/lib/{engine.LIBRARY}"), done.stderr
