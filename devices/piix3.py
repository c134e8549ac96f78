"""Intel 82371SB (PIIX3) function 0: the PCI-to-ISA bridge at 00:01.0.

Modelled: the configuration space SeaBIOS looks for and the PIRQ route control
registers 0x60-0x63 (82371SB datasheet, section 2.2.9), which it programs to steer
PCI INTA#-INTD# to ISA IRQs, plus the APM control and status ports (APMC 0xB2, APMS
0xB3). All are stored and read back only: PIRQ routing is not wired to interrupt
lines, and a write to APMC raises no SMI, yet. The ELCR ports (0x4D0/0x4D1) belong
to the i8259 device.
"""

from __future__ import annotations

from typing import Sequence

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, config, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.pci import COMMAND, HEADER_MULTIFUNCTION, STATUS, PciConfig, bus_for

VENDOR_INTEL = 0x8086
DEVICE_82371SB_ISA = 0x7000
CLASS_ISA_BRIDGE = 0x0601

PIRQ_ROUTE = 0x60  # PIRQA..PIRQD at 0x60..0x63
PIRQ_COUNT = 4
PIRQ_DISABLED = 0x80  # IRQEN# (bit 7) set: not routed
PIRQ_WRITABLE = 0x8F  # bits 6:4 reserved; 3:0 the ISA IRQ

# Datasheet defaults: PCICMD I/O, memory and bus master on; PCISTS DEVSEL medium.
COMMAND_DEFAULT = 0x0007
STATUS_DEFAULT = 0x0200


@config
class Piix3Config:
    """The ISA bridge sits at 00:01.0, as on every i440FX PC."""

    apm_port: int = prop(0xB2, "APM control port (APMC); the status port (APMS) is apm_port + 1.", hex=True,
                         validator=in_range(1, 0xFFFE))


class Piix3(Device):
    """The PIIX3 ISA bridge function (multi-function device 1; the IDE and USB functions are not here)."""

    type_name = "piix3"
    Config = Piix3Config
    class State:
        """What a snapshot keeps (vmcore.snapshot)."""

        pci_config: PciConfig
        apm: bytearray

    def __init__(self, config: Piix3Config, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.pci_config = PciConfig()
        self.bars: list = []
        self.apm = bytearray(2)  # APMC, APMS
        self.reset()
        bus_for(ctx).attach(self, 1, 0, name=ctx.name)

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.apm_port, 2, self.read_apm, self.write_apm, sizes=(1,), name="apm")]

    def read_apm(self, offset: int, size: int) -> int:
        return self.apm[offset]

    def write_apm(self, offset: int, size: int, value: int) -> None:
        self.apm[offset] = value & 0xFF

    def reset(self) -> None:
        config = self.pci_config
        config.data[:] = bytes(len(config.data))
        self.apm[:] = b"\0\0"
        config.set_ids(VENDOR_INTEL, DEVICE_82371SB_ISA)
        config.set_class(CLASS_ISA_BRIDGE)
        config.set_header_type(HEADER_MULTIFUNCTION)
        config.set_word(COMMAND, COMMAND_DEFAULT)
        config.set_word(STATUS, STATUS_DEFAULT)
        for k in range(PIRQ_COUNT):
            config.set_byte(PIRQ_ROUTE + k, PIRQ_DISABLED)
            config.set_mask(PIRQ_ROUTE + k, 1, writable=PIRQ_WRITABLE)

    def pirq_route(self, pirq: int) -> int | None:
        """The ISA IRQ PIRQ ``pirq`` (0-3 for A-D) is routed to, or None when disabled."""
        value = self.pci_config.byte(PIRQ_ROUTE + pirq)
        return None if value & PIRQ_DISABLED else value & 0x0F


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Piix3]
