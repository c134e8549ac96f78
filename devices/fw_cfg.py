"""QEMU's firmware configuration interface (fw_cfg), I/O port variant, with its DMA interface.

Firmware selects an item by key and reads its bytes; the semantics follow QEMU's
``docs/specs/fw_cfg.rst``:

- selector register at ``port`` (0x510): a 16-bit write selects an item and sets the
  data offset to 0. Bit 15 selects the architecture-specific key space, which holds no
  items here; bit 14 (the old write channel) is ignored.
- data register at ``port + 1`` (0x511): each byte read returns the next byte of the
  item; past its end, and for a key that names no item, reads return 0. Writes to it
  are ignored (as in QEMU since v2.4). A byte write to the selector, too, is ignored:
  the selector takes 16-bit writes.
- DMA address register at ``port + 4`` (0x514..0x51B, property ``dma``): a 64-bit
  big-endian guest-physical address of a ``FWCfgDmaAccess`` (be32 control, be32 length,
  be64 address). A 64-bit write, or a 32-bit write of the low half at 0x518 (after the
  high half at 0x514, if any), runs the operation at once: SELECT (bit 3, key in the
  upper 16 bits), then READ (bit 1: copy ``length`` bytes of the item to ``address``,
  zeros past its end), WRITE (bit 4: every item here is read-only, so it is rejected
  with the error bit and changes nothing) or SKIP (bit 2: advance the offset). The
  control word is then written back as 0, or with the error bit (0x01) when guest
  memory could not be written (outside every slot, or ROM). A descriptor outside guest
  memory is logged and dropped: there is nowhere to report it. The register reads as
  the signature ``QEMU CFG``, and is 0 again after each operation.

Items: signature 0x0000 ``QEMU``; FW_CFG_ID 0x0001 (32-bit LE feature bitmap: bit 0
traditional interface, bit 1 DMA); FW_CFG_RAM_SIZE 0x0003 (64-bit LE: ``ram_size``, or
the total of the machine's writable memory slots); FW_CFG_NB_CPUS 0x0005 and
FW_CFG_MAX_CPUS 0x000f (16-bit LE); FW_CFG_FILE_DIR 0x0019 (be32 count, then 64-byte
entries: be32 size, be16 key, be16 reserved, 56-byte NUL-padded name, sorted by name
with keys from 0x0020 in that order); and the files.

Files come from two properties, both mappings of fw_cfg name (at most 55 bytes) to a
value: ``files`` to a host path (relative paths resolve against the current
directory; at most ``max_file_size`` bytes; only stat'ed when the device is built,
opened when it starts, and read only as the guest reads the item, so a large file is
never held in memory), ``strings`` to literal content (UTF-8, no
terminating NUL, as QEMU's ``-fw_cfg string=``). A string value ``u8:N``, ``u16:N``,
``u32:N`` or ``u64:N`` gives N as a little-endian integer of that width (``u16:0x3f8``
is ``f8 03``); ``str:`` escapes a literal that would otherwise start with one of these
prefixes. :meth:`FwCfg.add_file` adds files from Python (a machine or loader); adding
one renumbers the keys after it, so add files before the guest reads the directory.

A guest can hand the DMA register any number of bad descriptors: the first
``LOGGED_BAD_DMA`` are logged, then only a running count at each power of ten, and
the total when the device closes (:attr:`FwCfg.bad_dma` counts them all).
"""

from __future__ import annotations

import os
import stat
import struct
from typing import Any, Sequence, Union

import attrs

from vmcore.bus import Region, Space
from vmcore.chardev import HostFile
from vmcore.device import Device, DeviceContext, PropertyError, config, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.memory import GuestMemoryError
from vmcore.units import parse_int

FW_CFG_SIGNATURE = 0x0000
FW_CFG_ID = 0x0001
FW_CFG_RAM_SIZE = 0x0003
FW_CFG_NB_CPUS = 0x0005
FW_CFG_MAX_CPUS = 0x000F
FW_CFG_FILE_DIR = 0x0019
FW_CFG_FILE_FIRST = 0x0020
FW_CFG_ENTRY_MASK = 0x3FFF  # bit 14 (write channel) and bit 15 (arch-local) are not part of the index
FW_CFG_ARCH_LOCAL = 0x8000

