"""Kernel loading: multiboot v1, ELF32/ELF64 and flat images into guest memory.

:func:`load_kernel` places the image a profile's ``loader:`` section names and
returns a :class:`BootInfo`: the start mode, the entry point and the registers
the kernel expects (for multiboot EAX and EBX). The machine merges those over
``cpu.registers`` and builds the start state from them.

Formats:

``multiboot``
    Multiboot Specification 0.6.96 (version 1). The header (magic 0x1BADB002,
    flags, checksum; 4-byte aligned in the first 8192 bytes, section 3.1.1) is
    followed by the ELF program headers, or by the header's address fields when
    flags bit 16 is set (the "a.out kludge", 3.1.3). The kernel starts in 32-bit
    protected mode with EAX = 0x2BADB002 and EBX = the physical address of the
    boot information (3.2), which holds mem_lower/mem_upper, the command line,
    a memory map built from the slots (RAM type 1, ROM type 2) and the boot
    loader name, all in RAM clear of the kernel.
``elf``
    ELF32 or ELF64 (x86): every PT_LOAD segment at its physical address, the
    part past the file size zero-filled; ELF32 enters in protected mode, ELF64 in
    long mode (the VMM's identity map covers the first 4 GiB).
``flat``
    The bytes at ``loader.address``, entered there in the profile's ``cpu.mode``.
``auto``
    multiboot if a valid header is there, else ELF if the file starts with the
    ELF magic, else flat.

Nothing is written to guest memory until the whole image has been checked, so a
:class:`LoaderError` leaves memory as it was.
"""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import attrs
from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from .memory import GuestMemory, GuestMemoryError, MemorySlot
from .profile import read_bounded

if TYPE_CHECKING:
    from .profile import LoaderSpec

MULTIBOOT_HEADER_MAGIC = 0x1BADB002
MULTIBOOT_BOOTLOADER_MAGIC = 0x2BADB002
MULTIBOOT_SEARCH = 8192  # the header must be in the first 8192 bytes

# Header flags (spec 3.1.2). Bits 0-15 are requirements: a loader that does not
# understand one must refuse the kernel. Bits 16-31 are optional features.
MB_PAGE_ALIGN = 1 << 0  # modules page-aligned: we load no modules, so trivially met
MB_MEMORY_INFO = 1 << 1  # mem_* (and mmap_*) fields: always provided
MB_VIDEO_MODE = 1 << 2  # a graphics mode request: we have no display; ignored, said so
MB_AOUT_KLUDGE = 1 << 16  # load by the header's address fields, not by the ELF headers
MB_SUPPORTED_REQUIRED = MB_PAGE_ALIGN | MB_MEMORY_INFO | MB_VIDEO_MODE

# Boot information flags (spec 3.3).
MBI_MEMORY = 1 << 0
MBI_CMDLINE = 1 << 2
MBI_MMAP = 1 << 6
MBI_LOADER_NAME = 1 << 9

# Boot information layout (spec 3.3): field -> byte offset. 116 bytes up to and
# including the framebuffer fields; everything we do not fill stays zero.
MBI_OFFSETS = {
    "flags": 0, "mem_lower": 4, "mem_upper": 8, "boot_device": 12, "cmdline": 16,
    "mods_count": 20, "mods_addr": 24, "syms": 28, "mmap_length": 44, "mmap_addr": 48,
    "drives_length": 52, "drives_addr": 56, "config_table": 60, "boot_loader_name": 64,
}
MBI_SIZE = 116
MMAP_ENTRY = struct.Struct("<IQQI")  # size (of the rest: 20), base_addr, length, type
MMAP_RAM, MMAP_RESERVED = 1, 2
BOOT_LOADER_NAME = "vmcore"

#: Where the boot information goes when there is RAM there: conventional memory
#: below the EBDA, which nothing of a multiboot kernel's image normally uses.
LOW_INFO_AREA = (0x9000, 0xA0000)
LOWER_MEMORY_LIMIT = 640 * 1024  # mem_lower counts at most the 640 KiB below the hole
UPPER_MEMORY_BASE = 1 << 20  # mem_upper counts from 1 MiB

ELF_MAGIC = b"\x7fELF"
EM_386, EM_X86_64 = 3, 62


