"""A model of SeaBIOS's ATA driver and the disk-image helpers the IDE tests share.

tests/devices/test_ide.py (one channel) and tests/devices/test_piix_ide.py (the PIIX3
function's two) both probe drives and move sectors the way SeaBIOS does.
"""

BASE, CTL = 0x1F0, 0x3F6  # the primary channel's command block and control port
BSY, DRDY, DRQ, ERR = 0x80, 0x40, 0x08, 0x01  # status register bits
SECTOR = 512


def pattern(sectors: int) -> bytes:
    """Every sector distinct: its number repeated, then a running byte."""
    return b"".join((n.to_bytes(4, "little") * 64) + bytes((n + i) & 0xFF for i in range(256))
                    for n in range(sectors))


def ata_text(data: bytes, first_word: int, words: int) -> str:
    """An IDENTIFY string field: two characters per word, the first in the high byte."""
    raw = data[2 * first_word:2 * (first_word + words)]
    return bytes(b for pair in zip(raw[1::2], raw[0::2]) for b in pair).decode("ascii")


def word(data: bytes, n: int) -> int:
    """IDENTIFY word ``n`` (little-endian)."""
    return int.from_bytes(data[2 * n:2 * n + 2], "little")


class SeaBiosTimeout(AssertionError):
    """SeaBIOS would have waited out its 32-second IDE_TIMEOUT here."""


