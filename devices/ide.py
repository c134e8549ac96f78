"""Legacy ATA (IDE) channel with one or two disks, as PIIX IDE exposes it in legacy mode.

The channel itself is :class:`AtaChannel`; the ``ide`` device type here puts one on
configurable ports, and ``piix-ide`` (devices/piix_ide.py) puts two on the PC's
legacy ports behind the PIIX3 IDE PCI function.

Two port ranges, as on a PC's primary channel (secondary: 0x170/0x376, IRQ 15):

=================  ===============================================================
port               register
=================  ===============================================================
port + 0           data (16-bit PIO; a 32-bit access moves two words)
port + 1           error (read) / features (write)
port + 2           sector count
port + 3..5        LBA low / mid / high (CHS: sector number, cylinder low / high)
port + 6           device/head: bit 4 DEV (0 master, 1 slave), bit 6 LBA, bits 3-0 head / LBA 27-24
port + 7           status (read: clears the pending interrupt) / command (write)
ctl_port           alternate status (read: no side effect) / device control (write:
                   nIEN bit 1, SRST bit 2)
=================  ===============================================================

Each disk is a raw image file: sector n is bytes 512n..512n+511. An image whose size
is not a multiple of 512 has its last partial sector cut off: it is neither
addressable nor counted in IDENTIFY. The file is never extended; a sector reaches it
(``os.pwrite``) only when the guest has transferred all 512 bytes of it in a WRITE
SECTORS / WRITE MULTIPLE command.

Modelled (ATA/ATAPI-6, T13/1410D):

- Commands: IDENTIFY DEVICE (0xEC), READ SECTORS (0x20/0x21), WRITE SECTORS
  (0x30/0x31), READ/WRITE MULTIPLE (0xC4/0xC5) and SET MULTIPLE MODE (0xC6) with a
  block of one sector, INITIALIZE DEVICE PARAMETERS (0x91, sets the CHS translation),
  SET FEATURES (0xEF, accepted and ignored), FLUSH CACHE (0xE7, fsyncs the image),
  EXECUTE DEVICE DIAGNOSTIC (0x90). Anything else, IDENTIFY PACKET DEVICE (0xA1)
  included, completes with ERR and ABRT. A readonly disk aborts writes.
- LBA28 and CHS addressing (logical geometry 16 heads x 63 sectors until INITIALIZE
  DEVICE PARAMETERS changes it); sector count 0 means 256. An address past the end
  (or a CHS sector 0, head or sector beyond the geometry) ends the command with
  ERR and IDNF at that sector, the task file holding its address.
- PIO protocol, sector by sector (ATA-6 section 9.7/9.8): BSY while the device works
  (``SECTOR_NS`` of machine time per sector), then for a read DRQ and an interrupt
  for each sector; for a write DRQ at once for the first sector and, after each
  sector is written, an interrupt with DRQ for the next or the final status.
- INTRQ (ATA-6 section 5.2.9): each device has an interrupt pending flag, set at
  those points and at command completion, cleared by reading Status or writing
  Command; the IRQ line is high while the selected device's flag is set and nIEN
  is 0 (a deselected device or nIEN = 1 leaves the line floating, i.e. low).
- An absent device (the slave, or in ``piix-ide`` the master too): while it is
  selected, Status, Alternate Status and Error read 0 and commands other than
  EXECUTE DEVICE DIAGNOSTIC are ignored; the other device answers the rest of the
  task file, which is one set for both. Command block writes go to both devices. A
  channel with no device at all reads 0 everywhere and ignores writes (see
  :class:`AtaChannel`).
- Soft reset: SRST = 1 makes every present device BSY and drops any transfer; SRST
  back to 0 ends the reset at once: DRDY|DSC, error 0x01, the ATA signature
  (sector count 1, LBA low 1, mid 0, high 0, device 0) and no interrupt.
  EXECUTE DEVICE DIAGNOSTIC gives the same result, with an interrupt, whichever
  device is selected.

Approximations: a byte access to the data register moves a whole word (the low
byte is what a read returns, the high byte of a write is 0); the data register
reads 0 when no transfer is under way; the task file registers are one set shared
by both devices; resets take no machine time; nothing is cached, so a write is in
the file (page cache) as soon as its sector is complete, and FLUSH CACHE /
``close()`` fsync it; no DMA, no LBA48, no power management.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any, Callable, Sequence

from vmcore.bus import Region, Space
from vmcore.chardev import HostFile
from vmcore.clock import Clock, Timer
from vmcore.device import Device, DeviceContext, PropertyError, config, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.irq import IrqLine

if TYPE_CHECKING:
    from vmcore.fuzz import FuzzScratch

SECTOR = 512
SECTOR_NS = 10_000  # how long the device stays BSY per sector before DRQ / completion
LBA28_MAX = 0x0FFFFFFF
HEADS, SECTORS_PER_TRACK = 16, 63  # default logical geometry (IDENTIFY words 1/3/6)
MAX_CYLINDERS = 16383

# Command block offsets.
DATA, ERROR, NSECTOR, LBA_LOW, LBA_MID, LBA_HIGH, SELECT, STATUS = range(8)
FEATURES, COMMAND = ERROR, STATUS

# Status register (ATA-6 section 7.15).
BSY, DRDY, DF, DSC, DRQ, ERR = 0x80, 0x40, 0x20, 0x10, 0x08, 0x01
# Error register (section 7.11).
ABRT, IDNF = 0x04, 0x10
# Device register (section 7.10).
DEV, LBA_MODE = 0x10, 0x40
# Device control register (section 7.9).
NIEN, SRST = 0x02, 0x04

READY = DRDY | DSC
DIAGNOSTIC_OK = 0x01  # error register after a passed diagnostic: device 0 passed (device 1 absent or passed)

CMD_READ = (0x20, 0x21, 0xC4)
CMD_WRITE = (0x30, 0x31, 0xC5)
CMD_IDENTIFY, CMD_INIT_PARAMS, CMD_SET_FEATURES = 0xEC, 0x91, 0xEF
CMD_FLUSH, CMD_DIAGNOSTIC, CMD_SET_MULTIPLE = 0xE7, 0x90, 0xC6


def _image_path(name: str, optional: bool) -> Callable[[Any, Any, str], None]:
    def check(_instance: Any, attribute: Any, value: str) -> None:
        if not value:
            if optional:
                return
            raise PropertyError(name, "required: the path of a raw disk image")
        try:
            mode = os.stat(value).st_mode
        except OSError as exc:
            raise PropertyError(name, f"cannot use {os.path.abspath(value)}: {exc.strerror}") from None
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise PropertyError(name, f"not a file or block device: {os.path.abspath(value)}")
        if not os.access(value, os.R_OK):
            raise PropertyError(name, f"not readable: {os.path.abspath(value)}")

    return check


def _ata_string(text: str, length: int) -> bytes:
    """An IDENTIFY string: space padded, first character in each word's high byte (ATA-6 section 3.2.9)."""
    raw = text.encode("ascii").ljust(length, b" ")
    out = bytearray(length)
    out[0::2], out[1::2] = raw[1::2], raw[0::2]
    return bytes(out)