class LoaderError(Exception):
    """The kernel image cannot be loaded; the message says what is wrong with it, ``key`` which
    profile key it belongs to."""

    def __init__(self, message: str, key: str = "loader.kernel") -> None:
        super().__init__(message)
        self.key = key


@attrs.frozen
class LoadSegment:
    """A piece of the image to place: ``data`` at ``address``, zeros up to ``size``."""

    address: int
    data: bytes
    size: int  # >= len(data); the rest is zero-filled (ELF bss, a.out bss_end_addr)
    what: str  # how an error names it, e.g. "PT_LOAD segment 1"

    @property
    def end(self) -> int:
        return self.address + self.size


@attrs.frozen
class BootInfo:
    """How to start the loaded kernel.

    ``mode`` is the start state (``"protected"``, ``"long"``), or None to keep the
    profile's ``cpu.mode`` (flat images). ``registers`` use the profile's names
    (``rax``, ``rbx``...) and go over ``cpu.registers``. ``regions`` are the
    guest-physical ranges ``(start, end, what)`` the loader wrote, so the VMM can
    keep its own tables clear of them.
    """

    mode: str | None
    entry: int
    registers: dict[str, int]
    description: str
    regions: tuple[tuple[int, int, str], ...] = ()
    #: The kernel expects what PC firmware leaves in memory to describe the machine (an MP table
    #: of its interrupt wiring, vmcore.mptable): a Linux kernel booted without firmware.
    firmware_tables: bool = False


#: How much bigger than all of guest memory a kernel file may be (headers, symbols, debug info).
KERNEL_FILE_SLACK = 64 << 20


def load_kernel(spec: LoaderSpec, memory: GuestMemory, kernel_parameters: Sequence[str] = ()) -> BootInfo:
    """Load the kernel a :class:`vmcore.profile.LoaderSpec` names into ``memory`` (``kernel_parameters``:
    see :func:`load_image`)."""
    path = Path(spec.kernel)
    # Bounded: a kernel holds no more than guest memory, plus its headers and symbols; a /proc or
    # device file named as one must not be read without end.
    limit = sum(slot.size for slot in memory.home_slots()) + KERNEL_FILE_SLACK
    try:
        image = read_bounded(path, limit + 1)
    except OSError as exc:
        raise LoaderError(f"cannot read kernel {path}: {exc.strerror or exc}") from None
    if len(image) > limit:
        raise LoaderError(f"kernel {path} holds more than {limit:#x} bytes: all of guest memory "
                          f"plus {KERNEL_FILE_SLACK >> 20} MiB for headers and symbols")
    initrd = None
    if spec.initrd is not None:
        ram = sum(slot.size for slot in memory.home_slots() if not slot.readonly)
        try:
            initrd = read_bounded(spec.initrd, ram + 1)
        except OSError as exc:
            raise LoaderError(f"cannot read initrd {spec.initrd}: {exc.strerror or exc}", "loader.initrd") from None
        if len(initrd) > ram:
            raise LoaderError(f"initrd {spec.initrd} is larger than the machine's {ram >> 20} MiB of RAM",
                              "loader.initrd")
    return load_image(image, memory, format=spec.format, cmdline=spec.cmdline, address=spec.address,
                      name=path.name, initrd=initrd, initrd_name=None if spec.initrd is None else spec.initrd.name,
                      kernel_parameters=kernel_parameters)


def load_image(image: bytes, memory: GuestMemory, *, format: str = "auto", cmdline: str = "",
               address: int | None = None, name: str = "kernel", initrd: bytes | None = None,
               initrd_name: str | None = None, kernel_parameters: Sequence[str] = ()) -> BootInfo:
    """Load ``image`` (the bytes of a kernel file) as :func:`load_kernel` does. ``kernel_parameters``
    (what the machine's devices need a Linux kernel to be told, e.g. where a virtio-mmio device
    is) follow the command line of a Linux kernel."""
    from .linux_boot import is_bzimage  # imports this module: loaded when first needed

    if format == "linux" or (format == "auto" and is_bzimage(image)):
        cmdline = " ".join(part for part in (cmdline, *kernel_parameters) if part)
        return _load_linux(image, memory, cmdline, initrd, name, initrd_name or "initrd")
    if initrd is not None:
        raise LoaderError(f"{name} is not a Linux bzImage: only a Linux kernel takes an initrd", "loader.initrd")
    if format == "auto":
        header = find_multiboot_header(image)
        if header is not None:
            return _load_multiboot(image, header, memory, cmdline, name)
        if image[:4] == ELF_MAGIC:
            return _load_elf(image, memory, name)
        return _load_flat(image, memory, address, name, detected=True)
    if format == "multiboot":
        header = find_multiboot_header(image)
        if header is None:
            raise LoaderError(f"{name}: {_why_no_multiboot_header(image)}")
        return _load_multiboot(image, header, memory, cmdline, name)
    if format == "elf":
        return _load_elf(image, memory, name)
    if format == "flat":
        return _load_flat(image, memory, address, name, detected=False)
    raise LoaderError(f"{name}: unknown loader format {format!r}; expected auto, multiboot, elf, flat or linux")


