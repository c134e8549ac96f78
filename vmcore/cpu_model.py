"""CPU models: the CPUID a guest sees, the same on every accelerator that can honour it.

A profile names a model and features to add or remove, as QEMU's ``-cpu``::

    cpu:
      model: qemu64              # or Opteron_G1, max, host (KVM only)
      features: +x2apic,-cx16    # or a list: [+x2apic, -cx16]
      vendor: AuthenticAMD       # optional: the vendor string of leaves 0 and 0x80000000

:func:`parse_features` checks names when the profile loads; :func:`cpuid_for` builds the
table once the accelerator is known, from the model and what the accelerator *supports*
(``supported``: its own CPUID for the most it can run: KVM_GET_SUPPORTED_CPUID on KVM,
the engine's answers on the software CPU). The rules, as QEMU's:

- ``max`` is what the accelerator supports; ``host`` the same, and only on KVM.
- A named model's features the accelerator lacks are dropped (listed in ``dropped``, for a
  one-line warning, as QEMU warns "host doesn't support requested feature").
- A feature asked for with ``+`` that the accelerator cannot honour is an error
  (:class:`CpuModelError`), naming the feature and why.
- ``-feature`` always works: the bit is cleared (the software CPU also stops executing the
  instructions behind it: see ``unicorn.EngineFeatures``).
- The local APIC bit follows the machine: on where an APIC is modelled, off where none is.

Named models are QEMU's definitions of the same name (target/i386/cpu.c: vendor, family,
model, stepping, levels and feature words; the leaves a model leaves open, such as the
caches, come from the accelerator). Hypervisor leaves (0x40000000 up) appear only with
``max``/``host``, so a named model reads the same on KVM and on the software CPU.
"""

from __future__ import annotations

import re
import struct

from .immutable import Immutable

#: (leaf, subleaf) -> (eax, ebx, ecx, edx).
CpuidTable = dict[tuple[int, int], tuple[int, int, int, int]]

EAX, EBX, ECX, EDX = range(4)


class FeatureBit(Immutable):
    """Where a feature's bit lives in the CPUID."""

    leaf: int
    subleaf: int
    register: int  # EAX..EDX
    bit: int


def _bits(leaf: int, register: int, names: str, subleaf: int = 0) -> dict[str, FeatureBit]:
    """``names``: one entry per bit from 0 up, ``.`` for a bit without a name here."""
    return {name: FeatureBit(leaf, subleaf, register, bit)
            for bit, name in enumerate(names.split()) if name != "."}


#: Feature names as QEMU and Linux's /proc/cpuinfo spell them.
FEATURES: dict[str, FeatureBit] = {
    **_bits(1, EDX, "fpu vme de pse tsc msr pae mce cx8 apic . sep mtrr pge mca cmov pat pse36 pn clflush . ds "
                    "acpi mmx fxsr sse sse2 ss ht tm ia64 pbe"),
    **_bits(1, ECX, "pni pclmulqdq dtes64 monitor ds-cpl vmx smx est tm2 ssse3 cid . fma cx16 xtpr pdcm . pcid "
                    "dca sse4.1 sse4.2 x2apic movbe popcnt tsc-deadline aes xsave osxsave avx f16c rdrand "
                    "hypervisor"),
    **_bits(7, EBX, "fsgsbase tsc-adjust sgx bmi1 hle avx2 . smep bmi2 erms invpcid rtm . . mpx . avx512f "
                    "avx512dq rdseed adx smap avx512ifma . clflushopt clwb intel-pt avx512pf avx512er avx512cd "
                    "sha-ni avx512bw avx512vl"),
    **_bits(7, ECX, ". avx512vbmi umip pku ospke waitpkg avx512vbmi2 . gfni vaes vpclmulqdq avx512vnni "
                    "avx512bitalg . avx512-vpopcntdq . la57 . . . . . rdpid . . cldemote . movdiri movdir64b "
                    ". . pks"),
    **_bits(7, EDX, ". . avx512-4vnniw avx512-4fmaps fsrm . . . . . md-clear . . . serialize . tsx-ldtrk . . "
                    "arch-lbr . . . . . . spec-ctrl stibp . arch-capabilities . ssbd"),
    **_bits(0x80000001, ECX, "lahf-lm cmp-legacy svm extapic cr8legacy abm sse4a misalignsse 3dnowprefetch osvw "
                             "ibs xop skinit wdt . lwp fma4 tce . nodeid-msr . tbm topoext perfctr-core "
                             "perfctr-nb"),
    **_bits(0x80000001, EDX, ". . . . . . . . . . . syscall . . . . . . . . nx . mmxext . . fxsr-opt pdpe1gb "
                             "rdtscp . lm 3dnowext 3dnow"),
}
#: Other spellings of the same features (QEMU accepts both; Linux prints the second).
_ALIASES = {"sse3": "pni", "sse4-1": "sse4.1", "sse4_1": "sse4.1", "sse4-2": "sse4.2", "sse4_2": "sse4.2",
            "lahf_lm": "lahf-lm", "tsc_deadline": "tsc-deadline", "tsc_deadline_timer": "tsc-deadline",
            "tsc-deadline-timer": "tsc-deadline", "sha": "sha-ni", "tsc_adjust": "tsc-adjust",
            "fxsr_opt": "fxsr-opt", "cr8-legacy": "cr8legacy", "pdpe1g": "pdpe1gb"}
