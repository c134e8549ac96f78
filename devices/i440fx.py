"""Intel 82441FX (i440FX) PCI and memory controller: the host bridge at 00:00.0.

It owns PCI configuration mechanism #1 (PCI Local Bus Specification 3.0, section
3.2.2.3.2): a 32-bit address register at port 0xCF8 and a data window at
0xCFC-0xCFF. The PAM registers (0x59-0x5F) and SMRAM (0x72) that SeaBIOS programs
to shadow its image are stored and read back only: the memory they describe is not
remapped yet (the shadow mapping follows in a later change), so the guest sees the
RAM and ROM the profile laid out whatever it writes there.
"""

from __future__ import annotations

from typing import Sequence

import attrs

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext
from vmcore.hookspecs import hookimpl
from vmcore.pci import COMMAND, COMMAND_MASTER, COMMAND_MEMORY, STATUS, PciConfig, bus_for

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC

VENDOR_INTEL = 0x8086
DEVICE_82441FX = 0x1237
CLASS_HOST_BRIDGE = 0x0600
REVISION = 0x02

# CONFIG_ADDRESS fields: enable 31, bus 23:16, device 15:11, function 10:8, register 7:2.
ENABLE = 1 << 31
ADDRESS_BITS = ENABLE | 0x00FFFFFC  # 30:24 reserved and 1:0 read as 0

# 82441FX datasheet, section 3.2: PAM0 (0x59) holds only the 0xF0000 BIOS segment in
# bits 5:4; PAM1-PAM6 hold two 16K segments each (bits 1:0 and 5:4, RE and WE).
PAM0 = 0x59
PAM6 = 0x5F
PAM0_WRITABLE = 0x30
PAM_WRITABLE = 0x33
# SMRAM control (0x72): D_OPEN 6, D_CLS 5, D_LCK 4, G_SMRAME 3, C_BASE_SEG 2:0 fixed at 010
# (the 0xA0000 segment). Once D_LCK is set, D_OPEN is cleared and it, D_LCK and G_SMRAME
# are read-only until reset.
SMRAM = 0x72
SMRAM_D_OPEN = 1 << 6
SMRAM_D_CLS = 1 << 5
SMRAM_D_LCK = 1 << 4
SMRAM_G_SMRAME = 1 << 3
SMRAM_DEFAULT = 0x02
SMRAM_WRITABLE = SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME

# Datasheet defaults: PCICMD memory access and bus master on, PCISTS DEVSEL medium, fast back-to-back.
COMMAND_DEFAULT = COMMAND_MEMORY | COMMAND_MASTER
STATUS_DEFAULT = 0x0280


@attrs.frozen
class I440fxConfig:
    """The host bridge has no properties: its ports and slot are fixed by the PC architecture."""


class I440fx(Device):
    """The i440FX host bridge function and the 0xCF8/0xCFC configuration ports."""

    type_name = "i440fx"
    Config = I440fxConfig

    def __init__(self, config: I440fxConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.pci = bus_for(ctx)
        self.pci_config = PciConfig()
        self.bars: list = []
        self.address = 0
        self.reset()
        self.pci.attach(self, 0, 0, name=ctx.name)

    def regions(self) -> Sequence[Region]:
        return [
            Region(Space.PIO, CONFIG_ADDRESS, 4, self.read_address, self.write_address, sizes=(1, 2, 4),
                   name="config-address"),
            Region(Space.PIO, CONFIG_DATA, 4, self.read_data, self.write_data, sizes=(1, 2, 4), name="config-data"),
        ]

    def reset(self) -> None:
        config = self.pci_config
        config.data[:] = bytes(len(config.data))
        config.set_ids(VENDOR_INTEL, DEVICE_82441FX)
        config.set_class(CLASS_HOST_BRIDGE)
        config.set_revision(REVISION)
        config.set_word(COMMAND, COMMAND_DEFAULT)
        config.set_word(STATUS, STATUS_DEFAULT)
        config.set_mask(PAM0, 1, writable=PAM0_WRITABLE)
        for register in range(PAM0 + 1, PAM6 + 1):
            config.set_mask(register, 1, writable=PAM_WRITABLE)
        config.set_byte(SMRAM, SMRAM_DEFAULT)
        config.set_mask(SMRAM, 1, writable=SMRAM_WRITABLE)
        self.address = 0

    # --- config space side effects --------------------------------------------------------

    def pci_config_written(self, offset: int, size: int) -> None:
        if offset <= SMRAM < offset + size and self.pci_config.byte(SMRAM) & SMRAM_D_LCK:
            config = self.pci_config
            config.set_byte(SMRAM, config.byte(SMRAM) & ~SMRAM_D_OPEN)
            config.set_mask(SMRAM, 1, writable=SMRAM_D_CLS)

    def pam(self) -> bytes:
        """PAM0-PAM6 as the guest last wrote them (the shadow mapping they describe is not modelled)."""
        return bytes(self.pci_config.data[PAM0:PAM6 + 1])

    # --- mechanism #1 -------------------------------------------------------------------------

    def read_address(self, offset: int, size: int) -> int:
        # Only a dword access at 0xCF8 is CONFIG_ADDRESS; narrower ones belong to the ISA side
        # (0xCF9 is the PIIX3 reset control register, not modelled here).
        if offset != 0 or size != 4:
            return (1 << (8 * size)) - 1
        return self.address

    def write_address(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value & ADDRESS_BITS

    def _target(self) -> tuple[int, int, int, int] | None:
        address = self.address
        if not address & ENABLE:
            return None
        return (address >> 16) & 0xFF, (address >> 11) & 0x1F, (address >> 8) & 0x7, address & 0xFC

    def read_data(self, offset: int, size: int) -> int:
        target = self._target()
        if target is None:
            return (1 << (8 * size)) - 1
        bus, device, function, register = target
        return self.pci.config_read(bus, device, function, register + offset, size)

    def write_data(self, offset: int, size: int, value: int) -> None:
        target = self._target()
        if target is None:
            return
        bus, device, function, register = target
        self.pci.config_write(bus, device, function, register + offset, size, value)


@hookimpl
def vmcore_device_types() -> list[type]:
    return [I440fx]
