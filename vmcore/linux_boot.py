"""The Linux x86 boot protocol: a bzImage started at its 64-bit entry, as QEMU's ``-kernel`` does.

From the kernel's Documentation/arch/x86/boot.rst ("THE LINUX/x86 BOOT PROTOCOL"):

- A bzImage starts with the real-mode setup: ``setup_sects`` 512-byte sectors after the
  boot sector, with the *setup header* at offset 0x1F1 (``HdrS`` at 0x202, the protocol
  version at 0x206). The protected-mode kernel follows; its 64-bit entry (``startup_64``)
  is 0x200 bytes into it (protocol 2.12 and ``XLF_KERNEL_64`` in ``xloadflags``).
- The loader copies the setup header into a 4 KiB ``boot_params`` ("zero page") at the
  same offset, fills in what the kernel asks of a boot loader (``type_of_loader``,
  ``loadflags``, the command line and initrd addresses, and the e820 memory map, which
  firmware would give) and enters the 64-bit kernel with RSI pointing at it, interrupts
  off, in long mode with the memory it uses identity-mapped (vmcore's long-mode start
  state maps the first 4 GiB).
- The kernel runs from its preferred address (``pref_address``, relocatable kernels may
  go elsewhere at a multiple of ``kernel_alignment``) and needs ``init_size`` bytes there
  to decompress itself. The initrd goes as high as ``initrd_addr_max`` and RAM allow.

What a loader does not get right is a profile error naming the file: not a bzImage, a
protocol too old for the 64-bit entry, a kernel or initrd that does not fit in RAM, a
command line longer than ``cmdline_size``.
"""

from __future__ import annotations

import struct
from typing import Iterable

import attrs

from .loader import LoaderError, contiguous_ram
from .memory import GuestMemory, MemorySlot

SETUP_HEADER = 0x1F1
#: Protocol 2.12 (Linux 3.8): xloadflags, and with it the 64-bit entry a loader may use.
MIN_VERSION = 0x020C
XLF_KERNEL_64 = 1 << 0
LOADED_HIGH = 1 << 0
TYPE_OF_LOADER_UNDEFINED = 0xFF  # "a boot loader without an assigned ID"
ENTRY_64 = 0x200  # startup_64, from the start of the protected-mode kernel
DEFAULT_LOAD = 0x100_0000  # 16 MiB: where a non-relocatable kernel runs
#: Where the loader puts its own pieces: boot_params and the command line, in low RAM (as
#: QEMU's loader does, below the EBDA), clear of the VMM's tables at the top of RAM.
BOOT_PARAMS = 0x7000
CMDLINE = 0x8000
#: The legacy hole (VGA memory, option and system ROMs) firmware keeps out of RAM in e820.
LEGACY_HOLE = (0x9_FC00, 0x10_0000)
E820_RAM, E820_RESERVED = 1, 2
E820_MAX = 128  # boot_params holds this many entries


class LinuxBootError(LoaderError):
    """The kernel, initrd or command line cannot be booted through the boot protocol."""


@attrs.frozen
class SetupHeader:
    """The fields of the setup header the loader reads (boot.rst, "THE REAL-MODE KERNEL HEADER")."""

    setup_sects: int
    version: int
    loadflags: int
    initrd_addr_max: int
    kernel_alignment: int
    relocatable: bool
    xloadflags: int
    cmdline_size: int
    pref_address: int
    init_size: int
    end: int  # offset just past the header (0x202 + the byte at 0x201), for the copy into boot_params

    @classmethod
    def parse(cls, image: bytes, name: str) -> SetupHeader:
        if len(image) < 0x270 or image[0x202:0x206] != b"HdrS" or image[0x1FE:0x200] != b"\x55\xAA":
            raise LinuxBootError(f"{name}: not a bzImage (no Linux setup header: 'HdrS' at 0x202 and the "
                                 "boot signature 0xAA55 at 0x1FE)")
        (version,) = struct.unpack_from("<H", image, 0x206)
        if version < MIN_VERSION:
            raise LinuxBootError(f"{name}: boot protocol {version >> 8}.{version & 0xFF:02d} is too old: vmcore "
                                 "starts kernels at their 64-bit entry, which needs protocol 2.12 (Linux 3.8)")
        xloadflags = struct.unpack_from("<H", image, 0x236)[0]
        if not xloadflags & XLF_KERNEL_64:
            raise LinuxBootError(f"{name}: not a 64-bit kernel (xloadflags has no XLF_KERNEL_64): vmcore starts "
                                 "kernels at their 64-bit entry")
        return cls(
            setup_sects=image[0x1F1] or 4,
            version=version,
            loadflags=image[0x211],
            initrd_addr_max=struct.unpack_from("<I", image, 0x22C)[0],
            kernel_alignment=struct.unpack_from("<I", image, 0x230)[0] or 0x20_0000,
            relocatable=bool(image[0x234]),
            xloadflags=xloadflags,
            cmdline_size=struct.unpack_from("<I", image, 0x238)[0],
            pref_address=struct.unpack_from("<Q", image, 0x258)[0],
            init_size=struct.unpack_from("<I", image, 0x260)[0],
            end=0x202 + image[0x201],
        )


