"""virtio-blk (virtio 1.x, 5.2): a raw disk image as a virtio block device.

One request queue. A request is a chain: a 16-byte header the device reads (type, a
reserved word, the first 512-byte sector), the data (read by the device for a write,
written by it for a read), and one status byte the device writes last. Served here:
read (IN), write (OUT), flush (FLUSH: the image's data reaches the disk, ``fsync``) and
get-id (GET_ID: the serial, up to 20 bytes); anything else answers UNSUPP. A request
outside the image, or with data that is not whole sectors, answers IOERR and touches
nothing; with ``readonly`` every write answers IOERR and the image is opened read-only.
A chain without a header or a status byte breaks the queue (the device then needs a
reset, as QEMU's does).

Data moves between the image and guest RAM without a copy in vmcore (``Chain.pread`` and
``Chain.pwrite``: vectored I/O straight into or out of guest RAM), so whatever a request's
size vmcore holds none of it in memory. A host I/O error answers IOERR (logged once). The image is opened when the machine starts.
Linux's driver is ``virtio_blk`` (``/dev/vda``).
"""

from __future__ import annotations

import os
import stat
import struct
from typing import TYPE_CHECKING, Any, Sequence

from vmcore.chardev import HostFile
from vmcore.device import DeviceContext, PropertyError, config, prop
from vmcore.hookspecs import hookimpl
from vmcore.virtio import Chain, VirtioMmioConfig, VirtioMmioDevice, Virtqueue, VirtqueueError

if TYPE_CHECKING:
    from vmcore.fuzz import FuzzScratch

SECTOR = 512
# Request types and status values (5.2.6).
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
# Feature bits (5.2.3).
F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH = 1 << 2, 1 << 5, 1 << 6, 1 << 9
ID_BYTES = 20
_HEADER = struct.Struct("<IIQ")
QUEUE_SIZE = 256


def _image(_instance: Any, _attribute: Any, value: str) -> None:
    if not value:
        raise PropertyError("image", "required: the path of a raw disk image")
    try:
        mode = os.stat(value).st_mode
    except OSError as exc:
        raise PropertyError("image", f"cannot use {os.path.abspath(value)}: {exc.strerror}") from None
    if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
        raise PropertyError("image", f"not a file or block device: {os.path.abspath(value)}")


def _serial(_instance: Any, _attribute: Any, value: str) -> None:
    if len(value.encode()) > ID_BYTES or not value.isprintable():
        raise PropertyError("serial", f"at most {ID_BYTES} printable bytes, got {value!r}")


@config
class VirtioBlkConfig(VirtioMmioConfig):
    image: str = prop("", "Raw disk image (a file or block device); its size, rounded down to sectors, is "
                      "the disk's.", path=True, validator=_image)
    readonly: bool = prop(False, "Open the image read-only; the guest's writes fail (IOERR).")
    serial: str = prop("VMCORE-VIRTIO-BLK", f"What GET_ID answers (at most {ID_BYTES} bytes).", validator=_serial)


class VirtioBlk(VirtioMmioDevice):
    """virtio block device backed by a raw image."""

    type_name = "virtio-blk"
    Config = VirtioBlkConfig
    device_id = 2
    queue_sizes = (QUEUE_SIZE,)
    features = F_SEG_MAX | F_BLK_SIZE | F_FLUSH

    @classmethod
    def fuzz_props(cls, scratch: FuzzScratch) -> dict[str, str]:
        return {"image": scratch.disk()}  # the fuzzer's writes land there, never in a user's disk

    def __init__(self, config: VirtioBlkConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        if config.readonly:
            self.offered |= F_RO
        self.fd: int | None = None
        self.sectors = os.stat(config.image).st_size // SECTOR

    def host_files(self) -> Sequence[HostFile]:
        return [HostFile("image", self.config.image, output=False)]

    def start(self) -> None:
        self.fd = os.open(self.config.image, os.O_RDONLY if self.config.readonly else os.O_RDWR)
        self.sectors = os.lseek(self.fd, 0, os.SEEK_END) // SECTOR  # a block device's size too

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def config_space(self) -> bytes:
        # capacity (sectors), size_max (unused), seg_max, geometry (unused), blk_size
        return struct.pack("<QIIHBBI", self.sectors, 0, QUEUE_SIZE - 2, 0, 0, 0, SECTOR)

    def serve(self, index: int, queue: Virtqueue) -> None:
        while (chain := queue.pop()) is not None:
            if chain.readable_length < _HEADER.size or chain.writable_length < 1:
                raise VirtqueueError(f"request {chain.head} has no 16-byte header or no status byte")
            kind, _reserved, sector = _HEADER.unpack(chain.read(self.memory, 0, _HEADER.size))
            status, written = self._request(chain, kind, sector)
            chain.write(self.memory, chain.writable_length - 1, bytes((status,)))
            self.complete(queue, chain, written + 1)

    def _request(self, chain: Chain, kind: int, sector: int) -> tuple[int, int]:
        """(status, data bytes written to the guest) of one request."""
        if self.fd is None:
            return S_IOERR, 0
        if kind == T_IN:
            length = chain.writable_length - 1
            if not self._fits(sector, length):
                return S_IOERR, 0
            return self._transfer(chain, sector, length, reading=True)
        if kind == T_OUT:
            length = chain.readable_length - _HEADER.size
            if self.config.readonly or not self._fits(sector, length):
                return S_IOERR, 0
            status, _done = self._transfer(chain, sector, length, reading=False)
            return status, 0
        if kind == T_FLUSH:
            if not self.config.readonly:
                os.fsync(self.fd)
            return S_OK, 0
        if kind == T_GET_ID:
            ident = self.config.serial.encode().ljust(ID_BYTES, b"\0")
            return S_OK, chain.write(self.memory, 0, ident[:chain.writable_length - 1])
        return S_UNSUPP, 0

    def _transfer(self, chain: Chain, sector: int, length: int, reading: bool) -> tuple[int, int]:
        """Move ``length`` bytes between the image at ``sector`` and the chain's data, straight from
        or into guest RAM (Chain.pread/pwrite); (status, bytes moved). A host I/O error, or a short
        transfer (the image shrank, the host disk is full), answers IOERR; an error is logged once."""
        assert self.fd is not None
        offset = sector * SECTOR
        try:
            if reading:
                done = chain.pread(self.memory, self.fd, offset, 0, length)
            else:
                done = chain.pwrite(self.memory, self.fd, offset, _HEADER.size, length)
        except OSError as exc:
            self._warn("io", f"{'reading' if reading else 'writing'} {self.config.image} at byte {offset}: "
                             f"{exc.strerror or exc}")
            return S_IOERR, 0
        return (S_OK if done == length else S_IOERR), done

    def _fits(self, sector: int, length: int) -> bool:
        return length % SECTOR == 0 and sector + length // SECTOR <= self.sectors


@hookimpl
def vmcore_device_types() -> list[type]:
    return [VirtioBlk]
