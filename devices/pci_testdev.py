"""QEMU's pci-testdev: the PCI function kvm-unit-tests checks port and MMIO exits with.

A function with vendor 0x1B36 (Red Hat), device 0x0005, two BARs: BAR0 4 KiB of memory,
BAR1 256 ports. Each BAR holds the same small protocol (kvm-unit-tests lib/pci.h,
``struct pci_test_dev_hdr``):

- offset 0 ``test`` (byte): writing n selects test n of this BAR and zeroes its count;
- offset 1 ``width`` (byte), 4 ``offset`` (u32), 8 ``data`` (u32): how to exercise the
  test: write ``data`` with ``width`` bytes at ``offset`` in the BAR;
- offset 12 ``count`` (u32): how many such writes arrived since the test was selected;
- offset 16 ``name``: the test's name, NUL-terminated.

Three tests per BAR, as QEMU's: ``no-eventfd``, ``wildcard-eventfd`` (every write at the
offset counts) and ``datamatch-eventfd`` (only writes of ``data``). QEMU backs the last two
with KVM ioeventfds, which swallow the writes (count stays 0); here every kind counts, which
kvm-unit-tests accepts (a count of 0 or exactly the writes made). Reading an unknown test's
header gives zeros, which ends the guest's enumeration.

From QEMU's hw/misc/pci-testdev.c (behaviour only; the code is written here).
"""

from __future__ import annotations

import struct
from typing import Sequence

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, config, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.pci import COMMAND, COMMAND_WRITABLE, Bar, PciConfig, bus_for

VENDOR_REDHAT = 0x1B36
DEVICE_TEST = 0x0005
CLASS_OTHER = 0x00FF
MEM_BAR, MEM_SIZE = 0, 0x1000
IO_BAR, IO_SIZE = 1, 0x100
HEADER = struct.Struct("<BBxxIII")  # test, width, offset, data, count; the name follows
COUNT_OFFSET = 12
NAME_OFFSET = HEADER.size
TESTS = ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd")
WIDTH = 2  # QEMU's tests write 16-bit values
DATA = 0xFA
TARGET = 0x40  # the tests' write offsets start past the header: TARGET + WIDTH * test


@config
class PciTestdevConfig:
    slot: int = prop(3, "PCI device number (function 0).", validator=in_range(0, 31))


class _Bar:
    """One BAR's protocol state: the selected test and its count."""
    class State:
        """What a snapshot keeps of one BAR's protocol (vmcore.snapshot)."""

        current: int | None
        count: int

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.current: int | None = None
        self.count = 0

    def header(self) -> bytes:
        if self.current is None:
            return b""
        n = self.current
        name = f"{self.kind}-{TESTS[n]}".encode() + b"\0"
        return HEADER.pack(n, WIDTH, TARGET + WIDTH * n, DATA, self.count) + name

    def read(self, offset: int, size: int) -> int:
        data = self.header()[offset:offset + size]
        return int.from_bytes(data.ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            # The test byte (a wider write selects by its low byte, as a byte lane would).
            number = value & 0xFF
            self.current = number if number < len(TESTS) else None
            self.count = 0
            return
        n = self.current
        if n is None or offset != TARGET + WIDTH * n or size != WIDTH:
            return
        if TESTS[n] == "datamatch-eventfd" and value != DATA:
            return
        self.count = (self.count + 1) & 0xFFFF_FFFF  # the header's u32, wrapping as a register would


class PciTestdev(Device):
    """kvm-unit-tests' PCI test function: a memory and an I/O BAR that count the writes made to them."""

    type_name = "pci-testdev"
    Config = PciTestdevConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot): configuration space and each BAR's test; the
        BARs are placed again where the loaded configuration says."""

        pci_config: PciConfig
        state: dict[int, _Bar]

    def state_loaded(self) -> None:
        self.pci.update(self)

    def __init__(self, config: PciTestdevConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.pci_config = PciConfig()
        self.bars = [Bar(MEM_BAR, "mem32", MEM_SIZE), Bar(IO_BAR, "io", IO_SIZE)]
        self.state = {MEM_BAR: _Bar("mmio"), IO_BAR: _Bar("portio")}
        self._reset_registers()
        self.pci = bus_for(ctx)
        self.pci.attach(self, config.slot, 0, name=ctx.name)

    def _reset_registers(self) -> None:
        config = self.pci_config
        config.data[:] = bytes(len(config.data))
        config.wmask[:] = bytes(len(config.wmask))
        config.set_ids(VENDOR_REDHAT, DEVICE_TEST)
        config.set_class(CLASS_OTHER)
        config.set_mask(COMMAND, 2, writable=COMMAND_WRITABLE)
        config.add_bars(self.bars)
        config.set_mask(0x3C, 1, writable=0xFF)  # interrupt line: scratch for software (pin is 0)
        for state in self.state.values():
            state.current, state.count = None, 0

    def regions(self) -> Sequence[Region]:
        return []  # only the BARs, which the PCI bus places

    def bar_region(self, bar_index: int, base: int) -> Region:
        state = self.state[bar_index]
        if bar_index == MEM_BAR:
            return Region(Space.MMIO, base, MEM_SIZE, state.read, state.write, sizes=(1, 2, 4), name="mmio")
        return Region(Space.PIO, base, IO_SIZE, state.read, state.write, sizes=(1, 2, 4), name="portio")

    def reset(self) -> None:
        self._reset_registers()
        self.pci.update(self)


@hookimpl
def vmcore_device_types() -> list[type]:
    return [PciTestdev]
