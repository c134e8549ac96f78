"""CPU models (vmcore.cpu_model): the CPUID a profile's cpu.model/features/vendor give, on both accelerators."""

from __future__ import annotations

import pytest

from tests.helpers import REPO, kvm_ignores_set_cpuid, kvm_unavailable, skip_without_kvm, vmcore
from vmcore.cpu_model import (
    FEATURES,
    MODELS,
    CpuModelError,
    ModelSpec,
    answer,
    cpuid_for,
    feature_name,
    features_of,
    parse_features,
    vendor_of,
)

INTEL = (0x756E6547, 0x6C65746E, 0x49656E69)  # "GenuineIntel" as (ebx, ecx, edx)


def table_with(features: set[str], level: int = 0xD, xlevel: int = 0x80000008, vendor: tuple[int, ...] = INTEL
               ) -> dict[tuple[int, int], tuple[int, int, int, int]]:
    """A supported table offering exactly ``features`` (and a cache leaf, to see pass-through)."""
    table = {(0, 0): (level, vendor[0], vendor[1], vendor[2]), (1, 0): (0x306C4, 0x800, 0, 0),
             (4, 0): (0x121, 0x1C0003F, 0x3F, 0), (7, 0): (0, 0, 0, 0),
             (0xD, 0): (0x7, 0x340, 0x340, 0), (0xD, 1): (0x1, 0, 0, 0), (0xD, 2): (0x100, 0x240, 0, 0),
             (0x80000000, 0): (xlevel, vendor[0], vendor[1], vendor[2]), (0x80000001, 0): (0, 0, 0, 0),
             (0x80000008, 0): (0x3028, 0, 0, 0), (0x40000000, 0): (0x40000001, 1, 2, 3)}
    for name in features:
        bit = FEATURES[name]
        values = list(table[(bit.leaf, bit.subleaf)])
        values[bit.register] |= 1 << bit.bit
        table[(bit.leaf, bit.subleaf)] = (values[0], values[1], values[2], values[3])
    return table


EVERYTHING = (set(MODELS["qemu64"].features) | {"popcnt", "sse4.1", "xsave", "x2apic", "umip"}) - {"svm"}


def build(spec: ModelSpec, supported: set[str] = EVERYTHING, local_apic: bool = True,
          unavailable: dict[str, str] | None = None):  # noqa: ANN201 - a CpuidResult
    return cpuid_for(spec, table_with(supported), accel="a test CPU", unavailable=unavailable or {},
                     local_apic=local_apic)


# --- feature names ------------------------------------------------------------------------------


def test_feature_names_take_qemus_and_linuxs_spellings() -> None:
    assert feature_name("sse3") == "pni" and feature_name("SSE4_1") == "sse4.1"
    assert feature_name("tsc_deadline") == "tsc-deadline" and feature_name("lahf_lm") == "lahf-lm"
    assert feature_name("nosuch") is None
    assert parse_features("+x2apic,-cx16, +sse4-2") == (("x2apic", "sse4.2"), ("cx16",))
    assert parse_features(["+x2apic", "-x2apic"]) == ((), ("x2apic",))  # the last word wins, as in QEMU


def test_every_feature_bit_is_named_once() -> None:
    places = [(b.leaf, b.subleaf, b.register, b.bit) for b in FEATURES.values()]
    assert len(places) == len(set(places))
    assert FEATURES["x2apic"].bit == 21 and FEATURES["lm"].leaf == 0x80000001 and FEATURES["la57"].bit == 16


@pytest.mark.parametrize("text, fragment", [
    ("+cx61", r"did you mean cx16\?"),
    ("x2apic", r"expected \+name or -name"),
    ("+ospke", "set by the CPU"),
])
def test_bad_feature_lists_say_which_item(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_features(text)


# --- building the table -------------------------------------------------------------------------


def test_a_named_model_has_its_identity_and_features_and_nothing_else() -> None:
    result = build(ModelSpec("qemu64"))
    table = result.table
    assert vendor_of(table) == "AuthenticAMD"
    assert table[(0, 0)][0] == 0xD and table[(0x80000000, 0)][0] == 0x8000000A
    assert table[(1, 0)][0] == 0x663  # family 6, model 6, stepping 3
    assert features_of(table) == set(MODELS["qemu64"].features) - {"svm"}
    assert result.dropped == ("svm",)  # the model has it, this CPU does not: left out, reported
    brand = b"".join(v.to_bytes(4, "little") for leaf in (0x80000002, 0x80000003, 0x80000004)
                     for v in table[(leaf, 0)])
    assert brand.rstrip(b"\0") == b"QEMU Virtual CPU version 2.5+"
    assert table[(4, 0)] == (0x121, 0x1C0003F, 0x3F, 0)  # a cache leaf the model leaves open
    assert (0x40000000, 0) not in table  # no hypervisor leaves: the same on every accelerator


def test_amd_models_repeat_leaf_1_edx_in_the_extended_leaf_and_intel_ones_do_not() -> None:
    amd = build(ModelSpec("qemu64")).table
    assert amd[(0x80000001, 0)][3] & 0x0183F3FF == amd[(1, 0)][3] & 0x0183F3FF
    intel = build(ModelSpec("qemu64", vendor="GenuineIntel")).table
    assert vendor_of(intel) == "GenuineIntel"
    assert intel[(0x80000001, 0)][3] & 0x0183F3FF == 0
    assert "lm" in features_of(intel) and "syscall" in features_of(intel)


def test_plus_and_minus_change_the_model() -> None:
    table = build(ModelSpec("qemu64", add=("popcnt", "x2apic"), remove=("cx16", "nx"))).table
    features = features_of(table)
    assert {"popcnt", "x2apic"} <= features and not {"cx16", "nx"} & features


def test_a_feature_the_accelerator_lacks_is_an_error_naming_it() -> None:
    with pytest.raises(CpuModelError, match=r"cpu.features \+avx: a test CPU cannot run it"):
        build(ModelSpec("qemu64", add=("avx",)))
    with pytest.raises(CpuModelError, match=r"\+x2apic: no x2APIC here"):
        build(ModelSpec("max", add=("x2apic",)), unavailable={"x2apic": "no x2APIC here"})
    with pytest.raises(CpuModelError, match=r"\+x2apic: this machine has no local APIC"):
        build(ModelSpec("max", add=("x2apic",)), local_apic=False)


def test_max_is_the_accelerator_less_what_the_machine_cannot_honour() -> None:
    table = build(ModelSpec("max"), unavailable={"x2apic": "no"}).table
    assert features_of(table) == (EVERYTHING - {"x2apic"}) | {"apic"}
    assert table[(0x40000000, 0)] == (0x40000001, 1, 2, 3)


def test_host_is_kvms_only() -> None:
    with pytest.raises(CpuModelError, match="host's CPU through KVM"):
        build(ModelSpec("host"))
    table = cpuid_for(ModelSpec("host"), table_with(EVERYTHING), accel="this KVM", unavailable={}, local_apic=True,
                      host=True).table
    assert features_of(table) == EVERYTHING | {"apic"}


def test_the_apic_bits_follow_the_machine() -> None:
    without = features_of(build(ModelSpec("max"), local_apic=False).table)
    assert not {"apic", "x2apic"} & without
    assert "apic" in features_of(build(ModelSpec("qemu64")).table)


def test_xsave_state_is_offered_only_for_features_the_cpu_offers() -> None:
    # The supported table offers AVX state (component 2) without AVX: the guest sees x87 and SSE.
    table = build(ModelSpec("qemu64", add=("xsave",))).table
    assert table[(0xD, 0)][:3] == (0x3, 576, 576) and (0xD, 2) not in table
    with_avx = cpuid_for(ModelSpec("max"), table_with(EVERYTHING | {"avx"}), accel="t", unavailable={},
                         local_apic=True).table
    assert with_avx[(0xD, 0)][:3] == (0x7, 0x340, 0x340) and with_avx[(0xD, 2)] == (0x100, 0x240, 0, 0)
    assert build(ModelSpec("qemu64")).table[(0xD, 0)] == (0, 0, 0, 0)  # no XSAVE: an empty leaf


def test_leaves_out_of_range_are_answered_as_kvm_answers_them() -> None:
    intel = build(ModelSpec("qemu64", vendor="GenuineIntel")).table
    assert answer(intel, 0x1F, 0) == intel[(0xD, 0)]  # Intel: the highest basic leaf
    assert answer(intel, 0x8000_0010, 0) == intel[(0xD, 0)]
    amd = build(ModelSpec("qemu64")).table
    assert answer(amd, 0x1F, 0) == (0, 0, 0, 0)
    assert answer(amd, 7, 5) == (0, 0, 0, 0)  # a subleaf the table does not hold
    assert answer(amd, 1, 7) == amd[(1, 0)]  # leaf 1 has no subleaves


# --- on the accelerators ------------------------------------------------------------------------

DUMP = REPO / "machines" / "cpuid-dump.yaml"
#: guest/cpuid_dump.S under qemu64 less SSE3 and SVM, no local APIC: QEMU's qemu64 definition.
QEMU64_LINES = [
    "00000000: 0000000d 68747541 444d4163 69746e65",  # level 0xD, AuthenticAMD
    "00000001: 00000663 00010800 00002000 078bf9fd",  # 6/6/3; CX16; PPRO + MTRR, CLFLUSH, MCA, PSE36 less APIC
    "00000007: 00000000 00000000 00000000 00000000",
    "0000000d: 00000000 00000000 00000000 00000000",
    "80000000: 8000000a 68747541 444d4163 69746e65",
    "80000001: 00000663 00000000 00000001 2193f9fd",  # LAHF_LM; LM, NX, SYSCALL and the AMD aliases
    "80000002: 554d4551 72695620 6c617574 55504320",  # "QEMU Virtual CPU version 2.5+"
    "80000003: 72657620 6e6f6973 352e3220 0000002b",
    "80000004: 00000000 00000000 00000000 00000000",
]


def test_the_software_cpu_shows_qemu64_as_qemu_defines_it() -> None:
    run = vmcore("run", str(DUMP), "--accel", "tcg")
    assert run.status == 35, run.stderr
    assert run.stdout.decode().splitlines() == QEMU64_LINES
    assert "left out" not in run.stderr  # -pni,-svm: nothing the model asks for is missing


def test_a_feature_left_out_faults_on_the_software_cpu() -> None:
    """qemu64 has no POPCNT: popcnt is #UD, as on a processor without it (the engine's feature
    words follow the model); max has it, and -popcnt takes it away again."""
    probe = str(REPO / "machines" / "popcnt-probe.yaml")
    qemu64 = vmcore("run", probe, "--accel", "tcg")
    assert (qemu64.status, qemu64.stdout) == (41, b"popcnt #UD\n"), qemu64.stderr
    full = vmcore("run", probe, "--accel", "tcg", "--set", "cpu.model=max")
    assert (full.status, full.stdout) == (37, b"popcnt 8\n"), full.stderr
    less = vmcore("run", probe, "--accel", "tcg", "--set", "cpu.model=max", "--set", "cpu.features=-popcnt")
    assert (less.status, less.stdout) == (41, b"popcnt #UD\n"), less.stderr


def test_a_feature_the_software_cpu_cannot_honour_is_a_config_error() -> None:
    run = vmcore("run", str(DUMP), "--accel", "tcg", "--set", "cpu.features=+avx2")
    assert run.status == 2
    assert "cpu.features +avx2: the software CPU cannot run it (not in its CPUID)" in run.stderr
    timer = vmcore("run", str(DUMP), "--accel", "tcg", "--set", "cpu.features=+tsc-deadline")
    assert timer.status == 2 and "cpu.features +tsc-deadline: this machine has no local APIC" in timer.stderr
    apicless = vmcore("run", str(DUMP), "--accel", "tcg", "--set", "cpu.features=+x2apic")
    assert apicless.status == 2 and "cpu.features +x2apic: this machine has no local APIC" in apicless.stderr
    host = vmcore("run", str(DUMP), "--accel", "tcg", "--set", "cpu.model=host")
    assert host.status == 2 and "cpu.model host is the host's CPU through KVM" in host.stderr


def test_kvm_shows_the_same_cpuid_as_the_software_cpu() -> None:
    skip_without_kvm()
    run = vmcore("run", str(DUMP), "--accel", "kvm")
    assert run.status == 35, run.stderr
    lines = run.stdout.decode().splitlines()
    # Leaf 0 and the extended leaves come through on every KVM, this host's included.
    assert lines[0] == QEMU64_LINES[0] and lines[4:] == QEMU64_LINES[4:]
    reason = kvm_ignores_set_cpuid()
    if reason is not None:
        pytest.skip(reason)
    assert lines == QEMU64_LINES


def test_kvm_takes_the_host_model_with_the_hosts_vendor() -> None:
    skip_without_kvm()
    run = vmcore("run", str(DUMP), "--accel", "kvm", "--set", "cpu.model=host", "--set", "cpu.features=''")
    assert run.status == 35, run.stderr
    _leaf, _eax, ebx, ecx, edx = run.stdout.decode().splitlines()[0].split()
    vendor = b"".join(int(r, 16).to_bytes(4, "little") for r in (ebx, edx, ecx)).decode()
    host = next(line.split(":")[1].strip() for line in open("/proc/cpuinfo") if line.startswith("vendor_id"))
    assert vendor == host


def test_kvm_refuses_x2apic_without_a_local_apic() -> None:
    if kvm_unavailable() is not None:
        pytest.skip(f"needs /dev/kvm: {kvm_unavailable()}")
    run = vmcore("run", str(DUMP), "--accel", "kvm", "--set", "cpu.features=+x2apic")
    assert run.status == 2
    assert "cpu.features +x2apic: this machine has no local APIC" in run.stderr