#: Bits the CPU sets from its state, never from a model (a profile cannot ask for them).
_DYNAMIC = frozenset(("osxsave", "ospke"))
#: Features of the local APIC: a machine without one offers none of them.
_APIC_FEATURES = ("apic", "x2apic", "tsc-deadline")
#: The leaf-1 EDX bits AMD repeats in leaf 0x80000001 EDX (QEMU's CPUID_EXT2_AMD_ALIASES).
_AMD_ALIASES = 0x0183F3FF

VENDORS = ("GenuineIntel", "AuthenticAMD")


def feature_name(name: str) -> str | None:
    """The canonical name of feature ``name`` (any known spelling), or None."""
    name = name.strip().lower().replace("_", "-")
    name = _ALIASES.get(name, _ALIASES.get(name.replace("-", "_"), name))
    return name if name in FEATURES else None


class CpuModel(Immutable):
    """A named CPU: identity, CPUID levels and features."""

    name: str
    vendor: str
    family: int
    model: int
    stepping: int
    level: int  # the highest basic leaf
    xlevel: int  # the highest extended leaf
    features: frozenset[str]
    brand: str

    @property
    def signature(self) -> int:
        """CPUID leaf 1 EAX: family, model and stepping with their extended fields."""
        family, model = self.family, self.model
        eax = self.stepping | (model & 0xF) << 4 | min(family, 0xF) << 8
        if family > 0xF:
            eax |= (family - 0xF) << 20
        if family >= 6:
            eax |= (model >> 4) << 16
        return eax


_PPRO = "fpu de pse tsc msr mce cx8 pge cmov pat fxsr mmx sse sse2 pae sep apic"
#: QEMU's models (target/i386/cpu.c, builtin_x86_defs).
MODELS: dict[str, CpuModel] = {
    "qemu64": CpuModel("qemu64", "AuthenticAMD", 6, 6, 3, 0xD, 0x8000000A,
                       frozenset(f"{_PPRO} mtrr clflush mca pse36 pni cx16 lm syscall nx lahf-lm svm".split()),
                       "QEMU Virtual CPU version 2.5+"),
    "kvm64": CpuModel("kvm64", "GenuineIntel", 15, 6, 1, 0xD, 0x80000008,
                      frozenset(f"{_PPRO} mtrr clflush mca pse36 pni cx16 lm syscall nx".split()),
                      "Common KVM processor"),
    "Opteron_G1": CpuModel("Opteron_G1", "AuthenticAMD", 15, 6, 1, 5, 0x80000008,
                           frozenset(f"{_PPRO} vme clflush pse36 mca mtrr pni lm nx syscall".split()),
                           "AMD Opteron 240 (Gen 1 Class Opteron)"),
}
#: What the accelerator supports, as it is (``host`` only where that is the host's CPU: KVM).
PASS_THROUGH = ("max", "host")


class ModelSpec(Immutable):
    """A profile's ``cpu.model``, ``cpu.features`` and ``cpu.vendor``, names checked."""

    name: str = "max"
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    vendor: str | None = None

    def describe(self) -> str:
        changes = [f"+{n}" for n in self.add] + [f"-{n}" for n in self.remove]
        vendor = [f"vendor={self.vendor}"] if self.vendor else []
        return ",".join([self.name, *changes, *vendor])


class CpuModelError(ValueError):
    """A model or feature this accelerator cannot give the guest."""


def model_names() -> list[str]:
    return [*PASS_THROUGH, *MODELS]