def _load_linux(image: bytes, memory: GuestMemory, cmdline: str, initrd: bytes | None, name: str,
                initrd_name: str) -> BootInfo:
    """The Linux boot protocol (vmcore.linux_boot): the 64-bit entry, RSI at boot_params."""
    from .linux_boot import load_linux

    boot = load_linux(image, memory, cmdline=cmdline, initrd=initrd, name=name, initrd_name=initrd_name)
    return BootInfo(mode="long", entry=boot.entry, registers={"rsi": boot.boot_params}, description=boot.description,
                    regions=boot.regions, firmware_tables=True)


# --- multiboot ------------------------------------------------------------------------------


@attrs.frozen
class MultibootHeader:
    offset: int  # in the file
    flags: int
    # The a.out kludge fields (spec 3.1.3), read when flags bit 16 is set.
    header_addr: int = 0
    load_addr: int = 0
    load_end_addr: int = 0
    bss_end_addr: int = 0
    entry_addr: int = 0


def find_multiboot_header(image: bytes) -> MultibootHeader | None:
    """The first valid multiboot v1 header: magic, and flags + checksum that add up to 0."""
    limit = min(len(image), MULTIBOOT_SEARCH) - 12
    for offset in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<3I", image, offset)
        if magic != MULTIBOOT_HEADER_MAGIC or (magic + flags + checksum) & 0xFFFFFFFF:
            continue
        if flags & MB_AOUT_KLUDGE and offset + 32 <= len(image):
            fields = struct.unpack_from("<5I", image, offset + 12)
            return MultibootHeader(offset, flags, *fields)
        return MultibootHeader(offset, flags)
    return None


def _why_no_multiboot_header(image: bytes) -> str:
    limit = min(len(image), MULTIBOOT_SEARCH) - 12
    for offset in range(0, limit + 1, 4):
        magic, flags, checksum = struct.unpack_from("<3I", image, offset)
        if magic == MULTIBOOT_HEADER_MAGIC:
            return (f"not a multiboot kernel: magic {MULTIBOOT_HEADER_MAGIC:#x} at offset {offset:#x} but its "
                    f"checksum {checksum:#010x} does not make magic + flags ({flags:#x}) + checksum zero "
                    f"(expected {(-(magic + flags)) & 0xFFFFFFFF:#010x})")
    return (f"not a multiboot kernel: no header (magic {MULTIBOOT_HEADER_MAGIC:#x}, 4-byte aligned) in the "
            f"first {MULTIBOOT_SEARCH} bytes; use format: elf or flat for other images")