FW_CFG_VERSION = 0x01  # FW_CFG_ID bit 0: the traditional interface
FW_CFG_VERSION_DMA = 0x02  # FW_CFG_ID bit 1: the DMA interface

FW_CFG_DMA_CTL_ERROR = 0x01
FW_CFG_DMA_CTL_READ = 0x02
FW_CFG_DMA_CTL_SKIP = 0x04
FW_CFG_DMA_CTL_SELECT = 0x08
FW_CFG_DMA_CTL_WRITE = 0x10

DMA_SIGNATURE = b"QEMU CFG"  # 0x51454d5520434647, big-endian
DMA_DESCRIPTOR = struct.Struct(">IIQ")  # FWCfgDmaAccess: control, length, address
FILE_ENTRY = struct.Struct(">IHH56s")  # FWCfgFile: size, select, reserved, name
MAX_NAME = 55  # name[56], NUL-terminated
MAX_FILES = FW_CFG_ENTRY_MASK + 1 - FW_CFG_FILE_FIRST
MAX_ITEM_SIZE = 0xFFFFFFFF  # the directory's be32 size
#: A DMA read copies the item to guest memory in pieces of at most this many bytes.
DMA_CHUNK = 1 << 16
#: Bad DMA descriptors logged one by one; after these, only counts (see the module docstring).
LOGGED_BAD_DMA = 5

_INT_PREFIXES = {"u8:": 1, "u16:": 2, "u32:": 4, "u64:": 8}


def check_name(name: Any) -> bytes:
    """The fw_cfg file name as stored in the directory; ValueError saying what is wrong."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a file name must be non-empty text, got {name!r}")
    raw = name.encode("utf-8")
    if b"\0" in raw:
        raise ValueError(f"file name {name!r} contains a NUL byte")
    if len(raw) > MAX_NAME:
        raise ValueError(f"file name {name!r} is {len(raw)} bytes long; at most {MAX_NAME} fit")
    return raw


def string_content(text: str) -> bytes:
    """The bytes of a ``strings`` value: ``u16:0x3f8`` -> b'\\xf8\\x03', else the UTF-8 text."""
    for prefix, width in _INT_PREFIXES.items():
        if text.startswith(prefix):
            value = parse_int(text[len(prefix):].strip())
            if not 0 <= value < 1 << (8 * width):
                raise ValueError(f"{text!r}: {value:#x} does not fit in {8 * width} bits")
            return value.to_bytes(width, "little")
    return text.removeprefix("str:").encode("utf-8")


class FileItem:
    """A ``files`` item: a host file, read only where and when the guest reads it.

    Building only stats it (its size goes in the directory, and must be within the
    cap); it is opened when the machine starts (or at the first read). The size stays
    what the build saw: if the file shrinks, the missing bytes read as zeros; if it
    grows, the guest sees its first ``size`` bytes.
    """

    def __init__(self, name: str, path: str, limit: int) -> None:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"fw_cfg file {name!r}: {path} is not a regular file")
        if info.st_size > limit:
            raise ValueError(f"fw_cfg file {name!r}: {path} is {_size_text(info.st_size)}, over the cap of "
                             f"{_size_text(limit)}; raise max_file_size to serve it")
        self.name = name
        self.path = path
        self.size = info.st_size
        self._fd: int | None = None

    def __len__(self) -> int:
        return self.size

    def open(self) -> None:
        if self._fd is not None:
            return
        # Non-blocking: a FIFO swapped in since the build must not hang the machine.
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"fw_cfg file {self.name!r}: {self.path} is no longer a regular file")
        self._fd = fd

    def read(self, offset: int, count: int) -> bytes:
        """``count`` bytes at ``offset``, cut at the item's end (as slicing bytes is)."""
        count = min(count, self.size - offset)
        if count <= 0:
            return b""
        self.open()
        assert self._fd is not None
        return os.pread(self._fd, count, offset).ljust(count, b"\0")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


#: An item's content: bytes held in memory, or a host file read on demand.
Item = Union[bytes, FileItem]


