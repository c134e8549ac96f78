"""ACPI tables for an OS the machine boots directly: how Linux finds devices it cannot probe.

Written (by the machine, at :data:`ACPI_BASE`, in the legacy hole below 1 MiB that the
``linux`` loader's e820 map reserves, where an OS scans for the RSDP) when a device
describes itself for ACPI (:meth:`vmcore.device.Device.acpi_devices`: a virtio-mmio
device is ``LNRO0005``, Linux's ``virtio_mmio`` ACPI match) and the machine has the power
management device the FADT points at (``acpi-pm``). The tables: RSDP (2.0) -> RSDT and XSDT
-> FADT (-> FACS, DSDT) and, with a local and an I/O APIC, a MADT. The DSDT is AML built
here: ``\\_SB`` with one Device per description (_HID, _UID, _CRS of a 32-bit fixed memory
window and an interrupt), and ``\\_S5`` for power-off.

Layouts from the ACPI specification 6.x (5.2: RSDP, SDT header, FADT, FACS, MADT; 19/20:
AML encoding; 6.4: resource descriptors); the code is written here.
"""

from __future__ import annotations

import struct
from typing import Sequence

import attrs

ACPI_BASE = 0xE_0000  # the BIOS area an OS scans for "RSD PTR " (16-byte aligned), up to 1 MiB
ACPI_LIMIT = 0x10_0000
OEM_ID = b"VMCORE"
OEM_TABLE_ID = b"VMCOREVM"
CREATOR_ID = b"VMCR"
#: What \_S5 (soft off) makes the OS write to PM1a_CNT's SLP_TYP (the acpi-pm device's value).
SLP_TYP_S5 = 5


class AcpiError(Exception):
    """A description the tables cannot hold (e.g. a window above 4 GiB)."""


@attrs.frozen
class AcpiDevice:
    """A device as the DSDT shows it: a hardware ID, and its MMIO window and interrupt."""

    hid: str
    mmio_base: int
    mmio_size: int
    irq: int
    #: Edge-triggered, active high (an ISA IRQ's default, what the I/O APIC pin then takes).
    edge: bool = True


@attrs.frozen
class PmBlocks:
    """The fixed hardware registers the FADT points at (ports), and the SCI's IRQ."""

    pm1a_event: int
    pm1a_control: int
    pm_timer: int
    sci_irq: int


@attrs.frozen
class Apics:
    """What the MADT says of the interrupt controllers (as the MP table does, vmcore.mptable)."""

    lapic_id: int
    lapic_base: int
    ioapic_id: int
    ioapic_base: int


# --- AML (ACPI 6.x, section 20) ---------------------------------------------------------------


def pkg_length(length: int) -> bytes:
    """PkgLength of a package whose content is ``length`` bytes (the encoding counts itself)."""
    for extra in range(4):
        total = length + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes((total,))
        if extra and total < 1 << (4 + 8 * extra):
            return bytes((extra << 6 | total & 0xF,)) + (total >> 4).to_bytes(extra, "little")
    raise AcpiError(f"an AML package of {length} bytes is too long")


def name_seg(name: str) -> bytes:
    encoded = name.encode("ascii")
    if not 1 <= len(encoded) <= 4:
        raise AcpiError(f"AML name {name!r}: 1 to 4 characters")
    return encoded.ljust(4, b"_")


def integer(value: int) -> bytes:
    if value == 0:
        return b"\x00"
    if value == 1:
        return b"\x01"
    for prefix, size in ((0x0A, 1), (0x0B, 2), (0x0C, 4), (0x0E, 8)):
        if value < 1 << (8 * size):
            return bytes((prefix,)) + value.to_bytes(size, "little")
    raise AcpiError(f"AML integer {value:#x} is wider than 64 bits")


def string(text: str) -> bytes:
    return b"\x0D" + text.encode("ascii") + b"\x00"


def name(path: bytes, value: bytes) -> bytes:
    return b"\x08" + path + value


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return b"\x11" + pkg_length(len(body)) + body


def package(*elements: bytes) -> bytes:
    body = bytes((len(elements),)) + b"".join(elements)
    return b"\x12" + pkg_length(len(body)) + body


def device(seg: str, *terms: bytes) -> bytes:
    body = name_seg(seg) + b"".join(terms)
    return b"\x5B\x82" + pkg_length(len(body)) + body


def scope(path: bytes, *terms: bytes) -> bytes:
    body = path + b"".join(terms)
    return b"\x10" + pkg_length(len(body)) + body


def resources(description: AcpiDevice) -> bytes:
    """_CRS: a Memory32Fixed read/write window and an Extended Interrupt, then the end tag."""
    if description.mmio_base + description.mmio_size > 1 << 32:
        raise AcpiError(f"{description.hid}: window {description.mmio_base:#x} is above 4 GiB")
    memory = struct.pack("<BHBII", 0x86, 9, 1, description.mmio_base, description.mmio_size)
    flags = 0x01 | (0x02 if description.edge else 0)  # consumer; edge or level; active high; exclusive
    interrupt = struct.pack("<BHBBI", 0x89, 6, flags, 1, description.irq)
    return buffer(memory + interrupt + b"\x79\x00")