def _load_multiboot(image: bytes, header: MultibootHeader, memory: GuestMemory, cmdline: str,
                    name: str) -> BootInfo:
    unsupported = header.flags & 0xFFFF & ~MB_SUPPORTED_REQUIRED
    if unsupported:
        bits = ", ".join(str(b) for b in range(16) if unsupported >> b & 1)
        raise LoaderError(f"{name}: multiboot header flags {header.flags:#x} require feature bit(s) {bits}, "
                          f"which vmcore does not support (bits 0-2 only)")
    notes = []
    if header.flags & MB_VIDEO_MODE:
        notes.append("video mode request (flags bit 2) ignored: no display")
    if header.flags & MB_AOUT_KLUDGE:
        segments, entry = _aout_kludge(image, header, name)
        kind = "a.out-kludge"
    else:
        if image[:4] != ELF_MAGIC:
            raise LoaderError(f"{name}: multiboot header without flags bit 16 (load addresses), so the kernel "
                              f"must be ELF, but the file does not start with the ELF magic")
        elf = _parse_elf(image, name)
        segments, entry = _elf_segments(elf, name)
        kind = f"ELF{elf.elfclass}"
        if entry >= 1 << 32:
            raise LoaderError(f"{name}: entry point {entry:#x} is above 4 GiB; a multiboot kernel starts in "
                              f"32-bit protected mode")
    _check_segments(memory, segments, name)
    info_at, info = _boot_information(memory, segments, cmdline, name)
    _place(memory, segments)
    memory.write(info_at, info)
    regions = tuple((s.address, s.end, s.what) for s in segments) + (
        (info_at, info_at + len(info), "multiboot information"),)
    where = ", ".join(f"{s.address:#x}..{s.end - 1:#x}" for s in segments)
    description = (f"multiboot {kind} kernel {name}: {where}, entry {entry:#x}, information at {info_at:#x}"
                   f"{f', cmdline {cmdline!r}' if cmdline else ''}{''.join('; ' + n for n in notes)}")
    return BootInfo(mode="protected", entry=entry,
                    registers={"rax": MULTIBOOT_BOOTLOADER_MAGIC, "rbx": info_at},
                    description=description, regions=regions)


def _aout_kludge(image: bytes, h: MultibootHeader, name: str) -> tuple[list[LoadSegment], int]:
    """Segments from the header's address fields (spec 3.1.3)."""
    if h.offset + 32 > len(image):
        raise LoaderError(f"{name}: multiboot header at {h.offset:#x} sets flags bit 16 but the file ends "
                          f"before its address fields")
    if not h.load_addr <= h.header_addr:
        raise LoaderError(f"{name}: multiboot header_addr {h.header_addr:#x} is below load_addr "
                          f"{h.load_addr:#x}; the header must lie inside the loaded text")
    # header_addr is where the header itself lands: that fixes the file offset of load_addr.
    start = h.offset - (h.header_addr - h.load_addr)
    if start < 0:
        raise LoaderError(f"{name}: multiboot load_addr {h.load_addr:#x} would be {-start} bytes before the "
                          f"start of the file (header at offset {h.offset:#x}, header_addr {h.header_addr:#x})")
    if h.load_end_addr:
        if h.load_end_addr <= h.load_addr:
            raise LoaderError(f"{name}: multiboot load_end_addr {h.load_end_addr:#x} is not above load_addr "
                              f"{h.load_addr:#x}")
        length = h.load_end_addr - h.load_addr
        if start + length > len(image):
            raise LoaderError(f"{name}: multiboot load_addr..load_end_addr needs {length} bytes from offset "
                              f"{start:#x}, but the file is {len(image)} bytes")
    else:
        length = len(image) - start  # 0: the text and data run to the end of the file
    size = length
    if h.bss_end_addr:
        if h.bss_end_addr < h.load_addr + length:
            raise LoaderError(f"{name}: multiboot bss_end_addr {h.bss_end_addr:#x} is below the end of the "
                              f"loaded data {h.load_addr + length:#x}")
        size = h.bss_end_addr - h.load_addr
    if not h.load_addr <= h.entry_addr < h.load_addr + size:
        raise LoaderError(f"{name}: multiboot entry_addr {h.entry_addr:#x} is outside the loaded image "
                          f"{h.load_addr:#x}..{h.load_addr + size - 1:#x}")
    return [LoadSegment(h.load_addr, image[start:start + length], size, "a.out-kludge image")], h.entry_addr