def _ata_text(max_length: int) -> Callable[[Any, Any, str], None]:
    def check(_instance: Any, attribute: Any, value: str) -> None:
        if len(value) > max_length or not all(0x20 <= ord(c) < 0x7F for c in value):
            raise PropertyError(attribute.name, f"must be at most {max_length} printable ASCII characters, "
                                                f"got {value!r}")

    return check


@config
class IdeConfig:
    port: int = prop(0x1F0, "Command block base: data, error/features, ..., status/command (8 ports).",
                     hex=True, validator=in_range(0, 0xFFF8))
    ctl_port: int = prop(0x3F6, "Alternate status / device control port.", hex=True,
                         validator=in_range(0, 0xFFFF))
    irq: int = prop(14, "IRQ line (INTRQ), high while the selected device has an interrupt pending.",
                    validator=in_range(0, 255))
    image: str = prop("", "Raw disk image of the master (device 0); required. Relative to the profile "
                          "that sets it.", path=True, validator=_image_path("image", optional=False))
    slave_image: str = prop("", "Raw disk image of the slave (device 1); empty: no slave.", path=True,
                            validator=_image_path("slave_image", optional=True))
    readonly: bool = prop(False, "Open the images read-only; writes fail with ABRT.")
    model: str = prop("VMCORE HARDDISK", "Model number in IDENTIFY (at most 40 characters).",
                      validator=_ata_text(40))
    serial: str = prop("VMC0001", "Serial number in IDENTIFY (at most 20 characters).", validator=_ata_text(20))

    def __attrs_post_init__(self) -> None:
        if self.port <= self.ctl_port < self.port + 8:
            raise PropertyError("ctl_port", f"{self.ctl_port:#x} is inside the command block "
                                            f"{self.port:#x}..{self.port + 7:#x}")
        if not self.readonly:
            for key in ("image", "slave_image"):
                path = getattr(self, key)
                if path and not os.access(path, os.W_OK):
                    raise PropertyError(key, f"not writable: {os.path.abspath(path)} (set readonly: true)")