def _size_text(size: int) -> str:
    if size < 1 << 20:
        return f"{size} bytes"
    if size % (1 << 20) == 0:
        return f"{size >> 20} MiB"
    return f"{size / (1 << 20):.1f} MiB ({size} bytes)"


def _slice(item: Item, offset: int, count: int) -> bytes:
    if isinstance(item, FileItem):
        return item.read(offset, count)
    return item[offset : offset + count]


def _mapping(what: str) -> Any:
    """An attrs validator: a mapping of valid fw_cfg names to text (``what`` describes the values)."""

    def check(_instance: Any, attribute: Any, value: Any) -> None:
        if not isinstance(value, dict):
            raise PropertyError(attribute.name, f"expected a mapping of fw_cfg name to {what}, got {value!r}")
        for name, item in value.items():
            try:
                check_name(name)
            except ValueError as exc:
                raise PropertyError(attribute.name, str(exc)) from None
            if not isinstance(item, str):
                raise PropertyError(attribute.name, f"{name}: expected {what} as text, got {item!r}")

    return check


def _files(instance: Any, attribute: Any, value: Any) -> None:
    _mapping("a host path")(instance, attribute, value)
    for name, path in value.items():
        if not (os.path.isfile(path) and os.access(path, os.R_OK)):
            raise PropertyError(attribute.name, f"{name}: not a readable file: {os.path.abspath(path)}")


def _strings(instance: Any, attribute: Any, value: Any) -> None:
    _mapping("its content")(instance, attribute, value)
    for name, text in value.items():
        try:
            string_content(text)
        except ValueError as exc:
            raise PropertyError(attribute.name, f"{name}: {exc}") from None


@config
class FwCfgConfig:
    port: int = prop(0x510, "Selector port; data at port+1, DMA address register at port+4..port+11.", hex=True,
                     validator=in_range(0, 0xFFF4))
    dma: bool = prop(True, "Offer the DMA interface (FW_CFG_ID bit 1) at port+4.")
    ram_size: int = prop(0, "FW_CFG_RAM_SIZE in bytes; 0: the total of the writable memory slots.",
                         validator=in_range(0, (1 << 64) - 1))
    cpus: int = prop(1, "FW_CFG_NB_CPUS.", validator=in_range(1, 0xFFFF))
    max_cpus: int = prop(0, "FW_CFG_MAX_CPUS; 0: the same as cpus.", validator=in_range(0, 0xFFFF))
    files: dict = prop(attrs.Factory(dict), "fw_cfg file name -> host path (relative to the profile that sets it).",
                       validator=_files, path=True)
    strings: dict = prop(attrs.Factory(dict), "fw_cfg file name -> content: text, or u8:/u16:/u32:/u64: and a "
                         "number for a little-endian integer (str: escapes a literal).", validator=_strings)
    max_file_size: int = prop(256 << 20, "Largest host file a files entry may name (the device is not built "
                              "otherwise); files are read as the guest reads them, never held whole.",
                              validator=in_range(0, MAX_ITEM_SIZE))

    def __attrs_post_init__(self) -> None:
        if self.max_cpus and self.max_cpus < self.cpus:
            raise PropertyError("max_cpus", f"must be at least cpus ({self.cpus}), got {self.max_cpus}")
        both = sorted(set(self.files) & set(self.strings))
        if both:
            raise PropertyError("strings", f"{', '.join(both)}: already given in files")