def _boot_information(memory: GuestMemory, segments: list[LoadSegment], cmdline: str,
                      name: str) -> tuple[int, bytes]:
    """Choose where the boot information goes and build its bytes for that address."""
    mmap = b"".join(
        MMAP_ENTRY.pack(MMAP_ENTRY.size - 4, slot.base, slot.size, MMAP_RESERVED if slot.readonly else MMAP_RAM)
        for slot in memory
    )
    loader_name = BOOT_LOADER_NAME.encode() + b"\0"
    try:
        command = cmdline.encode("ascii") + b"\0"
    except UnicodeEncodeError:
        raise LoaderError(f"{name}: the command line {cmdline!r} is not ASCII") from None
    if b"\0" in command[:-1]:
        raise LoaderError(f"{name}: the command line contains a NUL byte")
    # info, mmap (8-aligned), boot loader name, command line: one block.
    mmap_off = _align(MBI_SIZE, 8)
    name_off = mmap_off + len(mmap)
    cmd_off = name_off + len(loader_name)
    need = cmd_off + len(command)

    at = _info_address(memory, segments, need)
    if at is None:
        ram = ", ".join(_slot_text(s) for s in memory) or "no slots"
        kernel = ", ".join(f"{s.address:#x}..{s.end - 1:#x}" for s in segments)
        raise LoaderError(
            f"{name}: no room for the multiboot information ({need} bytes): neither "
            f"{LOW_INFO_AREA[0]:#x}..{LOW_INFO_AREA[1] - 1:#x} nor the space after the kernel ({kernel}) is "
            f"free RAM (slots: {ram}); add RAM below 640K or after the kernel")
    info = bytearray(need)
    fields = {
        "flags": MBI_MEMORY | MBI_CMDLINE | MBI_MMAP | MBI_LOADER_NAME,
        "mem_lower": contiguous_ram(memory, 0, LOWER_MEMORY_LIMIT) // 1024,
        "mem_upper": contiguous_ram(memory, UPPER_MEMORY_BASE, 1 << 32) // 1024,
        "cmdline": at + cmd_off,
        "mmap_length": len(mmap),
        "mmap_addr": at + mmap_off,
        "boot_loader_name": at + name_off,
    }
    for field, value in fields.items():
        struct.pack_into("<I", info, MBI_OFFSETS[field], value)
    info[mmap_off:name_off] = mmap
    info[name_off:cmd_off] = loader_name
    info[cmd_off:need] = command
    return at, bytes(info)


def _info_address(memory: GuestMemory, segments: list[LoadSegment], need: int) -> int | None:
    """Low memory at 0x9000 if it is free RAM, else the first free RAM after the kernel."""
    low, low_end = LOW_INFO_AREA
    candidates = [low] if low + need <= low_end else []
    kernel_end = max(s.end for s in segments)
    candidates.append(_align(kernel_end, 4096))
    for at in candidates:
        slot = memory.slot_at(at)
        if slot is None or slot.readonly or at + need > slot.end or at + need > 1 << 32:
            continue  # EBX and the info's pointers are 32-bit
        if any(s.address < at + need and at < s.end for s in segments):
            continue
        return at
    return None


def contiguous_ram(memory: GuestMemory, start: int, limit: int) -> int:
    """Bytes of writable memory from ``start`` without a hole, up to ``limit``."""
    at = start
    while at < limit:
        slot = memory.slot_at(at)
        if slot is None or slot.readonly:
            break
        at = slot.end
    return min(at, limit) - start


# --- ELF -----------------------------------------------------------------------------------


def _parse_elf(image: bytes, name: str) -> ELFFile:
    try:
        elf = ELFFile(io.BytesIO(image))
        machine = elf.header["e_machine"]
        etype = elf.header["e_type"]
    except ELFError as exc:
        raise LoaderError(f"{name}: not a valid ELF file: {exc}") from None
    if not elf.little_endian:
        raise LoaderError(f"{name}: big-endian ELF; x86 kernels are little-endian")
    expected = {32: "EM_386", 64: "EM_X86_64"}[elf.elfclass]
    if machine != expected:
        raise LoaderError(f"{name}: ELF{elf.elfclass} for machine {machine}, expected {expected} (x86)")
    if etype != "ET_EXEC":
        hint = "; link it into an executable first" if etype == "ET_REL" else ""
        raise LoaderError(f"{name}: ELF type {etype}, expected an executable (ET_EXEC){hint}")
    return elf