@attrs.frozen
class LinuxBoot:
    """Where everything went: the load address and entry, boot_params, the command line and initrd."""

    entry: int
    boot_params: int
    kernel: tuple[int, int]  # [start, end) reserved for the kernel: init_size from its load address
    initrd: tuple[int, int] | None
    header: SetupHeader
    regions: tuple[tuple[int, int, str], ...]

    @property
    def description(self) -> str:
        initrd = "" if self.initrd is None else f", initrd at {self.initrd[0]:#x} ({self.initrd[1] - self.initrd[0]} bytes)"
        return (f"Linux bzImage (boot protocol {self.header.version >> 8}.{self.header.version & 0xFF:02d}) at "
                f"{self.kernel[0]:#x}, 64-bit entry {self.entry:#x}, boot_params at {self.boot_params:#x}{initrd}")


def is_bzimage(image: bytes) -> bool:
    return len(image) >= 0x206 and image[0x202:0x206] == b"HdrS"


def e820_map(slots: Iterable[MemorySlot]) -> list[tuple[int, int, int]]:
    """(address, size, type) for the memory map firmware would give: RAM slots as RAM, less the
    legacy hole below 1 MiB (reserved), ROM slots reserved."""
    entries: list[tuple[int, int, int]] = []
    hole_start, hole_end = LEGACY_HOLE
    for slot in sorted(slots, key=lambda s: s.base):
        start, end = slot.base, slot.base + slot.size
        if slot.readonly:
            entries.append((start, end - start, E820_RESERVED))
            continue
        if start < hole_end and hole_start < end:
            if start < hole_start:
                entries.append((start, hole_start - start, E820_RAM))
            entries.append((max(start, hole_start), min(end, hole_end) - max(start, hole_start), E820_RESERVED))
            if hole_end < end:
                entries.append((hole_end, end - hole_end, E820_RAM))
        else:
            entries.append((start, end - start, E820_RAM))
    return entries[:E820_MAX]


def _ram_holds(memory: GuestMemory, start: int, end: int) -> bool:
    """Whether [start, end) is all writable RAM (possibly across adjacent slots)."""
    return contiguous_ram(memory, start, end) == end - start


