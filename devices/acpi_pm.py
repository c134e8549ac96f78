"""ACPI power management registers: the fixed hardware an ACPI FADT points at (as PIIX4's PM function).

Three register blocks in port I/O, from ``port``:

- PM1a event block (4 bytes): PM1 status (write 1 to clear) and PM1 enable. No event is
  ever raised here (no power button, no timer overflow interrupt), so status stays 0 and
  the SCI stays low;
- PM1a control block (2 bytes, at +4): SCI_EN reads 1 (the system is in ACPI mode from the
  start, the FADT's SMI_CMD is 0); writing SLP_EN with SLP_TYP 5 (the DSDT's \\_S5, soft off)
  powers the machine off: the run ends with status 0;
- PM timer (4 bytes, at +8): a 24-bit counter at 3.579545 MHz of machine time.

The machine writes ACPI tables only where a device needs them (a virtio-mmio device for
Linux: vmcore.acpi); their FADT names this device's ports and its ``sci`` IRQ.
"""

from __future__ import annotations

from typing import Sequence

from vmcore.acpi import SLP_TYP_S5, PmBlocks
from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, config, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.regmap import Field, Reg, RegisterFile, RegisterMap

PM_TIMER_HZ = 3_579_545
SCI_EN, SLP_EN = 1 << 0, 1 << 13
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 7


@config
class AcpiPmConfig:
    port: int = prop(0x600, "First port of the three blocks (PM1a event +0, control +4, timer +8).", hex=True,
                     validator=in_range(0, 0xFFF4))
    sci: int = prop(9, "The SCI's IRQ line (level-triggered, as the MADT says).", validator=in_range(0, 15))


class AcpiPm(Device):
    """ACPI fixed-hardware registers: PM1 event and control, the PM timer; S5 powers off."""

    type_name = "acpi-pm"
    Config = AcpiPmConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot): the registers (the PM timer is machine time)."""

        regs: RegisterFile
    registers = RegisterMap(
        Reg(0x0, "PM1_STS", 2, "w1c", doc="PM1a status (no event is raised here: stays 0)"),
        Reg(0x2, "PM1_EN", 2, "rw", doc="PM1a enable"),
        Reg(0x4, "PM1_CNT", 2, "rw", reset=SCI_EN, on_write="_control_written", doc="PM1a control",
            fields=(Field("SCI_EN", 0, doc="ACPI mode: reads 1"), Field("SLP_TYP", SLP_TYP_SHIFT, 3),
                    Field("SLP_EN", 13, doc="sleep now: with SLP_TYP 5 (S5) the machine powers off; reads 0"))),
        Reg(0x8, "PM_TMR", 4, "ro", on_read="_timer", doc="PM timer: 24 bits at 3.579545 MHz of machine time"),
    )

    def __init__(self, config: AcpiPmConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.regs = self.registers.bind(self)

    def reset(self) -> None:
        self.regs.reset()

    def pm_blocks(self) -> PmBlocks:
        """What the FADT says: the three blocks' ports and the SCI's IRQ."""
        port = self.config.port
        return PmBlocks(port, port + 4, port + 8, self.config.sci)

    def regions(self) -> Sequence[Region]:
        return self.regs.regions(Space.PIO, self.config.port, sizes=(1, 2, 4))

    def _control_written(self, value: int) -> int:
        if value & SLP_EN and (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK == SLP_TYP_S5:
            self.ctx.exit(0, "ACPI soft off (S5)")
        return (value & ~SLP_EN) | SCI_EN  # SLP_EN reads 0; SCI_EN stays set

    def _timer(self, _stored: int) -> int:
        return self.ctx.clock.now() * PM_TIMER_HZ // 1_000_000_000 & 0xFFFFFF


@hookimpl
def vmcore_device_types() -> list[type]:
    return [AcpiPm]