class FwCfg(Device):
    """QEMU's fw_cfg on I/O ports: a selector, a byte data port, and the DMA interface."""

    type_name = "fw-cfg"
    Config = FwCfgConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot): the selector, the data offset, the DMA address
        and the bad-DMA count; the items are the profile's (and the machine's tables), built again."""

        key: int
        offset: int
        dma_address: int
        bad_dma: int
        _bad_dma_summarised: int

    def state_loaded(self) -> None:
        offset = self.offset
        self.select(self.key)  # the selected item's bytes again
        self.offset = offset

    def __init__(self, config: FwCfgConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        ram = config.ram_size or sum(slot.size for slot in ctx.memory if not slot.readonly)
        features = FW_CFG_VERSION | (FW_CFG_VERSION_DMA if config.dma else 0)
        #: Fixed items by key (files are added by _rebuild_files).
        self._fixed: dict[int, bytes] = {
            FW_CFG_SIGNATURE: b"QEMU",
            FW_CFG_ID: features.to_bytes(4, "little"),
            FW_CFG_RAM_SIZE: ram.to_bytes(8, "little"),
            FW_CFG_NB_CPUS: config.cpus.to_bytes(2, "little"),
            FW_CFG_MAX_CPUS: (config.max_cpus or config.cpus).to_bytes(2, "little"),
        }
        self._files: dict[bytes, Item] = {}  # name -> content
        self._items: dict[int, Item] = {}
        #: Bad DMA descriptors (not in guest memory, or their status not writable) so far.
        self.bad_dma = 0
        self._bad_dma_summarised = 0
        for name, path in config.files.items():
            self._store_file(name, FileItem(name, path, config.max_file_size))
        for name, text in config.strings.items():
            self._store_file(name, string_content(text))
        self._rebuild()
        # Register state.
        self.key = 0
        self._data: Item = b""
        self.offset = 0
        self.dma_address = 0
        self.reset()

    def regions(self) -> Sequence[Region]:
        port = self.config.port
        regions = [Region(Space.PIO, port, 2, self._io_read, self._io_write, sizes=(1, 2), name="selector+data")]
        if self.config.dma:
            regions.append(Region(Space.PIO, port + 4, 8, self._dma_read, self._dma_write, sizes=(4, 8), name="dma"))
        return regions

    def reset(self) -> None:
        self.select(FW_CFG_SIGNATURE)
        self.dma_address = 0

    def host_files(self) -> Sequence[HostFile]:
        return [HostFile("files", item.path, output=False) for item in self._files.values()
                if isinstance(item, FileItem)]

    def start(self) -> None:
        # Now rather than at the first read: a file gone since the build stops the start, not the guest.
        for item in self._files.values():
            if isinstance(item, FileItem):
                item.open()

    def close(self) -> None:
        for item in self._files.values():
            if isinstance(item, FileItem):
                item.close()
        if self.bad_dma > max(LOGGED_BAD_DMA, self._bad_dma_summarised):  # a second close says nothing more
            self.ctx.log.warning("fw_cfg: %d bad DMA descriptors in all; the first %d were logged",
                                 self.bad_dma, LOGGED_BAD_DMA)
            self._bad_dma_summarised = self.bad_dma

    # --- items ----------------------------------------------------------------------------

    def add_file(self, name: str, data: bytes) -> int:
        """Add a file item (e.g. from a loader); returns its key. ValueError for a bad or taken name."""
        self._store_file(name, bytes(data))
        self._rebuild()
        return self.file_key(name)

    def file_key(self, name: str) -> int:
        """The selector key of file ``name`` (KeyError if there is none)."""
        raw = name.encode("utf-8")
        for key, entry_name in self._keys.items():
            if entry_name == raw:
                return key
        raise KeyError(name)

    def _store_file(self, name: str, data: Item) -> None:
        raw = check_name(name)
        if raw in self._files:
            raise ValueError(f"fw_cfg file {name!r} already exists")
        if len(self._files) >= MAX_FILES:
            raise ValueError(f"no room for fw_cfg file {name!r}: {MAX_FILES} files at most")
        if len(data) > MAX_ITEM_SIZE:
            raise ValueError(f"fw_cfg file {name!r} is too large for the directory's 32-bit size")
        self._files[raw] = data

    def _rebuild(self) -> None:
        """Number the files in name order (strcmp, as QEMU sorts them) and build the directory."""
        items = dict(self._fixed)
        directory = [len(self._files).to_bytes(4, "big")]
        self._keys: dict[int, bytes] = {}
        for key, name in enumerate(sorted(self._files), FW_CFG_FILE_FIRST):
            data = self._files[name]
            items[key] = data
            self._keys[key] = name
            directory.append(FILE_ENTRY.pack(len(data), key, 0, name))
        items[FW_CFG_FILE_DIR] = b"".join(directory)
        self._items = items

    # --- selector and data ----------------------------------------------------------------

    def select(self, key: int) -> None:
        """What a selector write does: choose the item, data offset back to 0."""
        self.key = key & 0xFFFF
        arch_local = self.key & FW_CFG_ARCH_LOCAL
        self._data = b"" if arch_local else self._items.get(self.key & FW_CFG_ENTRY_MASK, b"")
        self.offset = 0

    def _next_bytes(self, count: int) -> bytes:
        """The next ``count`` bytes of the item (fewer at its end); advances the offset."""
        chunk = _slice(self._data, self.offset, count)
        self._advance(count)
        return chunk

    def _advance(self, count: int) -> None:
        self.offset = min(self.offset + count, len(self._data))  # never past the end: reads there give 0

    def _io_read(self, offset: int, size: int) -> int:
        # The selector is write-only; like QEMU's combined port, any read returns data bytes,
        # in order (an N-byte read is the next N bytes, low address first).
        return int.from_bytes(self._next_bytes(size).ljust(size, b"\0"), "little")

    def _io_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 2:
            self.select(value)
        # Byte writes (the data port, or half a selector) are ignored, as in QEMU since v2.4.

    # --- DMA --------------------------------------------------------------------------------

    def _dma_read(self, offset: int, size: int) -> int:
        return int.from_bytes(DMA_SIGNATURE[offset : offset + size].ljust(size, b"\xff"), "little")

    def _dma_write(self, offset: int, size: int, value: int) -> None:
        # The register is big-endian: the guest's little-endian store puts the most
        # significant byte at the lowest port.
        be = int.from_bytes(value.to_bytes(size, "little"), "big")
        if offset == 0 and size == 8:
            self.dma_address = be
        elif offset == 0 and size == 4:
            self.dma_address = be << 32
            return  # the high half alone does not start an operation
        elif offset == 4 and size == 4:
            self.dma_address |= be
        else:
            return
        address, self.dma_address = self.dma_address, 0
        self._dma_transfer(address)

    def _dma_transfer(self, descriptor: int) -> None:
        memory = self.ctx.memory
        try:
            control, length, address = DMA_DESCRIPTOR.unpack(memory.read(descriptor, DMA_DESCRIPTOR.size))
        except GuestMemoryError as exc:
            self._bad_dma("fw_cfg DMA descriptor at %#x is not in guest memory: %s", descriptor, exc)
            return
        if control & FW_CFG_DMA_CTL_SELECT:
            self.select(control >> 16)
        error = False
        if control & FW_CFG_DMA_CTL_READ:
            error = not self._dma_read_into(address, length)
        elif control & FW_CFG_DMA_CTL_WRITE:
            error = True  # every item is read-only to the guest (fw_cfg.rst: such writes are rejected)
        elif control & FW_CFG_DMA_CTL_SKIP:
            self._advance(length)
        status = FW_CFG_DMA_CTL_ERROR if error else 0
        try:
            memory.write(descriptor, status.to_bytes(4, "big"))
        except GuestMemoryError as exc:
            self._bad_dma("fw_cfg DMA status cannot be written at %#x: %s", descriptor, exc)

    def _dma_read_into(self, address: int, length: int) -> bool:
        """Copy the next ``length`` bytes of the item (zeros past its end) to guest memory, a piece at a time.

        False, and nothing written or read, if any byte of the range is not writable RAM.
        """
        memory = self.ctx.memory
        here, end = address, address + length
        while here < end:  # check first, so a bad range writes nothing and a huge one reads nothing
            slot = memory.slot_at(here)
            if slot is None or slot.readonly:
                return False
            here = slot.end
        here = address
        while here < end:
            count = min(end - here, DMA_CHUNK)
            memory.write(here, self._next_bytes(count).ljust(count, b"\0"))
            here += count
        return True

    def _bad_dma(self, message: str, *args: Any) -> None:
        """Log a bad descriptor while few have come, then only counts: a guest can send millions."""
        self.bad_dma += 1
        count = self.bad_dma
        if count <= LOGGED_BAD_DMA:
            self.ctx.log.warning(message, *args)
            if count == LOGGED_BAD_DMA:
                self.ctx.log.warning("fw_cfg: further bad DMA descriptors are counted, not logged")
        elif count == 10 ** (len(str(count)) - 1):
            self.ctx.log.warning("fw_cfg: %d bad DMA descriptors so far", count)


@hookimpl
def vmcore_device_types() -> list[type]:
    return [FwCfg]