class SeaBiosAta:
    """SeaBIOS 1.16's src/hw/ata.c, the parts that probe a channel and move sectors by PIO, on the fake bus.

    The port accesses are SeaBIOS's, in its order. Between two polls of a status register
    SeaBIOS yields; here machine time moves on by ``POLL_NS``. A wait needing more than
    ``MAX_POLLS`` polls stands for SeaBIOS's IDE_TIMEOUT and raises :class:`SeaBiosTimeout`.
    """

    POLL_NS = 1_000
    MAX_POLLS = 1_000
    # ata.h: device control HD15 (always written as 1), SRST, nIEN; device/head DEV0, DEV1, LBA.
    DC_HD15, DC_SRST, DC_NIEN = 0x08, 0x04, 0x02
    DH_DEV0, DH_DEV1, DH_LBA = 0xA0, 0xB0, 0x40

    def __init__(self, bus, iobase1: int = BASE, iobase2: int = CTL, pio32: bool = False) -> None:
        self.bus, self.iobase1, self.iobase2, self.pio32 = bus, iobase1, iobase2, pio32
        self.polls = 0  # status register reads made while waiting

    # --- await_ide and friends -----------------------------------------------------------

    def await_ide(self, mask: int, flags: int) -> int:
        for _ in range(self.MAX_POLLS):
            status = self.bus.inb(self.iobase1 + 7)
            self.polls += 1
            if status & mask == flags:
                return status
            self.bus.step(self.POLL_NS)
        raise SeaBiosTimeout(f"status never had {mask:#x} == {flags:#x} at {self.iobase1:#x}")

    def await_not_bsy(self) -> int:
        return self.await_ide(BSY, 0)

    def await_rdy(self) -> int:
        return self.await_ide(DRDY, DRDY)

    def ndelay_await_not_bsy(self) -> int:
        self.bus.step(400)
        return self.await_not_bsy()

    def pause_await_not_bsy(self) -> int:
        self.bus.inb(self.iobase2)  # one PIO cycle on Alternate Status
        return self.await_not_bsy()

    def powerup_await_non_bsy(self) -> int:
        orstatus = 0
        for _ in range(self.MAX_POLLS):
            status = self.bus.inb(self.iobase1 + 7)
            self.polls += 1
            if not status & BSY:
                return status
            orstatus |= status
            if orstatus == 0xFF:
                return orstatus  # "powerup IDE floating"
            self.bus.step(self.POLL_NS)
        raise SeaBiosTimeout(f"powerup: BSY never cleared at {self.iobase1:#x}")

    # --- reset, commands, transfers ------------------------------------------------------

    def ata_reset(self, slave: int, ata_type: bool = False) -> None:
        bus, io1 = self.bus, self.iobase1
        bus.outb(self.iobase2, self.DC_HD15 | self.DC_NIEN | self.DC_SRST)
        bus.step(5_000)
        bus.outb(self.iobase2, self.DC_HD15 | self.DC_NIEN)
        bus.step(2_000_000)
        self.await_not_bsy()
        if slave:
            for _ in range(self.MAX_POLLS):
                bus.outb(io1 + 6, self.DH_DEV1)
                self.ndelay_await_not_bsy()
                if bus.inb(io1 + 6) == self.DH_DEV1:
                    break
            else:
                raise SeaBiosTimeout("device 1 never selected")
        else:
            bus.outb(io1 + 6, self.DH_DEV0)
        if ata_type:
            self.await_rdy()
        bus.outb(self.iobase2, self.DC_HD15)

    def send_cmd(self, slave: int, command: int, count: int = 0, lba: int = 0, device: int = 0) -> None:
        bus, io1 = self.bus, self.iobase1
        self.await_not_bsy()
        newdh = device & ~0x10 | (self.DH_DEV1 if slave else self.DH_DEV0)
        olddh = bus.inb(io1 + 6)
        bus.outb(io1 + 6, newdh)
        if (olddh ^ newdh) & 0x10:
            self.ndelay_await_not_bsy()
        for offset, value in ((1, 0), (2, count & 0xFF), (3, lba & 0xFF), (4, lba >> 8 & 0xFF),
                              (5, lba >> 16 & 0xFF), (7, command)):
            bus.outb(io1 + offset, value)

    def ata_wait_data(self) -> int:
        status = self.ndelay_await_not_bsy()
        if status & ERR:
            return -4
        if not status & DRQ:
            return -5
        return 0

    def pio_transfer(self, count: int, data: bytearray | None) -> tuple[int, bytes]:
        """ata_pio_transfer: ``data`` None reads ``count`` sectors, else writes them."""
        bus, io1 = self.bus, self.iobase1
        got = bytearray()
        for n in range(count):
            if data is None:
                if self.pio32:
                    got += b"".join(bus.inl(io1).to_bytes(4, "little") for _ in range(SECTOR // 4))
                else:
                    got += b"".join(bus.inw(io1).to_bytes(2, "little") for _ in range(SECTOR // 2))
            else:
                block = data[n * SECTOR:(n + 1) * SECTOR]
                for i in range(0, SECTOR, 2):
                    bus.outw(io1, int.from_bytes(block[i:i + 2], "little"))
            status = self.pause_await_not_bsy()
            if n == count - 1:
                break
            if status & (BSY | DRQ | ERR) != DRQ:
                return -6, bytes(got)
        status &= BSY | 0x20 | DRQ | ERR
        if data is None:
            status &= ~0x20
        return (-7 if status else 0), bytes(got)

    def pio_cmd_data(self, slave: int, command: int, count: int = 1, lba: int = 0, device: int = 0,
                     data: bytes | None = None) -> tuple[int, bytes]:
        """ata_pio_cmd_data: nIEN set for the whole command, as SeaBIOS polls."""
        self.bus.outb(self.iobase2, self.DC_HD15 | self.DC_NIEN)
        try:
            self.send_cmd(slave, command, count, lba, device)
            ret = self.ata_wait_data()
            if ret:
                return ret, b""
            return self.pio_transfer(count, None if data is None else bytearray(data))
        finally:
            self.bus.outb(self.iobase2, self.DC_HD15)

    def readwrite(self, slave: int, lba: int, count: int, data: bytes | None = None) -> tuple[int, bytes]:
        """ata_readwrite for a PIO build: READ SECTORS (0x20) or WRITE SECTORS (0x30), LBA28."""
        assert count < 256 and lba + count < 1 << 28  # otherwise SeaBIOS uses the EXT commands
        command = 0x20 if data is None else 0x30
        return self.pio_cmd_data(slave, command, count, lba, device=(lba >> 24 & 0x0F) | self.DH_LBA, data=data)

    def identify(self, slave: int, command: int) -> tuple[int, bytes]:
        return self.pio_cmd_data(slave, command)

    # --- ata_detect ----------------------------------------------------------------------

    def detect(self) -> list[tuple[str, int, bytes]]:
        """The drives SeaBIOS finds on the channel: (kind, slave, IDENTIFY data)."""
        bus, io1 = self.bus, self.iobase1
        found: list[tuple[str, int, bytes]] = []
        didreset = False
        for slave in (0, 1):
            self.powerup_await_non_bsy()
            newdh = self.DH_DEV1 if slave else self.DH_DEV0
            bus.outb(io1 + 6, newdh)
            bus.step(400)
            self.powerup_await_non_bsy()
            bus.outb(io1 + 6, newdh)
            dh = bus.inb(io1 + 6)
            bus.outb(io1 + 2, 0x55)
            bus.outb(io1 + 3, 0xAA)
            sc, sn = bus.inb(io1 + 2), bus.inb(io1 + 3)
            if sc != 0x55 or sn != 0xAA or dh != newdh:
                continue
            if not didreset:
                self.ata_reset(slave)
                didreset = True
            ret, buffer = self.identify(slave, 0xA1)  # IDENTIFY PACKET DEVICE: an ATAPI drive?
            if ret == 0:
                found.append(("atapi", slave, buffer))
            else:
                if not bus.inb(io1 + 7):
                    continue  # "Status not set - can't be a valid drive"
                self.await_rdy()
                ret, buffer = self.identify(slave, 0xEC)
                if ret:
                    continue
                found.append(("ata", slave, buffer))
            reset_result = word(buffer, 93)
            if not slave and reset_result & 0xDF61 == 0x4041:
                break  # device 0 answers for device 1: no device 1
        return found