class Disk:
    """One ATA device: its image, its IDENTIFY strings and its own state (status, error, pending interrupt)."""
    class State:
        """What a snapshot keeps of a drive (vmcore.snapshot); the image is the host's file, not saved."""

        status: int
        error: int
        intrq: bool
        heads: int
        spt: int
        multiple: int

    def __init__(self, path: str, readonly: bool, model: str = "VMCORE HARDDISK", serial: str = "VMC0001") -> None:
        self.readonly = readonly
        self.model = model
        self.serial = serial
        self.fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR)
        self.sectors = min(os.lseek(self.fd, 0, os.SEEK_END) // SECTOR, LBA28_MAX)
        # As QEMU's geometry guess: at least 2 cylinders, so a disk smaller than one cylinder
        # (a boot sector image) still has a CHS geometry BIOS int 13h can address.
        self.cylinders = max(2, min(self.sectors // (HEADS * SECTORS_PER_TRACK), MAX_CYLINDERS))
        self.status = READY
        self.error = DIAGNOSTIC_OK
        self.intrq = False
        self.heads, self.spt = HEADS, SECTORS_PER_TRACK  # current CHS translation
        self.multiple = 0  # SET MULTIPLE MODE's block size (0: disabled)

    def read(self, lba: int) -> bytes:
        return os.pread(self.fd, SECTOR, lba * SECTOR)

    def write(self, lba: int, data: bytes) -> None:
        os.pwrite(self.fd, data, lba * SECTOR)

    def flush(self) -> None:
        if not self.readonly:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.flush()
            finally:
                os.close(self.fd)
                self.fd = -1


def open_disks(specs: Sequence[tuple[str, str]], readonly: bool, model: str) -> list[Disk | None]:
    """A :class:`Disk` for each (path, serial) with a path, None for an empty path.

    If one cannot be opened, the ones already open are closed and the OSError is raised.
    """
    disks: list[Disk | None] = []
    try:
        for path, serial in specs:
            disks.append(Disk(path, readonly, model, serial) if path else None)
    except OSError:
        for disk in disks:
            if disk is not None:
                disk.close()
        raise
    return disks


class AtaChannel:
    """One ATA channel: the task file, device control, INTRQ and the two device positions.

    The device-independent part of an IDE port pair, shared by the ``ide`` device (one
    channel) and ``piix-ide`` (two). ``disks`` is [device 0, device 1], either may be None;
    ``line`` is the channel's IRQ line; ``on_interrupt``, when given, is called each time
    the channel's INTRQ goes from low to high (the PIIX bus-master status latches that).

    A channel with neither device reads 0 at every register, the control port included,
    and ignores writes: no device drives the bus, and 0 (not 0xFF) is what QEMU's IDE
    answers for an empty channel. With a 0 status BSY is clear, so a driver polling for
    "not busy" moves on at once (SeaBIOS's ``powerup_await_non_bsy`` returns on the first
    read) and the 0x55/0xAA scratch test on sector count / LBA low fails, so no device is
    probed. A floating 0xFF would also make SeaBIOS give up at once (it ORs the status
    reads and stops at 0xFF), but a driver that waits for BSY to clear without that check
    would wait out its whole timeout.
    """
    class State:
        """What a snapshot keeps of a channel (vmcore.snapshot): its drives, the task file and the
        transfer in progress, with the step its BSY timer leads to."""

        disks: list[Disk | None]
        _level: bool
        _timer: Timer
        _after: tuple[str, int] | None
        features: int
        nsector: int
        lba_low: int
        lba_mid: int
        lba_high: int
        select: int
        control: int
        buffer: bytearray
        pos: int
        writing: bool
        lba: int
        remaining: int

    def __init__(self, disks: Sequence[Disk | None], line: IrqLine, clock: Clock,
                 on_interrupt: Callable[[], None] | None = None) -> None:
        if len(disks) != 2:
            raise ValueError("an ATA channel has two device positions")
        self.disks: list[Disk | None] = list(disks)
        self.line = line
        self.clock = clock
        self.on_interrupt = on_interrupt
        self._level = False  # INTRQ as this channel drives it
        self._timer: Timer = clock.timer(self._fire)  # a command's next step, after BSY (see _busy)
        self._after: tuple[str, int] | None = None  # that step: a method's name, the disk's position
        # Task file (shared by both devices) and channel state.
        self.features = self.nsector = self.lba_low = self.lba_mid = self.lba_high = 0
        self.select = 0
        self.control = 0
        # The transfer under way: the data buffer, the position in it, and the command's progress.
        self.buffer = bytearray()
        self.pos = 0
        self.writing = False
        self.lba = 0  # the next sector of the command
        self.remaining = 0  # sectors of the command not yet transferred
        self.reset()

    @property
    def empty(self) -> bool:
        """Neither device present: nothing answers on this channel."""
        return self.disks[0] is None and self.disks[1] is None

    def reset(self) -> None:
        """Power-on / hardware reset: device control cleared, then as a soft reset."""
        self.control = 0
        self._soft_reset()

    def close(self) -> None:
        self._cancel()
        for disk in self.disks:
            if disk is not None:
                disk.close()

    # --- helpers --------------------------------------------------------------------------

    @property
    def disk(self) -> Disk | None:
        """The selected device, or None when it is absent."""
        return self.disks[1 if self.select & DEV else 0]

    def _update_line(self) -> None:
        disk = self.disk
        level = disk is not None and disk.intrq and not self.control & NIEN
        rising = level and not self._level
        self._level = level
        self.line.set_level(level)
        if rising and self.on_interrupt is not None:
            self.on_interrupt()

    def _interrupt(self, disk: Disk) -> None:
        disk.intrq = True
        self._update_line()

    def _cancel(self) -> None:
        self._timer.cancel()
        self._after = None

    def _stop_transfer(self) -> None:
        self._cancel()
        self.buffer = bytearray()
        self.pos = 0
        self.remaining = 0

    def _signature(self) -> None:
        """The task file after a reset or diagnostic for an ATA (non-packet) device (ATA-6 section 9.12)."""
        self.nsector, self.lba_low, self.lba_mid, self.lba_high, self.select = 1, 1, 0, 0, 0

    def _soft_reset(self) -> None:
        self._stop_transfer()
        for disk in self.disks:
            if disk is not None:
                disk.status = READY
                disk.error = DIAGNOSTIC_OK
                disk.intrq = False
                disk.heads, disk.spt, disk.multiple = HEADS, SECTORS_PER_TRACK, 0
        self._signature()
        self._update_line()

    def _complete(self, disk: Disk, error: int = 0) -> None:
        self._stop_transfer()
        disk.error = error
        disk.status = READY | (ERR if error else 0)
        self._interrupt(disk)

    # --- addressing -------------------------------------------------------------------------

    def _start_lba(self, disk: Disk) -> int | None:
        """The command's first sector from the task file; None for an impossible CHS address."""
        if self.select & LBA_MODE:
            return (self.select & 0x0F) << 24 | self.lba_high << 16 | self.lba_mid << 8 | self.lba_low
        head, sector = self.select & 0x0F, self.lba_low
        if sector == 0 or sector > disk.spt or head >= disk.heads:
            return None
        return ((self.lba_high << 8 | self.lba_mid) * disk.heads + head) * disk.spt + sector - 1

    def _show_address(self, disk: Disk, lba: int) -> None:
        """Put ``lba`` in the task file in the command's addressing mode (error outputs, section 8)."""
        if self.select & LBA_MODE:
            self.lba_low, self.lba_mid, self.lba_high = lba & 0xFF, lba >> 8 & 0xFF, lba >> 16 & 0xFF
            self.select = self.select & 0xF0 | lba >> 24 & 0x0F
        elif disk.heads and disk.spt:
            track, sector = divmod(lba, disk.spt)
            cylinder, head = divmod(track, disk.heads)
            self.lba_low, self.lba_mid, self.lba_high = sector + 1 & 0xFF, cylinder & 0xFF, cylinder >> 8 & 0xFF
            self.select = self.select & 0xF0 | head & 0x0F
        self.nsector = self.remaining & 0xFF

    def _in_range(self, disk: Disk, lba: int) -> bool:
        if lba < disk.sectors:
            return True
        self._show_address(disk, lba)
        self._complete(disk, IDNF)
        return False

    # --- commands -------------------------------------------------------------------------------

    def _command(self, command: int) -> None:
        if command == CMD_DIAGNOSTIC:
            self._diagnostic()  # both devices run it, whichever is selected (ATA-6 section 8.11)
            return
        disk = self.disk
        if disk is None:
            return  # the selected device is absent: nobody answers (ATA-6 section 9.16)
        if disk.status & BSY:
            return  # the host may not write Command while BSY
        self._stop_transfer()
        disk.intrq = False
        disk.error = 0
        self._update_line()
        if command in CMD_READ or command in CMD_WRITE:
            if command in (0xC4, 0xC5) and not disk.multiple:
                self._complete(disk, ABRT)  # READ/WRITE MULTIPLE before SET MULTIPLE MODE
                return
            if command in CMD_WRITE and disk.readonly:
                self._complete(disk, ABRT)
                return
            lba = self._start_lba(disk)
            self.remaining = self.nsector or 256
            if lba is None:
                self._complete(disk, IDNF)
                return
            self.lba = lba
            if not self._in_range(disk, lba):
                return
            if command in CMD_READ:
                self.writing = False
                self._busy(disk, "_read_sector")
            else:
                self.writing = True
                self._drq(disk, bytearray(SECTOR))  # first sector: DRQ without an interrupt (section 9.8)
        elif command == CMD_IDENTIFY:
            self.writing = False
            self.remaining = 1
            self._busy(disk, "_identified")
        elif command == CMD_INIT_PARAMS:
            disk.heads, disk.spt = (self.select & 0x0F) + 1, self.nsector
            self._complete(disk)
        elif command == CMD_SET_MULTIPLE:
            if self.nsector > 1:
                self._complete(disk, ABRT)  # IDENTIFY word 47: at most one sector per block
                return
            disk.multiple = self.nsector
            self._complete(disk)
        elif command == CMD_SET_FEATURES:
            self._complete(disk)
        elif command == CMD_FLUSH:
            disk.flush()
            self._complete(disk)
        else:
            self._complete(disk, ABRT)

    def _diagnostic(self) -> None:
        present = [disk for disk in self.disks if disk is not None]
        if not present:
            return
        self._stop_transfer()
        for each in present:
            each.status, each.error, each.intrq = READY, DIAGNOSTIC_OK, False
        self._signature()
        self._interrupt(present[0])  # device 0 reports for both (device 1 when it is alone)

    def _busy(self, disk: Disk, then: str) -> None:
        """BSY for a sector's time, then the method ``then`` of the command's next step, with ``disk``.
        By name, with the position of the disk, so a snapshot can keep what is pending."""
        disk.status = BSY
        self._after = (then, self.disks.index(disk))
        self._timer.mod(self.clock.now() + SECTOR_NS)

    def _fire(self) -> None:
        after, self._after = self._after, None
        if after is not None:
            then, position = after
            disk = self.disks[position]
            if disk is not None:
                getattr(self, then)(disk)

    def _identified(self, disk: Disk) -> None:
        self._data_in(disk, self._identify(disk))

    def _drq(self, disk: Disk, data: bytearray) -> None:
        self.buffer = data
        self.pos = 0
        disk.status = READY | DRQ

    def _data_in(self, disk: Disk, data: bytes) -> None:
        self._drq(disk, bytearray(data))
        self._interrupt(disk)

    def _read_sector(self, disk: Disk) -> None:
        if not self._in_range(disk, self.lba):
            return
        data = disk.read(self.lba)
        self._show_address(disk, self.lba)
        self._data_in(disk, data)

    def _sector_done(self, disk: Disk) -> None:
        """The host has moved the whole buffer."""
        if self.writing:
            disk.write(self.lba, bytes(self.buffer))  # the sector is complete: now it reaches the file
        self.buffer = bytearray()
        self.pos = 0
        self.remaining -= 1
        self.lba += 1
        if not self.remaining:
            if self.writing:
                self._busy(disk, "_complete")
            else:
                disk.status = READY  # no interrupt after the last sector of a read (section 9.7)
            return
        if self.writing:
            self._busy(disk, "_next_write")
        else:
            self._busy(disk, "_read_sector")

    def _next_write(self, disk: Disk) -> None:
        if not self._in_range(disk, self.lba):
            return
        self._show_address(disk, self.lba)
        self._drq(disk, bytearray(SECTOR))
        self._interrupt(disk)

    def _identify(self, disk: Disk) -> bytes:
        """IDENTIFY DEVICE data (ATA-6 section 8.15, table 16)."""
        words = [0] * 256
        current_cyl = min(disk.sectors // (disk.heads * disk.spt), 0xFFFF) if disk.heads and disk.spt else 0
        current = current_cyl * disk.heads * disk.spt
        words[0] = 0x0040  # fixed device, not removable
        words[1], words[3], words[6] = disk.cylinders, HEADS, SECTORS_PER_TRACK
        words[47] = 0x8000 | 1  # READ/WRITE MULTIPLE: at most one sector per block
        words[49] = 1 << 9  # LBA supported (no DMA)
        words[50] = 0x4000
        words[51] = 0x0200  # PIO mode 2 (obsolete word, still read by old drivers)
        words[53] = 0x0007  # words 54-58, 64-70 and 88 are valid
        words[54], words[55], words[56] = current_cyl, disk.heads, disk.spt
        words[57], words[58] = current & 0xFFFF, current >> 16 & 0xFFFF
        words[59] = (0x0100 | disk.multiple) if disk.multiple else 0
        words[60], words[61] = disk.sectors & 0xFFFF, disk.sectors >> 16
        words[64] = 0x0003  # PIO modes 3 and 4
        words[65] = words[66] = words[67] = words[68] = 120  # cycle times in ns
        words[80] = 0x007E  # ATA-1 to ATA-6
        words[82], words[83], words[84] = 0x0000, 0x4000 | 1 << 12, 0x4000  # FLUSH CACHE supported
        words[85], words[86], words[87] = 0x0000, 1 << 12, 0x4000
        words[88] = 0  # no Ultra DMA
        data = bytearray(b"".join(w.to_bytes(2, "little") for w in words))
        data[20:40] = _ata_string(disk.serial, 20)
        data[46:54] = _ata_string("0.1", 8)
        data[54:94] = _ata_string(disk.model, 40)
        # Word 255: integrity word, signature A5h and a checksum making all 512 bytes sum to 0.
        data[510] = 0xA5
        data[511] = -sum(data[:511]) & 0xFF
        return bytes(data)

    # --- data port ---------------------------------------------------------------------------

    def _data_read(self) -> int:
        disk = self.disk
        if disk is None or not disk.status & DRQ or self.writing or self.pos >= len(self.buffer):
            return 0
        value = self.buffer[self.pos] | self.buffer[self.pos + 1] << 8
        self.pos += 2
        if self.pos >= len(self.buffer):
            self._sector_done(disk)
        return value

    def _data_write(self, value: int) -> None:
        disk = self.disk
        if disk is None or not disk.status & DRQ or not self.writing or self.pos >= len(self.buffer):
            return
        self.buffer[self.pos] = value & 0xFF
        self.buffer[self.pos + 1] = value >> 8 & 0xFF
        self.pos += 2
        if self.pos >= len(self.buffer):
            self._sector_done(disk)

    # --- the two port ranges: command block (8 ports) and control (1 port) ---------------------

    def read(self, offset: int, size: int) -> int:
        """A read of the command block at ``offset`` (0-7), ``size`` 1, 2 or 4."""
        if self.empty:
            return 0
        if offset == DATA:
            if size == 4:
                return self._data_read() | self._data_read() << 16
            return self._data_read() & (0xFFFF if size == 2 else 0xFF)
        value = 0
        for i in range(size):  # wider accesses to the byte registers: one byte each, rising
            value |= self._read_register(offset + i) << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """A write to the command block at ``offset`` (0-7), ``size`` 1, 2 or 4."""
        if self.empty:
            return
        if offset == DATA:
            if size == 4:
                self._data_write(value & 0xFFFF)
                self._data_write(value >> 16 & 0xFFFF)
            else:
                self._data_write(value & (0xFFFF if size == 2 else 0xFF))
            return
        for i in range(size):
            self._write_register(offset + i, value >> (8 * i) & 0xFF)

    def _read_register(self, offset: int) -> int:
        disk = self.disk
        if offset == DATA:
            return self._data_read() & 0xFF
        if offset == ERROR:
            return disk.error if disk is not None else 0
        if offset == STATUS:
            if disk is None:
                return 0
            disk.intrq = False  # reading Status acknowledges the interrupt (section 5.2.9)
            self._update_line()
            return disk.status
        if offset > STATUS:
            return 0  # past the command block (a wide access at its end)
        return (0, 0, self.nsector, self.lba_low, self.lba_mid, self.lba_high, self.select)[offset]

    def _write_register(self, offset: int, value: int) -> None:
        if offset == DATA:
            self._data_write(value)
        elif offset == FEATURES:
            self.features = value
        elif offset == NSECTOR:
            self.nsector = value
        elif offset == LBA_LOW:
            self.lba_low = value
        elif offset == LBA_MID:
            self.lba_mid = value
        elif offset == LBA_HIGH:
            self.lba_high = value
        elif offset == SELECT:
            self.select = value
            self._update_line()  # INTRQ follows the selected device
        elif offset == COMMAND:
            self._command(value)

    def read_control(self, offset: int, size: int) -> int:
        """Alternate Status: the selected device's status, without acknowledging its interrupt."""
        disk = self.disk
        return disk.status if disk is not None else 0

    def write_control(self, offset: int, size: int, value: int) -> None:
        """Device Control: nIEN (bit 1) and SRST (bit 2); bit 3 (HD15, set by old drivers) is ignored."""
        if self.empty:
            return
        was_reset = self.control & SRST
        self.control = value & (NIEN | SRST)
        if value & SRST:
            if not was_reset:
                self._stop_transfer()
                for disk in self.disks:
                    if disk is not None:
                        disk.status = BSY
                        disk.intrq = False
        elif was_reset:
            self._soft_reset()  # SRST cleared: the reset (and its diagnostic) ends now
        self._update_line()


class Ide(Device):
    """Legacy ATA channel (PIIX IDE, legacy mode): a master disk and an optional slave, PIO only."""

    type_name = "ide"
    Config = IdeConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot)."""

        channel: AtaChannel

    @classmethod
    def fuzz_props(cls, scratch: FuzzScratch) -> dict[str, str]:
        return {"image": scratch.disk()}  # the fuzzer's writes land there, never in a user's disk

    def __init__(self, config: IdeConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        disks = open_disks([(config.image, config.serial), (config.slave_image, config.serial)], config.readonly,
                           config.model)
        self.channel = AtaChannel(disks, ctx.irq(config.irq), ctx.clock)

    @property
    def disks(self) -> list[Disk | None]:
        return self.channel.disks

    def host_files(self) -> Sequence[HostFile]:
        """The images, as inputs: no device output may name one (it would truncate the disk)."""
        return [HostFile(key, path, output=False)
                for key, path in (("image", self.config.image), ("slave_image", self.config.slave_image)) if path]

    def regions(self) -> Sequence[Region]:
        # Sizes 1, 2 and 4 at the command block: a 32-bit access to the data register is two
        # words from the same register, which the bus's split (at rising offsets) would get wrong.
        channel = self.channel
        return [Region(Space.PIO, self.config.port, 8, channel.read, channel.write, sizes=(1, 2, 4), name="command"),
                Region(Space.PIO, self.config.ctl_port, 1, channel.read_control, channel.write_control, sizes=(1,),
                       name="control")]

    def reset(self) -> None:
        self.channel.reset()

    def close(self) -> None:
        self.channel.close()


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Ide]
