"""ACPI tables (vmcore.acpi) and the acpi-pm device, checked against the specification's layouts."""

from __future__ import annotations

import struct

import pytest

from vmcore.acpi import (ACPI_BASE, AcpiDevice, AcpiError, Apics, PmBlocks, acpi_tables, integer, pkg_length,
                         resources)

VIRTIO = [AcpiDevice("LNRO0005", 0xD000_0000, 0x200, 5), AcpiDevice("LNRO0005", 0xD000_1000, 0x200, 6)]
PM = PmBlocks(0x600, 0x604, 0x608, 9)


def _tables(blob: bytes) -> dict[bytes, bytes]:
    """Follow RSDP -> XSDT -> each table (FADT -> DSDT, FACS), checking every checksum on the way."""
    assert blob[:8] == b"RSD PTR " and sum(blob[:20]) & 0xFF == 0 and sum(blob[:36]) & 0xFF == 0
    _rsdt, length, xsdt = struct.unpack_from("<IIQ", blob, 16)
    assert length == 36

    def at(address: int) -> bytes:
        offset = address - ACPI_BASE
        size = struct.unpack_from("<I", blob, offset + 4)[0]
        data = blob[offset:offset + size]
        assert sum(data) & 0xFF == 0 or data[:4] == b"FACS", data[:4]
        return data

    found = {}
    root = at(xsdt)
    for (pointer,) in struct.iter_unpack("<Q", root[36:]):
        data = at(pointer)
        found[data[:4]] = data
    fadt = found[b"FACP"]
    facs, dsdt = struct.unpack_from("<II", fadt, 36)
    found[b"FACS"], found[b"DSDT"] = at(facs), at(dsdt)
    assert struct.unpack_from("<QQ", fadt, 132) == (facs, dsdt)
    return found


def test_the_tables_chain_from_the_rsdp_with_valid_checksums() -> None:
    tables = _tables(acpi_tables(VIRTIO, PM, Apics(0, 0xFEE0_0000, 1, 0xFEC0_0000)))
    assert set(tables) == {b"FACP", b"APIC", b"DSDT", b"FACS"}
    fadt = tables[b"FACP"]
    assert len(fadt) == 244
    assert struct.unpack_from("<H", fadt, 46)[0] == 9  # SCI
    assert struct.unpack_from("<I", fadt, 48)[0] == 0  # SMI_CMD: ACPI mode from the start
    assert struct.unpack_from("<III", fadt, 56)[0] == 0x600 and struct.unpack_from("<I", fadt, 76)[0] == 0x608
    assert struct.unpack_from("<BBBB", fadt, 88) == (4, 2, 0, 4)


def test_without_apics_there_is_no_madt() -> None:
    assert b"APIC" not in _tables(acpi_tables(VIRTIO, PM, None))


def test_the_madt_names_the_apics_and_the_isa_overrides() -> None:
    madt = _tables(acpi_tables(VIRTIO, PM, Apics(0, 0xFEE0_0000, 1, 0xFEC0_0000)))[b"APIC"]
    assert struct.unpack_from("<II", madt, 36) == (0xFEE0_0000, 1)
    entries, at = [], 44
    while at < len(madt):
        kind, length = madt[at], madt[at + 1]
        entries.append((kind, madt[at:at + length]))
        at += length
    assert at == len(madt)
    assert [kind for kind, _ in entries] == [0, 1, 2, 2, 4]
    assert struct.unpack_from("<BBII", entries[1][1], 2) == (1, 0, 0xFEC0_0000, 0)
    assert struct.unpack_from("<BBIH", entries[2][1], 2) == (0, 0, 2, 0)  # IRQ 0 on GSI 2
    assert struct.unpack_from("<BBIH", entries[3][1], 2) == (0, 9, 9, 0x000D)  # the SCI: level, high


def test_the_dsdt_describes_each_device_with_its_window_and_irq() -> None:
    dsdt = _tables(acpi_tables(VIRTIO, PM, None))[b"DSDT"]
    body = dsdt[36:]
    assert body.count(b"\x0DLNRO0005\x00") == 2
    assert body.count(b"\x5B\x82") == 2  # DeviceOp
    for item in VIRTIO:
        assert struct.pack("<BHBII", 0x86, 9, 1, item.mmio_base, item.mmio_size) in body  # Memory32Fixed
        assert struct.pack("<BHBBI", 0x89, 6, 0x03, 1, item.irq) in body  # edge, active high
    assert b"\\_S5_\x12" in body  # soft off


@pytest.mark.parametrize("length, encoded", [(0, b"\x01"), (62, b"\x3F"), (63, b"\x41\x04"),
                                             (0x0FFD, b"\x4F\xFF"), (0x0FFE, b"\x81\x00\x01"),
                                             (0xFFFFC, b"\x8F\xFF\xFF")])
def test_pkg_length_counts_its_own_bytes(length: int, encoded: bytes) -> None:
    assert pkg_length(length) == encoded


def test_aml_integers_take_the_shortest_form() -> None:
    assert [integer(v) for v in (0, 1, 5, 0x1234, 0x12345678)] == [b"\x00", b"\x01", b"\x0A\x05", b"\x0B\x34\x12",
                                                                  b"\x0C\x78\x56\x34\x12"]


def test_a_window_above_4g_cannot_be_described() -> None:
    with pytest.raises(AcpiError, match="above 4 GiB"):
        resources(AcpiDevice("LNRO0005", 1 << 32, 0x200, 5))


# --- acpi-pm on the fake bus ------------------------------------------------------------------------

def test_pm_control_says_acpi_mode_and_s5_powers_off(fake_bus) -> None:
    fake_bus.attach("acpi-pm")
    assert fake_bus.inw(0x604) & 1  # SCI_EN
    fake_bus.outw(0x604, 0 << 10 | 1 << 13)  # SLP_EN with another sleep type: nothing
    assert fake_bus.exit_status is None
    fake_bus.outw(0x604, 5 << 10 | 1 << 13)  # \_S5's type
    assert fake_bus.exit_status == 0 and "S5" in fake_bus.exit_reason


def test_pm_event_block_enable_is_kept_and_status_cleared_by_ones(fake_bus) -> None:
    pm = fake_bus.attach("acpi-pm")
    fake_bus.outw(0x602, 0x0120)
    assert fake_bus.inl(0x600) == 0x0120 << 16
    pm.regs["PM1_STS"] = 0x0101  # an event the model would latch
    fake_bus.outw(0x600, 0x0001)
    assert fake_bus.inw(0x600) == 0x0100


def test_pm_timer_counts_at_3_58_mhz_of_machine_time(fake_bus) -> None:
    fake_bus.attach("acpi-pm")
    before = fake_bus.inl(0x608)
    fake_bus.step(1_000_000)  # 1 ms
    assert (fake_bus.inl(0x608) - before) & 0xFFFFFF in (3579, 3580)
