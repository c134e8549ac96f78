"""QEMU's pc-testdev: the test device kvm-unit-tests drives, on the ports and the MMIO page QEMU gives it.

- Ports ``port``..``port``+3 (0xE0): a 32-bit scratch register read and written in byte
  lanes (an access of n bytes at port+k touches bytes k..k+n-1), so tests can check that
  every width and port of ``in``/``out`` (string forms too) reaches the device intact.
- Ports ``port``+4..+7 (0xE4): "flush page": QEMU drops the host's mapping of the page a
  write names, so a KVM guest's next access faults in again; there is no host mapping
  cache here to drop, so a write is accepted and does nothing.
- Ports ``irq_port``..+23 (0x2000): a write of v to ``irq_port`` + n sets IRQ line n to
  v != 0 (how the APIC tests raise ISA interrupts through the IOAPIC or PIC).
- MMIO ``iomem``..+64 KiB (0xFF000000): 64 KiB of scratch memory behind MMIO, read and
  written at any size (the emulator test runs instructions against it).

From QEMU's hw/misc/pc-testdev.c (behaviour only; the code is written here).
"""

from __future__ import annotations

from typing import Sequence

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, config, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.regmap import Reg, RegisterFile, RegisterMap

IRQ_LINES = 24
IOMEM_SIZE = 0x10000


@config
class PcTestdevConfig:
    port: int = prop(0xE0, "First port: the scratch register (4 ports), then flush-page (4 ports).", hex=True,
                     validator=in_range(0, 0xFFF8))
    irq_port: int = prop(0x2000, "First of the 24 ports whose writes set IRQ lines 0-23.", hex=True,
                         validator=in_range(0, 0x10000 - IRQ_LINES))
    iomem: int = prop(0xFF00_0000, "Guest-physical address of the 64 KiB scratch MMIO window.", hex=True,
                      validator=in_range(0, (1 << 52) - IOMEM_SIZE))


class PcTestdev(Device):
    """kvm-unit-tests' test device: a scratch port, IRQ-line ports and 64 KiB of scratch MMIO."""

    type_name = "pc-testdev"
    Config = PcTestdevConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot)."""

        regs: RegisterFile
        iomem: bytearray

    # The ports at ``port``: every width and byte lane of in/out works on them (vmcore.regmap).
    registers = RegisterMap(
        Reg(0x0, "SCRATCH", 4, "rw", doc="scratch: reads back what was written, byte lane by lane"),
        Reg(0x4, "FLUSH_PAGE", 4, "wo", on_write="_flush_page", doc="flush-page: the page whose host mapping "
            "QEMU drops (none to drop here)"),
    )

    def __init__(self, config: PcTestdevConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.regs = self.registers.bind(self)
        self.iomem = bytearray(IOMEM_SIZE)
        self.lines = [ctx.irq(n) for n in range(IRQ_LINES)]

    def regions(self) -> Sequence[Region]:
        c = self.config
        return [
            *self.regs.regions(Space.PIO, c.port, sizes=(1, 2, 4)),
            Region(Space.PIO, c.irq_port, IRQ_LINES, None, self.write_irq, sizes=(1,), name="irq-lines"),
            Region(Space.MMIO, c.iomem, IOMEM_SIZE, self.read_iomem, self.write_iomem, name="iomem"),
        ]

    def _flush_page(self, _page: int) -> None:
        """Nothing to drop: guest memory has no second, cached mapping here."""

    def write_irq(self, offset: int, size: int, value: int) -> None:
        self.lines[offset].set_level(value != 0)

    def read_iomem(self, offset: int, size: int) -> int:
        return int.from_bytes(self.iomem[offset : offset + size], "little")

    def write_iomem(self, offset: int, size: int, value: int) -> None:
        self.iomem[offset : offset + size] = value.to_bytes(size, "little")


@hookimpl
def vmcore_device_types() -> list[type]:
    return [PcTestdev]
