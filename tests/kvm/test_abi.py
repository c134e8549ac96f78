"""The ctypes layouts and constants against what gcc computes from the installed <linux/kvm.h>.

One generated C program prints sizeof/offsetof for every member (recursively,
through the anonymous unions) of every struct we mirror, and the value of every
KVM_* constant we define; the Python side is computed the same way and the two
must be identical. The fixed-size asserts at the end need no compiler.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmcore.kvm import ioctl as K
from vmcore.kvm import structs as S

# Every struct we mirror under its C name; helpers such as cpuid2_type() build
# other layouts from these and are covered by test_cpuid2_type_layout.
PUBLIC_STRUCTS: list[type[ctypes.Structure]] = [
    S.kvm_regs,
    S.kvm_segment,
    S.kvm_dtable,
    S.kvm_sregs,
    S.kvm_fpu,
    S.kvm_xsave,
    S.kvm_debugregs,
    S.kvm_xcr,
    S.kvm_xcrs,
    S.kvm_userspace_memory_region,
    S.kvm_cpuid_entry2,
    S.kvm_cpuid2,
    S.kvm_msr_entry,
    S.kvm_msrs,
    S.kvm_irq_level,
    S.kvm_interrupt,
    S.kvm_pit_config,
    S.kvm_coalesced_mmio_zone,
    S.kvm_coalesced_mmio,
    S.kvm_coalesced_mmio_ring,
    S.kvm_ioeventfd,
    S.kvm_enable_cap,
    S.kvm_msr_filter_range,
    S.kvm_msr_filter,
    S.kvm_vcpu_events,
    S.kvm_irqchip,
    S.kvm_lapic_state,
    S.kvm_pit_channel_state,
    S.kvm_pit_state2,
    S.kvm_clock_data,
    S.kvm_debug_exit_arch,
    S.kvm_guest_debug_arch,
    S.kvm_guest_debug,
    S.kvm_run,
]


def _members(
    cls: type[ctypes.Structure] | type[ctypes.Union], prefix: str = "", base: int = 0
) -> Iterator[tuple[str, int, int]]:
    """(C member path, offset, size) for every member, descending into aggregates.

    An anonymous member adds nothing to the C path, as in C. Size is -1 for a
    flexible array, which C's sizeof() rejects.
    """
    anonymous = set(getattr(cls, "_anonymous_", ()))
    for name, ftype in cls._fields_:
        field = getattr(cls, name)
        offset = base + field.offset
        path = prefix if name in anonymous else f"{prefix}{name}"
        if name not in anonymous:
            is_flex = issubclass(ftype, ctypes.Array) and ftype._length_ == 0
            yield path, offset, -1 if is_flex else field.size
        if issubclass(ftype, (ctypes.Structure, ctypes.Union)):
            yield from _members(ftype, path if name in anonymous else path + ".", offset)


def _constant_names() -> list[str]:
    names = [n for n, v in vars(K).items() if n.startswith("KVM_") and isinstance(v, int)]
    return ["KVMIO", *names]


def _python_layout() -> dict[str, int]:
    values: dict[str, int] = {}
    for cls in PUBLIC_STRUCTS:
        values[f"sizeof {cls.__name__}"] = ctypes.sizeof(cls)
        for path, offset, size in _members(cls):
            values[f"offsetof {cls.__name__}.{path}"] = offset
            if size >= 0:
                values[f"sizeof {cls.__name__}.{path}"] = size
    for name in _constant_names():
        values[f"value {name}"] = getattr(K, name)
    return values


def _c_program() -> str:
    lines = [
        "#include <stddef.h>",
        "#include <stdio.h>",
        "#include <linux/kvm.h>",
        "#define P(key, expr) printf(\"%s %llu\\n\", key, (unsigned long long)(expr))",
        "int main(void) {",
    ]
    for cls in PUBLIC_STRUCTS:
        c = f"struct {cls.__name__}"
        lines.append(f'P("sizeof {cls.__name__}", sizeof({c}));')
        for path, _offset, size in _members(cls):
            key = f"{cls.__name__}.{path}"
            lines.append(f'P("offsetof {key}", offsetof({c}, {path}));')
            if size >= 0:
                lines.append(f'P("sizeof {key}", sizeof((({c} *)0)->{path}));')
    for name in _constant_names():
        lines.append(f'P("value {name}", {name});')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: cannot compute the C layout to compare with")
    workdir: Path = tmp_path_factory.mktemp("kvm_abi")
    probe = workdir / "probe.c"
    probe.write_text("#include <linux/kvm.h>\nint main(void) { return 0; }\n")
    if subprocess.run([gcc, "-o", str(workdir / "probe"), str(probe)], capture_output=True).returncode:
        pytest.skip("<linux/kvm.h> not installed (linux-libc-dev): nothing to compare with")
    source = workdir / "abi.c"
    source.write_text(_c_program())
    exe = workdir / "abi"
    build = subprocess.run([gcc, "-o", str(exe), str(source)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in (line.rsplit(" ", 1) for line in out.splitlines())}


def test_every_struct_member_offset_and_size_matches_gcc(c_layout: dict[str, int]) -> None:
    py = {k: v for k, v in _python_layout().items() if not k.startswith("value ")}
    mismatches = {k: (v, c_layout.get(k)) for k, v in py.items() if c_layout.get(k) != v}
    assert mismatches == {}, "python vs C (key: (python, C))"


def test_every_constant_and_ioctl_number_matches_the_header(c_layout: dict[str, int]) -> None:
    py = {k: v for k, v in _python_layout().items() if k.startswith("value ")}
    mismatches = {k: (hex(v), hex(c_layout[k])) for k, v in py.items() if c_layout[k] != v}
    assert mismatches == {}


def test_the_comparison_covers_the_key_kvm_run_fields(c_layout: dict[str, int]) -> None:
    # Guards the generator itself: these must be among the compared members.
    for key in (
        "offsetof kvm_run.exit_reason",
        "offsetof kvm_run.io.data_offset",
        "offsetof kvm_run.mmio.is_write",
        "offsetof kvm_run.internal.data",
        "offsetof kvm_run.system_event.data",
        "offsetof kvm_run.system_event.flags",
        "offsetof kvm_run.fail_entry.cpu",
        "offsetof kvm_run.emulation_failure.insn_bytes",
        "offsetof kvm_run.kvm_valid_regs",
        "offsetof kvm_run.s",
        "offsetof kvm_sregs.interrupt_bitmap",
        "offsetof kvm_fpu.mxcsr",
        "value KVM_RUN",
        "value KVM_EXIT_SYSTEM_EVENT",
        "value KVM_CAP_USER_MEMORY",
    ):
        assert key in c_layout


# --- fixed x86_64 ABI, checked without a compiler ---


@pytest.mark.parametrize(
    ("cls", "size"),
    [
        (S.kvm_regs, 144),
        (S.kvm_segment, 24),
        (S.kvm_dtable, 16),
        (S.kvm_sregs, 312),
        (S.kvm_fpu, 416),
        (S.kvm_xsave, 4096),
        (S.kvm_debugregs, 128),
        (S.kvm_xcrs, 392),
        (S.kvm_userspace_memory_region, 32),
        (S.kvm_cpuid_entry2, 40),
        (S.kvm_cpuid2, 8),
        (S.kvm_irq_level, 8),
        (S.kvm_pit_config, 64),
        (S.kvm_coalesced_mmio_zone, 16),
        (S.kvm_coalesced_mmio, 24),
        (S.kvm_coalesced_mmio_ring, 8),
        (S.kvm_ioeventfd, 64),
        (S.kvm_vcpu_events, 64),
        (S.kvm_irqchip, 520),
        (S.kvm_lapic_state, 1024),
        (S.kvm_pit_state2, 112),
        (S.kvm_clock_data, 48),
        (S.kvm_run, 2352),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_fixed_struct_sizes(cls: type[ctypes.Structure], size: int) -> None:
    assert ctypes.sizeof(cls) == size


def test_kvm_run_fixed_offsets() -> None:
    assert S.kvm_run.exit_reason.offset == 8
    assert S.kvm_run.io.offset == 32  # the anonymous exit union
    assert S.kvm_run.kvm_valid_regs.offset == 32 + 256
    assert S.kvm_run.s.offset == 304
    assert S.kvm_run.s.size == 2048


def test_anonymous_union_members_read_in_place() -> None:
    run = S.kvm_run()
    raw = (ctypes.c_uint8 * ctypes.sizeof(run)).from_address(ctypes.addressof(run))
    raw[32 + 2] = 0xF1  # io.port, low byte
    raw[32 + 3] = 0x00
    assert run.io.port == 0xF1
    run.system_event.flags = 7
    assert run.system_event.data[0] == 7  # flags overlays data[0] since 5.18


def test_cpuid2_type_layout() -> None:
    cls = S.cpuid2_type(4)
    assert ctypes.sizeof(cls) == 8 + 4 * 40
    assert cls.entries.offset == 8
    assert S.cpuid2_type(4) is cls  # cached: one class per size


def test_coalesced_ring_fills_one_page() -> None:
    ring = S.coalesced_mmio_ring_type(4096)
    assert len(ring().coalesced_mmio) == (4096 - 8) // 24
    assert ctypes.sizeof(ring) <= 4096