def load_linux(image: bytes, memory: GuestMemory, *, cmdline: str, initrd: bytes | None, name: str,
               initrd_name: str = "initrd") -> LinuxBoot:
    """Place the kernel, boot_params, command line and initrd in ``memory``; where they went."""
    header = SetupHeader.parse(image, name)
    kernel = image[(header.setup_sects + 1) * 512:]
    if not kernel:
        raise LinuxBootError(f"{name}: no protected-mode kernel after its {header.setup_sects} setup sectors")
    need = max(header.init_size, len(kernel))
    load = _load_address(memory, header, need, name)
    encoded = cmdline.encode("ascii")
    if header.cmdline_size and len(encoded) > header.cmdline_size:
        raise LinuxBootError(f"{name}: command line of {len(encoded)} bytes is longer than the kernel accepts "
                             f"({header.cmdline_size}: cmdline_size)", "loader.cmdline")
    for start, end, what in ((BOOT_PARAMS, BOOT_PARAMS + 0x1000, "boot_params"),
                             (CMDLINE, CMDLINE + len(encoded) + 1, "the command line")):
        if not _ram_holds(memory, start, end):
            raise LinuxBootError(f"{name}: no RAM at {start:#x}..{end - 1:#x} for {what}: Linux needs RAM from 0")
    placed_initrd = None
    if initrd is not None:
        placed_initrd = _initrd_address(memory, header, len(initrd), (load, load + need), initrd_name)
    memory.write(load, kernel)
    params = bytearray(0x1000)
    params[SETUP_HEADER:header.end] = image[SETUP_HEADER:header.end]
    params[0x210] = TYPE_OF_LOADER_UNDEFINED
    params[0x211] = header.loadflags | LOADED_HIGH
    struct.pack_into("<I", params, 0x228, CMDLINE)
    struct.pack_into("<I", params, 0x0C8, 0)  # ext_cmd_line_ptr: the high half
    if placed_initrd is not None:
        assert initrd is not None
        memory.write(placed_initrd, initrd)
        struct.pack_into("<II", params, 0x218, placed_initrd & 0xFFFF_FFFF, len(initrd) & 0xFFFF_FFFF)
        struct.pack_into("<II", params, 0x0C0, placed_initrd >> 32, len(initrd) >> 32)
    entries = e820_map(memory.home_slots())
    params[0x1E8] = len(entries)
    for i, (address, size, kind) in enumerate(entries):
        struct.pack_into("<QQI", params, 0x2D0 + 20 * i, address, size, kind)
    memory.write(BOOT_PARAMS, bytes(params))
    memory.write(CMDLINE, encoded + b"\0")
    regions = [(load, load + need, f"the kernel {name} (its init_size)"),
               (BOOT_PARAMS, BOOT_PARAMS + 0x1000, "boot_params"),
               (CMDLINE, CMDLINE + len(encoded) + 1, "the kernel command line")]
    if placed_initrd is not None:
        assert initrd is not None
        regions.append((placed_initrd, placed_initrd + len(initrd), f"the initrd {initrd_name}"))
    return LinuxBoot(entry=load + ENTRY_64, boot_params=BOOT_PARAMS, kernel=(load, load + need),
                     initrd=None if placed_initrd is None else (placed_initrd, placed_initrd + len(initrd or b"")),
                     header=header, regions=tuple(regions))


def _load_address(memory: GuestMemory, header: SetupHeader, need: int, name: str) -> int:
    """The preferred address if RAM holds the kernel there, else (relocatable kernels) the lowest
    aligned address at or above 16 MiB where it does."""
    preferred = header.pref_address or DEFAULT_LOAD
    if _ram_holds(memory, preferred, preferred + need):
        return preferred
    if header.relocatable:
        align = header.kernel_alignment
        for slot in sorted(memory.home_slots(), key=lambda s: s.base):
            start = max(slot.base, DEFAULT_LOAD)
            start = -(-start // align) * align
            if not slot.readonly and _ram_holds(memory, start, start + need):
                return start
    ram = sum(slot.size for slot in memory.home_slots() if not slot.readonly)
    raise LinuxBootError(f"{name}: the kernel needs {need >> 20} MiB of RAM from {preferred:#x} (its init_size) "
                         f"and the machine's {ram >> 20} MiB of RAM do not hold it there")


def _initrd_address(memory: GuestMemory, header: SetupHeader, size: int, kernel: tuple[int, int],
                    name: str) -> int:
    """As high as RAM and initrd_addr_max allow, page-aligned, clear of the kernel."""
    limit = (header.initrd_addr_max or 0x37FF_FFFF) + 1
    for slot in sorted(memory.home_slots(), key=lambda s: s.base, reverse=True):
        if slot.readonly:
            continue
        top = min(slot.base + slot.size, limit)
        start = (top - size) & ~0xFFF
        if start < slot.base or start < 0x10_0000:
            continue
        if start < kernel[1] and kernel[0] < start + size:
            start = (kernel[0] - size) & ~0xFFF
            if start < max(slot.base, 0x10_0000):
                continue
        return start
    ram = sum(slot.size for slot in memory.home_slots() if not slot.readonly)
    raise LinuxBootError(f"initrd {name} ({size} bytes) does not fit in RAM below {limit:#x} next to the "
                         f"kernel ({ram >> 20} MiB of RAM)", "loader.initrd")