def _elf_segments(elf: ELFFile, name: str) -> tuple[list[LoadSegment], int]:
    """PT_LOAD segments at their physical addresses, and the entry point as a physical address."""
    segments: list[LoadSegment] = []
    entry = elf.header["e_entry"]
    physical_entry = None
    try:
        for index, phdr in enumerate(elf.iter_segments()):
            if phdr["p_type"] != "PT_LOAD" or phdr["p_memsz"] == 0:
                continue
            filesz, memsz = phdr["p_filesz"], phdr["p_memsz"]
            if filesz > memsz:
                raise LoaderError(f"{name}: program header {index} has p_filesz {filesz:#x} larger than "
                                  f"p_memsz {memsz:#x}")
            data = phdr.data()
            if len(data) != filesz:
                raise LoaderError(f"{name}: program header {index} needs {filesz:#x} bytes from offset "
                                  f"{phdr['p_offset']:#x}, but the file ends first")
            vaddr, paddr = phdr["p_vaddr"], phdr["p_paddr"]
            segments.append(LoadSegment(paddr, data, memsz, f"PT_LOAD segment {index}"))
            # A kernel linked to run at a virtual address other than where it is
            # loaded starts with paging off (or identity-mapped), so the entry is
            # translated like GRUB does: by the segment that holds it.
            if physical_entry is None and vaddr <= entry < vaddr + memsz:
                physical_entry = entry - vaddr + paddr
    except ELFError as exc:
        raise LoaderError(f"{name}: malformed ELF: {exc}") from None
    if not segments:
        raise LoaderError(f"{name}: ELF has no PT_LOAD segment with contents; nothing to load")
    if physical_entry is None:
        spans = ", ".join(f"{s.address:#x}..{s.end - 1:#x}" for s in segments)
        raise LoaderError(f"{name}: entry point {entry:#x} is outside every PT_LOAD segment ({spans})")
    return segments, physical_entry


def _load_elf(image: bytes, memory: GuestMemory, name: str) -> BootInfo:
    elf = _parse_elf(image, name)
    segments, entry = _elf_segments(elf, name)
    if elf.elfclass == 64:
        mode = "long"
        if entry >= 1 << 32:
            raise LoaderError(f"{name}: entry point {entry:#x} is above 4 GiB, outside the VMM's identity map")
    else:
        mode = "protected"
    _check_segments(memory, segments, name)
    _place(memory, segments)
    where = ", ".join(f"{s.address:#x}..{s.end - 1:#x}" for s in segments)
    return BootInfo(mode=mode, entry=entry, registers={},
                    description=f"ELF{elf.elfclass} kernel {name}: {where}, entry {entry:#x}, {mode} mode",
                    regions=tuple((s.address, s.end, s.what) for s in segments))


# --- flat ----------------------------------------------------------------------------------


def _load_flat(image: bytes, memory: GuestMemory, address: int | None, name: str, detected: bool) -> BootInfo:
    if address is None:
        why = "neither multiboot nor ELF, so it is loaded as a flat image, which" if detected else "a flat image"
        raise LoaderError(f"{name}: {why} needs loader.address: where to load it (also its entry point)")
    if not image:
        raise LoaderError(f"{name}: the image is empty")
    segments = [LoadSegment(address, image, len(image), "flat image")]
    _check_segments(memory, segments, name)
    _place(memory, segments)
    return BootInfo(mode=None, entry=address, registers={},
                    description=f"flat image {name}: {address:#x}..{address + len(image) - 1:#x}, "
                                f"entry {address:#x}",
                    regions=((address, address + len(image), "flat image"),))


# --- placing -------------------------------------------------------------------------------


def _check_segments(memory: GuestMemory, segments: Iterable[LoadSegment], name: str) -> None:
    """Every byte of every segment in some slot, and no two segments overlapping."""
    segments = sorted(segments, key=lambda s: s.address)
    for seg in segments:
        at = seg.address
        while at < seg.end:
            slot = memory.slot_at(at)
            if slot is None:
                slots = ", ".join(_slot_text(s) for s in memory) or "none"
                raise LoaderError(f"{name}: {seg.what} {seg.address:#x}..{seg.end - 1:#x} does not fit in guest "
                                  f"memory: {at:#x} is in no slot (slots: {slots})")
            at = slot.end
    for a, b in itertools.pairwise(segments):
        if b.address < a.end:
            raise LoaderError(f"{name}: {b.what} {b.address:#x}..{b.end - 1:#x} overlaps {a.what} "
                              f"{a.address:#x}..{a.end - 1:#x}")


def _place(memory: GuestMemory, segments: Iterable[LoadSegment]) -> None:
    for seg in segments:
        try:
            memory.load(seg.address, seg.data)
            if seg.size > len(seg.data):
                memory.load(seg.address + len(seg.data), bytes(seg.size - len(seg.data)))
        except GuestMemoryError as exc:  # checked before: only a bug gets here
            raise LoaderError(f"{seg.what}: {exc}") from None


def _slot_text(slot: MemorySlot) -> str:
    return f"{slot.name} {slot.base:#x}..{slot.end - 1:#x}{' rom' if slot.readonly else ''}"


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment
