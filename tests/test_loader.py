"""vmcore.loader: multiboot v1, ELF and flat kernels placed in guest memory (no VM)."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from hypothesis import given, settings
from hypothesis import strategies as st

from vmcore.loader import (
    BOOT_LOADER_NAME,
    MBI_OFFSETS,
    MULTIBOOT_BOOTLOADER_MAGIC,
    MULTIBOOT_HEADER_MAGIC,
    BootInfo,
    LoaderError,
    find_multiboot_header,
    load_image,
    load_kernel,
)
from vmcore.memory import GuestMemory
from vmcore.profile import LoaderSpec, Profile, Where

ROOT = Path(__file__).resolve().parent.parent
C_GUESTS = ROOT / "guest" / "c"
MULTIBOOT_KERNEL = C_GUESTS / "multiboot_kernel.elf"
MIB = 1 << 20


def make_memory(*slots: tuple[str, int, int, bool]) -> GuestMemory:
    memory = GuestMemory()
    for name, base, size, readonly in slots:
        memory.add_slot(name, base, size, readonly)
    return memory


@pytest.fixture
def memory():
    mem = make_memory(("ram", 0, 4 * MIB, False))
    yield mem
    mem.close()


def spec(kernel: Path, format: str = "auto", cmdline: str = "", address: int | None = None) -> LoaderSpec:
    return LoaderSpec(kernel=kernel, format=format, cmdline=cmdline, address=address, where=Where("test"))


# --- reading the multiboot information back (spec 3.3) -------------------------------------


def info_field(memory: GuestMemory, info: int, field: str) -> int:
    return memory.read_int(info + MBI_OFFSETS[field], 4)


def c_string(memory: GuestMemory, address: int, limit: int = 4096) -> str:
    data = memory.read(address, limit)
    return data[: data.index(b"\0")].decode("ascii")


def mmap_entries(memory: GuestMemory, info: int) -> list[tuple[int, int, int, int]]:
    """(size, base, length, type) per entry, walking by size + 4 as a kernel does."""
    at = info_field(memory, info, "mmap_addr")
    end = at + info_field(memory, info, "mmap_length")
    entries = []
    while at < end:
        size, base, length, kind = struct.unpack("<IQQI", memory.read(at, 24))
        entries.append((size, base, length, kind))
        at += size + 4
    return entries


# --- images made here ----------------------------------------------------------------------


def elf_image(cls: int, entry: int, segments: list[tuple[int, int, bytes, int]], machine: int | None = None,
              etype: int = 2) -> bytes:
    """A minimal little-endian x86 ELF: segments are (vaddr, paddr, file bytes, memsz)."""
    machine = machine if machine is not None else (3 if cls == 32 else 62)
    if cls == 32:
        ehdr, phdr = struct.Struct("<16sHHIIIIIHHHHHH"), struct.Struct("<8I")
    else:
        ehdr, phdr = struct.Struct("<16sHHIQQQIHHHHHH"), struct.Struct("<IIQQQQQQ")
    ident = b"\x7fELF" + bytes([1 if cls == 32 else 2, 1, 1]) + bytes(9)
    data_at = ehdr.size + phdr.size * len(segments)
    headers, blobs = [], b""
    for vaddr, paddr, data, memsz in segments:
        offset = data_at + len(blobs)
        if cls == 32:
            headers.append(phdr.pack(1, offset, vaddr, paddr, len(data), memsz, 7, 4))
        else:
            headers.append(phdr.pack(1, 7, offset, vaddr, paddr, len(data), memsz, 4))
        blobs += data
    header = ehdr.pack(ident, etype, machine, 1, entry, ehdr.size, 0, 0, ehdr.size, phdr.size,
                       len(segments), 40 if cls == 32 else 64, 0, 0)
    return header + b"".join(headers) + blobs


def multiboot_header(flags: int, checksum: int | None = None, fields: tuple[int, ...] = ()) -> bytes:
    if checksum is None:
        checksum = -(MULTIBOOT_HEADER_MAGIC + flags) & 0xFFFFFFFF
    return struct.pack(f"<3I{len(fields)}I", MULTIBOOT_HEADER_MAGIC, flags, checksum, *fields)


AOUT_LOAD = 0x100000
AOUT_CODE = bytes.fromhex("fa f4 eb fd")  # cli; hlt; jmp .-1


def aout_kernel(pad: int = 16, bss: int = 0x100, load_end: bool = True, entry_offset: int | None = None,
                header_addr: int | None = None) -> bytes:
    """A multiboot a.out-kludge kernel (flags bit 16): `pad` bytes, the header, code."""
    header_len = 32
    size = pad + header_len + len(AOUT_CODE)
    entry = AOUT_LOAD + pad + header_len if entry_offset is None else AOUT_LOAD + entry_offset
    fields = (
        AOUT_LOAD + pad if header_addr is None else header_addr,  # header_addr
        AOUT_LOAD,  # load_addr
        AOUT_LOAD + size if load_end else 0,  # load_end_addr
        AOUT_LOAD + size + bss if bss else 0,  # bss_end_addr
        entry,  # entry_addr
    )
    return b"\x90" * pad + multiboot_header((1 << 16) | (1 << 1), fields=fields) + AOUT_CODE


# --- multiboot ELF kernel from guest/c ---------------------------------------------------


def test_multiboot_kernel_enters_protected_mode_with_magic_in_eax_and_info_in_ebx(memory):
    boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot", "status=7 hello"), memory)
    assert isinstance(boot, BootInfo)
    assert boot.mode == "protected"
    assert boot.registers["rax"] == MULTIBOOT_BOOTLOADER_MAGIC == 0x2BADB002
    assert boot.registers["rbx"] == 0x9000  # low memory is free RAM here
    elf = ELFFile(io.BytesIO(MULTIBOOT_KERNEL.read_bytes()))
    assert boot.entry == elf.header["e_entry"]
    assert "multiboot" in boot.description and "multiboot_kernel.elf" in boot.description


def test_multiboot_kernel_segments_land_at_their_physical_addresses_with_bss_zeroed(memory):
    memory.write(0x100000, b"\xAA" * 0x10000)  # whatever was there must not survive in .bss
    load_kernel(spec(MULTIBOOT_KERNEL, "multiboot"), memory)
    elf = ELFFile(io.BytesIO(MULTIBOOT_KERNEL.read_bytes()))
    loads = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_LOAD"]
    assert loads
    for seg in loads:
        data = seg.data()
        assert memory.read(seg["p_paddr"], len(data)) == data
        bss = seg["p_memsz"] - seg["p_filesz"]
        assert memory.read(seg["p_paddr"] + seg["p_filesz"], bss) == bytes(bss)


def test_info_flags_say_memory_cmdline_mmap_and_loader_name(memory):
    boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot", "x"), memory)
    flags = info_field(memory, boot.registers["rbx"], "flags")
    assert flags == (1 << 0) | (1 << 2) | (1 << 6) | (1 << 9)


def test_info_mem_lower_and_upper_count_kib_below_640k_and_from_1m(memory):
    boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot"), memory)
    info = boot.registers["rbx"]
    assert info_field(memory, info, "mem_lower") == 640
    assert info_field(memory, info, "mem_upper") == (4 * MIB - MIB) // 1024


def test_mem_upper_stops_at_the_first_hole_and_mem_lower_is_zero_without_low_ram():
    with_hole = make_memory(("high", MIB, 2 * MIB, False), ("far", 8 * MIB, MIB, False))
    try:
        boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot"), with_hole)
        info = boot.registers["rbx"]
        assert info_field(with_hole, info, "mem_lower") == 0
        assert info_field(with_hole, info, "mem_upper") == 2 * MIB // 1024  # 1M..3M, then a hole
    finally:
        with_hole.close()


def test_info_cmdline_is_the_nul_terminated_command_line(memory):
    boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot", "status=7 hello"), memory)
    info = boot.registers["rbx"]
    assert c_string(memory, info_field(memory, info, "cmdline")) == "status=7 hello"


def test_info_boot_loader_name_is_vmcore(memory):
    boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot"), memory)
    info = boot.registers["rbx"]
    assert c_string(memory, info_field(memory, info, "boot_loader_name")) == BOOT_LOADER_NAME == "vmcore"


def test_mmap_has_one_entry_per_slot_ram_type_1_rom_type_2():
    memory = make_memory(("low", 0, 640 * 1024, False), ("ram", MIB, 7 * MIB, False),
                         ("bios", 0xFFFF0000, 0x10000, True))
    try:
        boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot"), memory)
        assert mmap_entries(memory, boot.registers["rbx"]) == [
            (20, 0, 640 * 1024, 1),
            (20, MIB, 7 * MIB, 1),
            (20, 0xFFFF0000, 0x10000, 2),
        ]
    finally:
        memory.close()


def test_info_cmdline_and_mmap_do_not_overlap_the_kernel(memory):
    boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot", "a" * 100), memory)
    kernel = [r for r in boot.regions if r[2] != "multiboot information"]
    (info_region,) = [r for r in boot.regions if r[2] == "multiboot information"]
    for start, end, _ in kernel:
        assert info_region[1] <= start or end <= info_region[0]
    info = boot.registers["rbx"]
    for field in ("cmdline", "mmap_addr", "boot_loader_name"):
        assert info_region[0] <= info_field(memory, info, field) < info_region[1]


def test_info_goes_after_the_kernel_when_there_is_no_low_ram():
    memory = make_memory(("ram", MIB, 3 * MIB, False))
    try:
        boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot", "late"), memory)
        info = boot.registers["rbx"]
        kernel_end = max(end for start, end, what in boot.regions if what != "multiboot information")
        assert info >= kernel_end and info % 4096 == 0
        assert c_string(memory, info_field(memory, info, "cmdline")) == "late"
    finally:
        memory.close()


def test_no_room_for_the_info_is_an_error_naming_it():
    kernel_end = max(s["p_paddr"] + s["p_memsz"] for s in ELFFile(io.BytesIO(MULTIBOOT_KERNEL.read_bytes()))
                     .iter_segments() if s["p_type"] == "PT_LOAD")
    tight = (kernel_end - MIB + 4095) // 4096 * 4096  # RAM that ends right after the kernel
    memory = make_memory(("ram", MIB, tight, False))
    try:
        with pytest.raises(LoaderError, match="no room for the multiboot information"):
            load_kernel(spec(MULTIBOOT_KERNEL, "multiboot"), memory)
    finally:
        memory.close()


def test_info_is_not_placed_in_rom():
    memory = make_memory(("lowrom", 0, MIB, True), ("ram", MIB, 3 * MIB, False))
    try:
        boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot"), memory)
        assert boot.registers["rbx"] >= MIB
    finally:
        memory.close()


# --- the a.out kludge (flags bit 16) -----------------------------------------------------


def test_aout_kludge_loads_from_load_addr_and_zeroes_up_to_bss_end(memory):
    image = aout_kernel(pad=16, bss=0x100)
    memory.write(AOUT_LOAD, b"\xCC" * 0x400)
    boot = load_image(image, memory, format="multiboot", cmdline="k", name="aout")
    assert boot.mode == "protected"
    assert boot.entry == AOUT_LOAD + 16 + 32
    assert boot.registers["rax"] == MULTIBOOT_BOOTLOADER_MAGIC
    assert memory.read(AOUT_LOAD, len(image)) == image
    assert memory.read(AOUT_LOAD + len(image), 0x100) == bytes(0x100)
    assert memory.read(AOUT_LOAD + len(image) + 0x100, 1) == b"\xCC"  # bss_end_addr is exclusive
    assert c_string(memory, info_field(memory, boot.registers["rbx"], "cmdline")) == "k"
    assert "a.out" in boot.description


def test_aout_kludge_header_addr_places_the_file_relative_to_the_header(memory):
    # The header sits 0x40 bytes into the file but says it loads at load_addr + 0x20:
    # the file's first 0x20 bytes lie before load_addr and are not loaded.
    image = b"\xEE" * 0x20 + aout_kernel(pad=0x20, bss=0)
    boot = load_image(image, memory, format="multiboot", name="aout")
    assert memory.read(AOUT_LOAD, 0x20) == b"\x90" * 0x20
    assert memory.read(AOUT_LOAD + 0x20, 4) == struct.pack("<I", MULTIBOOT_HEADER_MAGIC)
    assert boot.entry == AOUT_LOAD + 0x20 + 32


def test_aout_kludge_load_end_addr_zero_loads_to_the_end_of_the_file(memory):
    image = aout_kernel(pad=8, bss=0, load_end=False) + b"TAIL"
    load_image(image, memory, format="multiboot", name="aout")
    assert memory.read(AOUT_LOAD + len(image) - 4, 4) == b"TAIL"


def test_aout_kludge_entry_outside_the_image_is_rejected(memory):
    image = aout_kernel(entry_offset=0x10000)
    with pytest.raises(LoaderError, match="entry_addr 0x110000 is outside the loaded image"):
        load_image(image, memory, format="multiboot", name="aout")


def test_aout_kludge_header_addr_below_load_addr_is_rejected(memory):
    image = aout_kernel(header_addr=AOUT_LOAD - 4)
    with pytest.raises(LoaderError, match="header_addr .* is below load_addr"):
        load_image(image, memory, format="multiboot", name="aout")


# --- multiboot header checks (spec 3.1) ------------------------------------------------------


def test_bad_checksum_is_not_a_multiboot_header(memory):
    image = multiboot_header(0x3, checksum=0x12345678) + AOUT_CODE
    assert find_multiboot_header(image) is None
    # auto: not multiboot, not ELF, so flat, which needs an address
    with pytest.raises(LoaderError, match="loader.address"):
        load_image(image, memory, format="auto", name="bad")
    with pytest.raises(LoaderError, match=r"checksum 0x12345678 .*expected 0xe4524ffb"):
        load_image(image, memory, format="multiboot", name="bad")


def test_header_must_be_in_the_first_8192_bytes(memory):
    image = bytes(8192) + multiboot_header(0x3)
    assert find_multiboot_header(image) is None
    assert find_multiboot_header(bytes(8180) + multiboot_header(0x3)) is not None  # last aligned slot
    with pytest.raises(LoaderError, match="no header .* first 8192 bytes"):
        load_image(image, memory, format="multiboot", name="late")


def test_header_must_be_4_byte_aligned():
    assert find_multiboot_header(bytes(2) + multiboot_header(0x3)) is None


def test_unsupported_required_flag_is_rejected_naming_the_bit(memory):
    image = aout_kernel()
    flags = (1 << 16) | (1 << 3)
    patched = image[:16] + multiboot_header(flags) + image[16 + 12:]
    with pytest.raises(LoaderError, match=r"require feature bit\(s\) 3"):
        load_image(patched, memory, format="multiboot", name="needs3")


def test_video_mode_request_is_ignored_with_a_note(memory):
    image = aout_kernel()
    flags = (1 << 16) | (1 << 2)
    patched = image[:16] + multiboot_header(flags) + image[16 + 12:]
    boot = load_image(patched, memory, format="multiboot", name="video")
    assert "video mode" in boot.description


def test_multiboot_without_bit_16_needs_an_elf(memory):
    image = multiboot_header(0x3) + AOUT_CODE
    with pytest.raises(LoaderError, match="must be ELF"):
        load_image(image, memory, format="multiboot", name="raw")


def test_multiboot_elf_is_loaded_through_the_header_even_when_asked_for_elf(memory):
    # format: elf skips the multiboot protocol: no EAX/EBX, no information.
    boot = load_kernel(spec(MULTIBOOT_KERNEL, "elf"), memory)
    assert boot.mode == "protected"
    assert boot.registers == {}


# --- ELF -----------------------------------------------------------------------------------


def test_elf64_enters_long_mode_at_e_entry_with_segments_at_paddr(memory):
    code = bytes.fromhex("f4ebfd")  # hlt; jmp .-1
    image = elf_image(64, 0x200000, [(0x200000, 0x200000, code, 0x1000)])
    memory.write(0x200000, b"\xAA" * 0x1000)
    boot = load_image(image, memory, format="elf", name="k64")
    assert (boot.mode, boot.entry, boot.registers) == ("long", 0x200000, {})
    assert memory.read(0x200000, 3) == code
    assert memory.read(0x200003, 0x1000 - 3) == bytes(0x1000 - 3)
    assert "ELF64" in boot.description


def test_elf32_enters_protected_mode(memory):
    image = elf_image(32, 0x100000, [(0x100000, 0x100000, b"\xf4", 1)])
    boot = load_image(image, memory, format="elf", name="k32")
    assert (boot.mode, boot.entry) == ("protected", 0x100000)


def test_elf_entry_is_translated_from_virtual_to_physical(memory):
    # A higher-half kernel: linked at 0xC0100000, loaded at 1 MiB; paging is off at entry.
    image = elf_image(32, 0xC0100010, [(0xC0100000, 0x100000, b"\x90" * 32, 32)])
    boot = load_image(image, memory, format="elf", name="higher-half")
    assert boot.entry == 0x100010
    assert memory.read(0x100000, 32) == b"\x90" * 32


def test_elf_entry_outside_every_segment_is_rejected(memory):
    image = elf_image(32, 0x300000, [(0x100000, 0x100000, b"\x90", 1)])
    with pytest.raises(LoaderError, match="entry point 0x300000 is outside every PT_LOAD segment"):
        load_image(image, memory, format="elf", name="k")


def test_elf_for_another_machine_is_rejected(memory):
    image = elf_image(32, 0x100000, [(0x100000, 0x100000, b"\x90", 1)], machine=40)  # EM_ARM
    with pytest.raises(LoaderError, match="expected EM_386"):
        load_image(image, memory, format="elf", name="arm")


def test_relocatable_object_is_rejected_with_a_hint(memory):
    image = elf_image(32, 0, [(0x100000, 0x100000, b"\x90", 1)], etype=1)
    with pytest.raises(LoaderError, match="ET_REL.*link it"):
        load_image(image, memory, format="elf", name="obj")


def test_truncated_elf_is_a_loader_error(memory):
    image = elf_image(32, 0x100000, [(0x100000, 0x100000, b"\x90" * 64, 64)])
    with pytest.raises(LoaderError, match="k"):
        load_image(image[:-32], memory, format="elf", name="k")
    with pytest.raises(LoaderError, match="not a valid ELF"):
        load_image(b"\x7fELF\x01", memory, format="elf", name="k")


@pytest.mark.toolchain
@pytest.mark.skipif(shutil.which("as") is None or shutil.which("ld") is None, reason="GNU binutils missing")
def test_elf64_built_with_binutils_loads_in_long_mode(memory, tmp_path):
    source = tmp_path / "k64.S"
    source.write_text(
        ".code64\n.text\n.globl _start\n_start:\n  movabs $0x1122334455667788, %rax\n  hlt\n"
        ".bss\n  .skip 4096\n"
    )
    subprocess.run(["as", "--64", "-o", str(tmp_path / "k64.o"), str(source)], check=True, timeout=60)
    subprocess.run(["ld", "-m", "elf_x86_64", "--build-id=none", "-Ttext=0x200000", "-o",
                    str(tmp_path / "k64.elf"), str(tmp_path / "k64.o")], check=True, timeout=60)
    boot = load_kernel(spec(tmp_path / "k64.elf", "auto"), memory)
    assert (boot.mode, boot.entry) == ("long", 0x200000)
    assert memory.read(0x200002, 8) == struct.pack("<Q", 0x1122334455667788)


# --- flat ------------------------------------------------------------------------------------


def test_flat_image_goes_at_the_address_and_keeps_the_profiles_mode(memory):
    boot = load_image(b"\xf4\xeb\xfd", memory, format="flat", address=0x7C00, name="boot")
    assert (boot.mode, boot.entry, boot.registers) == (None, 0x7C00, {})
    assert memory.read(0x7C00, 3) == b"\xf4\xeb\xfd"


def test_flat_without_address_is_rejected(memory):
    with pytest.raises(LoaderError, match="flat image needs loader.address"):
        load_image(b"\xf4", memory, format="flat", name="boot")


def test_flat_image_may_be_placed_in_rom():
    memory = make_memory(("bios", 0xF0000, 0x10000, True))
    try:
        load_image(b"\xea", memory, format="flat", address=0xFFFF0, name="bios")
        assert memory.read(0xFFFF0, 1) == b"\xea"
    finally:
        memory.close()


# --- auto ------------------------------------------------------------------------------------


def test_auto_prefers_the_multiboot_header(memory):
    boot = load_kernel(spec(MULTIBOOT_KERNEL, "auto", "a"), memory)
    assert boot.registers["rax"] == MULTIBOOT_BOOTLOADER_MAGIC


def test_auto_takes_an_elf_without_a_header_as_elf(memory):
    image = elf_image(64, 0x200000, [(0x200000, 0x200000, b"\xf4", 1)])
    assert load_image(image, memory, name="k").mode == "long"


def test_auto_takes_anything_else_as_flat(memory):
    boot = load_image(b"\x90\xf4", memory, address=0x1000, name="raw")
    assert (boot.mode, boot.entry) == (None, 0x1000)


def test_auto_flat_without_address_says_why_it_is_flat(memory):
    with pytest.raises(LoaderError, match="neither multiboot nor ELF.*loader.address"):
        load_image(b"\x90\xf4", memory, name="raw")


# --- landing inside memory -------------------------------------------------------------------


def test_segment_outside_ram_is_rejected_naming_the_range_and_the_slots(memory):
    image = elf_image(32, 0x10000000, [(0x10000000, 0x10000000, b"\x90" * 16, 0x2000)])
    with pytest.raises(LoaderError) as info:
        load_image(image, memory, format="elf", name="far")
    message = str(info.value)
    assert "PT_LOAD segment 0 0x10000000..0x10001fff" in message
    assert "ram 0x0..0x3fffff" in message


def test_segment_running_past_the_end_of_ram_is_rejected_and_nothing_is_written(memory):
    image = elf_image(32, 0x100000, [
        (0x100000, 0x100000, b"\x11" * 16, 16),
        (0x3FFF00, 0x3FFF00, b"\x22" * 16, 0x1000),
    ])
    with pytest.raises(LoaderError, match=r"0x3fff00..0x400eff .* 0x400000 is in no slot"):
        load_image(image, memory, format="elf", name="long")
    assert memory.read(0x100000, 16) == bytes(16)  # checked before the first byte was placed


def test_segment_may_span_adjacent_slots():
    memory = make_memory(("a", 0, MIB, False), ("b", MIB, MIB, False))
    try:
        image = elf_image(32, MIB - 8, [(MIB - 8, MIB - 8, b"\x90" * 16, 16)])
        load_image(image, memory, format="elf", name="span")
        assert memory.read(MIB - 8, 16) == b"\x90" * 16
    finally:
        memory.close()


def test_overlapping_segments_are_rejected(memory):
    image = elf_image(32, 0x100000, [(0x100000, 0x100000, b"\x90" * 32, 32), (0x100010, 0x100010, b"\x90", 1)])
    with pytest.raises(LoaderError, match="overlaps"):
        load_image(image, memory, format="elf", name="k")


def test_unreadable_kernel_is_a_loader_error(memory, tmp_path):
    with pytest.raises(LoaderError, match="cannot read kernel"):
        load_kernel(spec(tmp_path / "missing.elf"), memory)


def test_non_ascii_command_line_is_rejected(memory):
    with pytest.raises(LoaderError, match="not ASCII"):
        load_kernel(spec(MULTIBOOT_KERNEL, "multiboot", "caf\u00e9"), memory)


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300))
def test_any_printable_command_line_reads_back_from_the_info(cmdline):
    memory = make_memory(("ram", 0, 4 * MIB, False))
    try:
        boot = load_kernel(spec(MULTIBOOT_KERNEL, "multiboot", cmdline), memory)
        info = boot.registers["rbx"]
        assert c_string(memory, info_field(memory, info, "cmdline")) == cmdline
    finally:
        memory.close()


# --- the profiles that boot the C guests -------------------------------------------------------


@pytest.mark.parametrize("name,kernel,cmdline", [
    ("timer-tick", "timer_tick.elf", ""),
    ("serial-echo", "serial_echo.elf", ""),
    ("cmos-clock", "cmos_clock.elf", ""),
    ("multiboot", "multiboot_kernel.elf", "status=7 hello"),
])
def test_c_guest_profiles_load_their_multiboot_kernel(name, kernel, cmdline):
    profile = Profile.load(ROOT / "machines" / f"{name}.yaml")
    assert profile.loader is not None
    assert profile.loader.kernel == C_GUESTS / kernel
    assert (profile.loader.format, profile.loader.cmdline) == ("multiboot", cmdline)
    assert profile.irqchip == "userspace"
    memory = make_memory(*((s.name, s.base, s.size, s.readonly) for s in profile.memory))
    try:
        boot = load_kernel(profile.loader, memory)
        assert boot.mode == "protected"
        assert boot.registers["rax"] == MULTIBOOT_BOOTLOADER_MAGIC
    finally:
        memory.close()


def test_a_kernel_file_larger_than_guest_memory_is_refused_after_a_bounded_read(tmp_path: Path) -> None:
    from vmcore.loader import KERNEL_FILE_SLACK, LoaderError

    huge = tmp_path / "huge.elf"
    with open(huge, "wb") as f:
        f.truncate(1 << 40)  # sparse: a terabyte of zeros that would take the host's memory
    memory = GuestMemory()
    memory.add_slot("ram", 0, 1 << 20)
    try:
        with pytest.raises(LoaderError, match=f"holds more than {(1 << 20) + KERNEL_FILE_SLACK:#x} bytes"):
            load_kernel(spec(huge, "auto"), memory)
        with pytest.raises(LoaderError, match="not a regular file"):
            load_kernel(spec(Path("/dev/zero"), "auto"), memory)
    finally:
        memory.close()
