"""Intel 82371SB (PIIX3) function 1: the IDE controller at 00:01.1, both channels in legacy mode.

What firmware and operating systems see, as on QEMU's ``-M pc``:

- PCI function 00:01.1 (properties ``slot`` and ``function``), vendor 0x8086, device
  0x7010, class 0x0101 (mass storage, IDE), programming interface 0x80: both channels
  fixed in compatibility mode (bits 0 and 2 clear, read-only, so BAR0-BAR3 are not
  implemented and read 0) and a bus master (bit 7). Header type 0x00 (the multi-function
  bit lives in function 0, the ``piix3`` ISA bridge; SeaBIOS and Linux only look at
  functions 1-7 of a device whose function 0 has it). Interrupt pin 0: the channels use
  ISA IRQs 14 and 15, not INTx.
- The legacy channels, claimed directly on the port bus: primary at 0x1F0-0x1F7 and
  0x3F6 on IRQ 14, secondary at 0x170-0x177 and 0x376 on IRQ 15, each an
  :class:`vmcore_devices.ide.AtaChannel` with the drives the ``primary_master`` ...
  ``secondary_slave`` properties name. A channel without drives reads 0 everywhere
  (see AtaChannel): SeaBIOS's probe sees BSY clear at once and the 0x55/0xAA register
  test fail, so it moves on without waiting.
- BAR4 (BMIBA, 0x20): a 16-byte I/O BAR for the bus-master IDE registers, sized and
  placed by the guest through vmcore.pci (sizing reads back 0xFFFFFFF1), decoded while
  the command register's I/O enable is set.
- PCICMD: I/O space enable (bit 0) and bus master enable (bit 2) writable, reset 0.
  PCISTS 0x0280 (fast back-to-back, medium DEVSEL), the abort bits 11-13
  write-1-to-clear. MLT (0x0D) bits 7:4 writable.
- IDETIM (0x40-0x41 primary, 0x42-0x43 secondary; 82371FB/SB datasheet, function 1
  configuration registers):
  bit 15 IDE decode enable, 14 SITRE (slave timing in SIDETIM), 13:12 IORDY sample
  point, 9:8 recovery time, 7:0 the per-drive TIME/IE/PPE/DTE bits; bits 11:10 are
  reserved (read 0). Reset 0x0000. SIDETIM (0x44), the PIIX3's slave timings, is
  writable too. SeaBIOS's ``piix_ide_setup`` (src/fw/pciinit.c) writes 0x8000 to both
  IDETIM words, setting only the decode enable bits; Linux's ata_piix checks those
  bits (0x41 and 0x43 bit 7) and ignores a channel whose bit is clear.

Modelled only as storage: the timings (no effect on anything) and the IDE decode
enable bit: the legacy ports decode whatever IDETIM and PCICMD say, as in QEMU, so
a guest that talks to 0x1F0 without firmware having set the PCI function up still
finds its disk. The bus-master registers (per channel at BMIBA + 0 and + 8: BMICX
command, BMISX status, BMIDTP descriptor table pointer) hold what the guest writes,
with their read-only and write-1-to-clear bits, and BMISX's interrupt bit (2) is set
on each rising edge of the channel's IRQ (as on the chip and in QEMU); but starting
the engine (BMICX bit 0) moves no data and the active bit (BMISX 0) stays 0: there is
no DMA. The drives do not offer it either (IDENTIFY word 49 bit 8 clear, no
multiword or Ultra DMA modes) and READ/WRITE DMA commands are aborted, so guests use
PIO; SeaBIOS's ATA driver uses PIO anyway unless built with CONFIG_ATA_DMA, which
is off by default and in QEMU's SeaBIOS configurations (roms/config.seabios-*).

Not modelled: native-mode channels, the PIIX4's UDMA registers (0x48-0x4A), LBA48
(the drives are ``vmcore_devices.ide`` drives: see its list), power management.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

from vmcore.bus import Region, Space
from vmcore.chardev import HostFile
from vmcore.device import Device, DeviceContext, PropertyError, config, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.pci import (
    CACHE_LINE_SIZE,
    COMMAND,
    COMMAND_IO,
    COMMAND_MASTER,
    LATENCY_TIMER,
    STATUS,
    Bar,
    PciConfig,
    bus_for,
)

from .ide import AtaChannel, Disk, _image_path, open_disks

if TYPE_CHECKING:
    from vmcore.fuzz import FuzzScratch

VENDOR_INTEL = 0x8086
DEVICE_82371SB_IDE = 0x7010
CLASS_IDE = 0x0101
PROG_IF = 0x80  # both channels in compatibility mode, not switchable; bus-master capable

COMMAND_WRITABLE = COMMAND_IO | COMMAND_MASTER
STATUS_DEFAULT = 0x0280  # fast back-to-back capable, DEVSEL medium
STATUS_W1C = 0x3800  # received master abort, received target abort, signaled target abort
LATENCY_WRITABLE = 0xF0

BMIBA_BAR = 4
BMIBA_SIZE = 16

IDETIM_PRIMARY = 0x40
IDETIM_SECONDARY = 0x42
IDETIM_WRITABLE = 0xF3FF  # bits 11:10 reserved
IDETIM_DECODE = 0x8000
SIDETIM = 0x44

# Bus-master IDE registers, per channel (primary at 0, secondary at 8).
BMICX, BMISX, BMIDTP = 0, 2, 4
BMICX_SSBM, BMICX_RWCON = 0x01, 0x08
BMISX_ACTIVE, BMISX_ERROR, BMISX_INTERRUPT = 0x01, 0x02, 0x04
BMISX_DMA_CAPABLE = 0x60  # drive 0 (bit 5) and drive 1 (bit 6) DMA capable: set by software
# Per byte of one channel's eight: what the guest may write, and what a 1 clears.
BM_WRITABLE = bytes((BMICX_SSBM | BMICX_RWCON, 0, BMISX_DMA_CAPABLE, 0, 0xFC, 0xFF, 0xFF, 0xFF)) * 2
BM_W1C = bytes((0, 0, BMISX_ERROR | BMISX_INTERRUPT, 0, 0, 0, 0, 0)) * 2

# The legacy channels: command block, control port, ISA IRQ.
CHANNELS = ((0x1F0, 0x3F6, 14), (0x170, 0x376, 15))
DRIVES = ("primary_master", "primary_slave", "secondary_master", "secondary_slave")
MODEL = "VMCORE HARDDISK"


def _drive(key: str, where: str) -> str:
    return prop("", f"Raw disk image of the {where}; empty: no drive. Relative to the profile that sets it.",
                path=True, validator=_image_path(key, optional=True))


@config
class PiixIdeConfig:
    primary_master: str = _drive("primary_master", "primary channel's master (0x1F0, IRQ 14)")
    primary_slave: str = _drive("primary_slave", "primary channel's slave")
    secondary_master: str = _drive("secondary_master", "secondary channel's master (0x170, IRQ 15)")
    secondary_slave: str = _drive("secondary_slave", "secondary channel's slave")
    readonly: bool = prop(False, "Open every image read-only; writes fail with ABRT.")
    slot: int = prop(1, "PCI device number of the PIIX3 (function 0 is the piix3 ISA bridge).",
                     validator=in_range(0, 31))
    function: int = prop(1, "PCI function number of the IDE controller.", validator=in_range(0, 7))

    def __attrs_post_init__(self) -> None:
        seen: dict[tuple[int, int], str] = {}
        for key in DRIVES:
            path = getattr(self, key)
            if not path:
                continue
            if not self.readonly and not os.access(path, os.W_OK):
                raise PropertyError(key, f"not writable: {os.path.abspath(path)} (set readonly: true)")
            info = os.stat(path)
            other = seen.get((info.st_dev, info.st_ino))
            if other is not None and not self.readonly:
                raise PropertyError(key, f"{os.path.abspath(path)} is already the image of {other}; "
                                         f"two writable drives on one file would corrupt it")
            seen[(info.st_dev, info.st_ino)] = key


class PiixIde(Device):
    """PIIX3 IDE controller (PCI 00:01.1, 8086:7010): two legacy ATA channels with up to four disks, PIO only."""

    type_name = "piix-ide"
    Config = PiixIdeConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot): both channels, the bus-master registers and
        configuration space; the BARs are placed again where the loaded configuration says."""

        channels: list[AtaChannel]
        bm: bytearray
        pci_config: PciConfig

    def state_loaded(self) -> None:
        self.pci.update(self)

    @classmethod
    def fuzz_props(cls, scratch: FuzzScratch) -> dict[str, str]:
        # A full primary channel and a secondary channel with only a slave: every kind of position,
        # each drive on its own throw-away image.
        return {"primary_master": scratch.disk(0), "primary_slave": scratch.disk(1),
                "secondary_slave": scratch.disk(2)}

    def __init__(self, config: PiixIdeConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        # Serials by position, as QEMU numbers its drives: VMC0001 is the primary master.
        disks = open_disks([(getattr(config, key), f"VMC000{n + 1}") for n, key in enumerate(DRIVES)],
                           config.readonly, MODEL)
        self.channels = [
            AtaChannel(disks[2 * n:2 * n + 2], ctx.irq(irq), ctx.clock,
                       on_interrupt=lambda n=n: self._latch_interrupt(n))
            for n, (_, _, irq) in enumerate(CHANNELS)
        ]
        self.pci_config = PciConfig()
        self.bars = [Bar(BMIBA_BAR, "io", BMIBA_SIZE)]
        self.bm = bytearray(BMIBA_SIZE)
        self._reset_registers()
        self.pci = bus_for(ctx)
        try:
            self.pci.attach(self, config.slot, config.function, name=ctx.name)
        except ValueError:
            self.close()
            raise

    @property
    def disks(self) -> list[Disk | None]:
        """Primary master, primary slave, secondary master, secondary slave (None: no drive)."""
        return [disk for channel in self.channels for disk in channel.disks]

    def host_files(self) -> Sequence[HostFile]:
        """The images, as inputs: no device output may name one (it would truncate the disk)."""
        return [HostFile(key, getattr(self.config, key), output=False) for key in DRIVES if getattr(self.config, key)]

    def regions(self) -> Sequence[Region]:
        out = []
        for channel, (port, ctl_port, _), label in zip(self.channels, CHANNELS, ("primary", "secondary")):
            # Sizes 1, 2 and 4 at the command block: a 32-bit data access is two words of one register.
            out.append(Region(Space.PIO, port, 8, channel.read, channel.write, sizes=(1, 2, 4),
                              name=f"{label}-command"))
            out.append(Region(Space.PIO, ctl_port, 1, channel.read_control, channel.write_control, sizes=(1,),
                              name=f"{label}-control"))
        return out

    def bar_region(self, bar_index: int, base: int) -> Region:
        return Region(Space.PIO, base, BMIBA_SIZE, self.read_bm, self.write_bm, sizes=(1, 2, 4), name="bmide")

    def _reset_registers(self) -> None:
        config = self.pci_config
        config.data[:] = bytes(len(config.data))
        config.wmask[:] = bytes(len(config.wmask))
        config.w1cmask[:] = bytes(len(config.w1cmask))
        config.set_ids(VENDOR_INTEL, DEVICE_82371SB_IDE)
        config.set_class(CLASS_IDE, PROG_IF)
        config.set_header_type(0x00)
        config.set_word(STATUS, STATUS_DEFAULT)
        config.set_mask(COMMAND, 2, writable=COMMAND_WRITABLE)
        config.set_mask(STATUS, 2, w1c=STATUS_W1C)
        config.set_mask(CACHE_LINE_SIZE, 1, writable=0)
        config.set_mask(LATENCY_TIMER, 1, writable=LATENCY_WRITABLE)
        config.add_bars(self.bars)
        config.set_mask(0x3C, 1, writable=0xFF)  # interrupt line: scratch for software (pin is 0)
        for register in (IDETIM_PRIMARY, IDETIM_SECONDARY):
            config.set_mask(register, 2, writable=IDETIM_WRITABLE)
        config.set_mask(SIDETIM, 1, writable=0xFF)
        self.bm[:] = bytes(BMIBA_SIZE)

    def reset(self) -> None:
        self._reset_registers()
        for channel in self.channels:
            channel.reset()
        self.pci.update(self)  # I/O decoding is off again: BAR4 leaves the port bus

    def close(self) -> None:
        for channel in self.channels:
            channel.close()

    def idetim(self, channel: int) -> int:
        """IDETIM of channel 0 (primary) or 1 (secondary), as the guest last wrote it."""
        return self.pci_config.word(IDETIM_SECONDARY if channel else IDETIM_PRIMARY)

    # --- bus-master IDE registers (stored) --------------------------------------------------------

    def _latch_interrupt(self, channel: int) -> None:
        self.bm[8 * channel + BMISX] |= BMISX_INTERRUPT

    def read_bm(self, offset: int, size: int) -> int:
        return int.from_bytes(self.bm[offset:offset + size].ljust(size, b"\0"), "little")

    def write_bm(self, offset: int, size: int, value: int) -> None:
        bm = self.bm
        for k in range(size):
            at = offset + k
            if at >= BMIBA_SIZE:
                break
            byte = value >> (8 * k) & 0xFF
            keep = bm[at] & ~BM_WRITABLE[at]
            bm[at] = (keep | byte & BM_WRITABLE[at]) & ~(byte & BM_W1C[at]) & 0xFF


@hookimpl
def vmcore_device_types() -> list[type]:
    return [PiixIde]
