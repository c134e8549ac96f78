"""The engine's view of the memory map follows every change (engine patch 0009 keeps the last
regions its load/store slow path looked up: none may outlive a change of the map)."""

from __future__ import annotations

import pytest

uc_mod = pytest.importorskip("unicorn")
from unicorn import x86_const as X  # noqa: E402

CODE, DATA = 0x1000, 0x200000
# mov eax, [DATA]; mov [DATA + 4], eax; hlt (32-bit)
PROGRAM = bytes.fromhex("a1") + DATA.to_bytes(4, "little") + bytes.fromhex("a3") + (DATA + 4).to_bytes(4, "little") + b"\xf4"


def _engine() -> "uc_mod.Uc":
    uc = uc_mod.Uc(uc_mod.UC_ARCH_X86, uc_mod.UC_MODE_32)
    uc.mem_map(0, 0x10000)
    uc.mem_write(CODE, PROGRAM)
    return uc


def _run(uc: "uc_mod.Uc") -> None:
    uc.emu_start(CODE, CODE + len(PROGRAM) - 1, timeout=5_000_000, count=100)  # bounded, whatever the engine does


def _refused(uc: "uc_mod.Uc") -> int:
    """The engine error a run stops with (the test fails if it does not stop with one)."""
    with pytest.raises(uc_mod.UcError) as excinfo:
        _run(uc)
    return int(excinfo.value.errno)


def test_a_region_unmapped_between_runs_is_unmapped_to_the_next_access() -> None:
    uc = _engine()
    uc.mem_map(DATA, 0x1000)
    uc.mem_write(DATA, b"\x11\x22\x33\x44")
    _run(uc)
    assert uc.mem_read(DATA + 4, 4) == b"\x11\x22\x33\x44"
    uc.mem_unmap(DATA, 0x1000)
    assert _refused(uc) == uc_mod.UC_ERR_READ_UNMAPPED


def test_a_region_mapped_anew_in_the_same_place_is_the_one_accessed() -> None:
    uc = _engine()
    uc.mem_map(DATA, 0x1000)
    uc.mem_write(DATA, b"\x11\x22\x33\x44")
    _run(uc)
    uc.mem_unmap(DATA, 0x1000)
    uc.mem_map(DATA, 0x1000, uc_mod.UC_PROT_READ)  # read-only now: the store must be refused
    uc.mem_write(DATA, b"\x55\x66\x77\x88")
    assert _refused(uc) == uc_mod.UC_ERR_WRITE_PROT
    assert uc.reg_read(X.UC_X86_REG_EAX) == 0x88776655  # the load read the new region


def test_protection_changed_in_place_is_obeyed() -> None:
    uc = _engine()
    uc.mem_map(DATA, 0x2000)
    _run(uc)
    uc.mem_protect(DATA, 0x1000, uc_mod.UC_PROT_WRITE)  # the first page: no longer readable
    assert _refused(uc) == uc_mod.UC_ERR_READ_PROT


def test_mmio_mapped_over_a_freed_range_answers() -> None:
    uc = _engine()
    uc.mem_map(DATA, 0x1000)
    _run(uc)
    uc.mem_unmap(DATA, 0x1000)
    seen: list[tuple[str, int, int]] = []

    def read(_uc, offset, size, _data):  # type: ignore[no-untyped-def]
        seen.append(("read", offset, size))
        return 0xCAFE0000 + offset

    def write(_uc, offset, size, value, _data):  # type: ignore[no-untyped-def]
        seen.append(("write", offset, value))

    uc.mmio_map(DATA, 0x1000, read, None, write, None)
    _run(uc)
    assert seen == [("read", 0, 4), ("write", 4, 0xCAFE0000)]