def parse_features(text: str | list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``"+x2apic,-cx16"`` (or a list of such items) as (added, removed) canonical names.

    Raises ValueError naming the first bad item (and a close known name where there is one).
    """
    items = text if isinstance(text, list) else [i for i in re.split(r"[,\s]+", text) if i]
    add: list[str] = []
    remove: list[str] = []
    for item in items:
        item = str(item).strip()
        if len(item) < 2 or item[0] not in "+-":
            raise ValueError(f"{item!r}: expected +name or -name, e.g. +x2apic,-cx16")
        name = feature_name(item[1:])
        if name is None:
            from difflib import get_close_matches

            close = get_close_matches(item[1:].lower(), list(FEATURES) + list(_ALIASES), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(f"{item!r}: no CPU feature {item[1:]!r}{hint}")
        if name in _DYNAMIC:
            raise ValueError(f"{item!r}: {name} is set by the CPU from its state, not by a model")
        target, other = (add, remove) if item[0] == "+" else (remove, add)
        if name in other:
            other.remove(name)
        if name not in target:
            target.append(name)
    return tuple(add), tuple(remove)


def features_of(table: CpuidTable) -> set[str]:
    """The named features ``table`` offers."""
    return {name for name, bit in FEATURES.items() if _has(table, bit)}


def add_features(table: CpuidTable, names: tuple[str, ...]) -> None:
    """Offer ``names`` in ``table`` too (features an accelerator provides beyond its CPUID)."""
    for name in names:
        _set(table, FEATURES[name], True)


def vendor_of(table: CpuidTable) -> str:
    _, ebx, ecx, edx = table.get((0, 0), (0, 0, 0, 0))
    return struct.pack("<III", ebx, edx, ecx).decode("latin-1")


def _has(table: CpuidTable, bit: FeatureBit) -> bool:
    values = table.get((bit.leaf, bit.subleaf))
    return values is not None and bool(values[bit.register] >> bit.bit & 1)


def _set(table: CpuidTable, bit: FeatureBit, on: bool) -> None:
    values = list(table.get((bit.leaf, bit.subleaf), (0, 0, 0, 0)))
    values[bit.register] = values[bit.register] | 1 << bit.bit if on else values[bit.register] & ~(1 << bit.bit)
    table[(bit.leaf, bit.subleaf)] = (values[0], values[1], values[2], values[3])


def _vendor_registers(vendor: str) -> tuple[int, int, int]:
    """(ebx, ecx, edx) of leaf 0 for a 12-character vendor string."""
    ebx, edx, ecx = struct.unpack("<III", vendor.encode("latin-1"))
    return ebx, ecx, edx


class CpuidResult(Immutable):
    table: CpuidTable
    #: The named model's features this accelerator lacks, left out.
    dropped: tuple[str, ...]


def cpuid_for(spec: ModelSpec, supported: CpuidTable, *, accel: str, unavailable: dict[str, str],
              local_apic: bool, host: bool = False) -> CpuidResult:
    """The CPUID table for ``spec`` on an accelerator that supports ``supported``.

    ``unavailable`` names features the accelerator's CPUID offers but the machine cannot
    honour here (feature -> why), e.g. x2APIC without an x2APIC-capable APIC; ``local_apic``
    whether an APIC answers at all (the APIC bit follows it); ``host`` whether ``supported``
    is the host's CPU (KVM), which ``cpu.model: host`` asks for.
    """
    have = features_of(supported) - set(unavailable)
    for name in spec.add:
        if name in unavailable:
            raise CpuModelError(f"cpu.features +{name}: {unavailable[name]}")
        if name in _APIC_FEATURES and not local_apic:
            raise CpuModelError(f"cpu.features +{name}: this machine has no local APIC (add a lapic device, "
                                "irqchip userspace)")
        if name not in have and name not in _DYNAMIC:
            raise CpuModelError(f"cpu.features +{name}: {accel} cannot run it (not in its CPUID)")
    if spec.name in PASS_THROUGH:
        if spec.name == "host" and not host:
            raise CpuModelError("cpu.model host is the host's CPU through KVM: use max on the software CPU")
        table = {key: values for key, values in supported.items()}
        for name in unavailable:
            _set(table, FEATURES[name], False)
        dropped: tuple[str, ...] = ()
    else:
        model = MODELS[spec.name]
        table = _model_table(model, supported)
        dropped = tuple(sorted(n for n in model.features
                               if n not in have and n != "apic" and n not in spec.remove))
        for name in model.features:
            if name in have or name == "apic":
                _set(table, FEATURES[name], True)
    for name in spec.add:
        _set(table, FEATURES[name], True)
    for name in spec.remove:
        _set(table, FEATURES[name], False)
    if spec.vendor is not None:
        ebx, ecx, edx = _vendor_registers(spec.vendor)
        for leaf in (0, 0x80000000):
            if (leaf, 0) in table:
                eax = table[(leaf, 0)][0]
                table[(leaf, 0)] = (eax, ebx, ecx, edx)
    # The APIC bit says whether an APIC answers at 0xFEE00000; the others need the bit.
    _set(table, FEATURES["apic"], local_apic)
    if not local_apic:
        for name in ("x2apic", "tsc-deadline"):
            _set(table, FEATURES[name], False)
    _fix_extended(table)
    _fix_xsave(table, supported)
    return CpuidResult(table, dropped)


def _model_table(model: CpuModel, supported: CpuidTable) -> CpuidTable:
    """``model``'s leaves with no features yet; the leaves it leaves open come from ``supported``."""
    ebx, ecx, edx = _vendor_registers(model.vendor)
    table: CpuidTable = {(0, 0): (model.level, ebx, ecx, edx)}
    for (leaf, subleaf), values in supported.items():
        if 2 <= leaf <= model.level and leaf not in (7, 0xD):
            table[(leaf, subleaf)] = values  # caches, topology, power, PMU: the accelerator's
        elif 0x80000005 <= leaf <= model.xlevel and leaf != 0x80000007:
            table[(leaf, subleaf)] = values  # caches, address sizes
    # CLFLUSH line 8 x 8 bytes, one logical processor, initial APIC ID 0.
    table[(1, 0)] = (model.signature, 8 << 8 | 1 << 16, 0, 0)
    if model.level >= 7:
        table[(7, 0)] = (0, 0, 0, 0)
    if model.level >= 0xD:
        table[(0xD, 0)] = (0, 0, 0, 0)
    table[(0x80000000, 0)] = (model.xlevel, ebx, ecx, edx)
    table[(0x80000001, 0)] = (model.signature, 0, 0, 0)
    brand = model.brand.encode("ascii").ljust(48, b"\0")[:48]
    for i in range(3):
        if 0x80000002 + i <= model.xlevel:
            table[(0x80000002 + i, 0)] = struct.unpack_from("<4I", brand, 16 * i)
    return table


def _fix_extended(table: CpuidTable) -> None:
    """AMD processors repeat most leaf-1 EDX bits in leaf 0x80000001 EDX; Intel's leave them clear."""
    if (0x80000001, 0) not in table or (1, 0) not in table:
        return
    eax, ebx, ecx, edx = table[(0x80000001, 0)]
    edx &= ~_AMD_ALIASES
    if vendor_of(table) == "AuthenticAMD":
        edx |= table[(1, 0)][EDX] & _AMD_ALIASES
    table[(0x80000001, 0)] = (eax, ebx, ecx, edx)


#: XCR0 components and the feature that makes each usable: x87 and SSE with XSAVE, then AVX,
#: MPX, AVX-512 and PKRU. A component not listed here is kept as the accelerator offers it.
_XSTATE_NEEDS = {0: "xsave", 1: "xsave", 2: "avx", 3: "mpx", 4: "mpx", 5: "avx512f", 6: "avx512f", 7: "avx512f",
                 9: "pku"}


def _fix_xsave(table: CpuidTable, supported: CpuidTable) -> None:
    """Leaf 0xD: the XSAVE components ``supported`` offers whose features the table offers too.

    (unicorn's own leaf 0xD offers AVX state while its TCG runs no AVX instruction: an OS
    that trusted it would run vmovdqa into #UD.)
    """
    for key in [k for k in table if k[0] == 0xD]:
        del table[key]
    if table.get((0, 0), (0,))[0] < 0xD:
        return
    features = features_of(table)
    if "xsave" not in features or (0xD, 0) not in supported:
        table[(0xD, 0)] = (0, 0, 0, 0)
        return
    offered = supported[(0xD, 0)][EAX]
    mask = 0
    size = 512 + 64  # the legacy area and the XSAVE header
    for component in range(32):
        need = _XSTATE_NEEDS.get(component)
        if not offered >> component & 1 or (need is not None and need not in features):
            continue
        if component >= 2:
            if (0xD, component) not in supported:
                continue  # no layout for it: not offered
            sub_eax, sub_ebx = supported[(0xD, component)][:2]
            size = max(size, sub_ebx + sub_eax)  # offset + size
            table[(0xD, component)] = supported[(0xD, component)]
        mask |= 1 << component
    table[(0xD, 0)] = (mask, size, size, supported[(0xD, 0)][EDX])
    if (0xD, 1) in supported:
        table[(0xD, 1)] = supported[(0xD, 1)]


def answer(table: CpuidTable, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    """What CPUID(leaf, subleaf) returns with ``table``, as KVM answers it.

    A leaf above the highest of its range is the highest basic leaf on Intel processors,
    zeros on AMD's (KVM's rule for a guest's CPUID, and the processors' own); a subleaf the
    table does not hold is zeros.
    """
    values = table.get((leaf, subleaf if leaf in SUBLEAF_LEAVES else 0))
    if values is not None:
        return values
    top = table.get((leaf & 0x80000000, 0), (0,))[0]
    if (leaf > top or (leaf & 0x80000000 and not top)) and vendor_of(table) != "AuthenticAMD":
        level = table.get((0, 0), (0,))[0]
        return table.get((level, 0), (0, 0, 0, 0)) if leaf != level else (0, 0, 0, 0)
    return 0, 0, 0, 0


#: Leaves whose answer depends on ECX (the subleaf).
SUBLEAF_LEAVES = frozenset((0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1D, 0x1E, 0x1F, 0x20,
                            0x8000001D))