def dsdt_body(devices: Sequence[AcpiDevice]) -> bytes:
    entries = [device(f"V{index:03X}", name(b"_HID", string(item.hid)), name(b"_UID", integer(index)),
                      name(b"_CRS", resources(item)))
               for index, item in enumerate(devices)]
    return (scope(b"\\_SB_", *entries)
            + name(b"\\_S5_", package(integer(SLP_TYP_S5), integer(SLP_TYP_S5), integer(0), integer(0))))


# --- tables (section 5.2) ---------------------------------------------------------------------


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A system description table: the 36-byte header (its checksum set), then ``body``."""
    header = struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                         CREATOR_ID, 1)
    data = bytearray(header + body)
    data[9] = _checksum(data)
    return bytes(data)


def facs() -> bytes:
    # signature, length, hardware signature, waking vector, global lock, flags, X waking vector, version
    return struct.pack("<4sIIIIIQB31s", b"FACS", 64, 0, 0, 0, 0, 0, 2, b"")


def fadt(dsdt: int, facs_address: int, pm: PmBlocks) -> bytes:
    """FADT revision 3 (244 bytes): SMI_CMD 0 (the system is in ACPI mode from the start), the PM
    event and control blocks and the PM timer at ``pm``'s ports, legacy devices and an 8042."""
    body = bytearray(244 - 36)

    def put(offset: int, fmt: str, *values: int) -> None:
        struct.pack_into(fmt, body, offset - 36, *values)

    put(36, "<II", facs_address, dsdt)
    put(46, "<H", pm.sci_irq)
    put(56, "<I", pm.pm1a_event)
    put(64, "<I", pm.pm1a_control)
    put(76, "<I", pm.pm_timer)
    put(88, "<BBBB", 4, 2, 0, 4)  # PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
    put(96, "<HH", 0x0FFF, 0xFFFF)  # no C2, no C3
    put(109, "<H", 0x0003)  # IAPC_BOOT_ARCH: legacy (ISA) devices, an 8042
    put(112, "<I", 1 << 0 | 1 << 2 | 1 << 4 | 1 << 5)  # WBINVD, C1, no fixed power or sleep button
    put(132, "<QQ", facs_address, dsdt)  # X_FIRMWARE_CTRL, X_DSDT
    for offset, port, width in ((148, pm.pm1a_event, 32), (172, pm.pm1a_control, 16), (208, pm.pm_timer, 32)):
        put(offset, "<BBBBQ", 1, width, 0, 0, port)  # system I/O
    return table(b"FACP", 3, bytes(body))


def madt(apics: Apics, sci_irq: int) -> bytes:
    """MADT: the local APIC and the I/O APIC (GSIs from 0), ISA IRQ 0 on GSI 2 and the SCI
    level-triggered, LINT1 as NMI; PCAT_COMPAT (the 8259s are there too)."""
    entries = (struct.pack("<BBBBI", 0, 8, 0, apics.lapic_id, 1)
               + struct.pack("<BBBBII", 1, 12, apics.ioapic_id, 0, apics.ioapic_base, 0)
               + struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)
               + struct.pack("<BBBBIH", 2, 10, 0, sci_irq, sci_irq, 0x000D)  # active high, level
               + struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1))
    return table(b"APIC", 3, struct.pack("<II", apics.lapic_base, 1) + entries)


def rsdp(rsdt: int, xsdt: int) -> bytes:
    data = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, rsdt, 36, xsdt, 0, b""))
    data[8] = _checksum(data[:20])
    data[32] = _checksum(data)
    return bytes(data)


def acpi_tables(devices: Sequence[AcpiDevice], pm: PmBlocks, apics: Apics | None,
                base: int = ACPI_BASE) -> bytes:
    """Every table, laid out from ``base`` (the RSDP first, each table 16-byte aligned)."""
    out = bytearray(b"\0" * 36)  # the RSDP, filled in last

    def place(data: bytes) -> int:
        out.extend(b"\0" * (-len(out) % 16))
        address = base + len(out)
        out.extend(data)
        return address

    facs_address = place(facs())
    dsdt = place(table(b"DSDT", 2, dsdt_body(devices)))
    pointers = [place(fadt(dsdt, facs_address, pm))]
    if apics is not None:
        pointers.append(place(madt(apics, pm.sci_irq)))
    rsdt = place(table(b"RSDT", 1, struct.pack(f"<{len(pointers)}I", *pointers)))
    xsdt = place(table(b"XSDT", 1, struct.pack(f"<{len(pointers)}Q", *pointers)))
    out[:36] = rsdp(rsdt, xsdt)
    if base + len(out) > ACPI_LIMIT:
        raise AcpiError(f"the ACPI tables ({len(out)} bytes) do not fit below 1 MiB from {base:#x}")
    return bytes(out)
