"""devices/fw_cfg.py: QEMU's fw_cfg I/O interface and DMA (docs/specs/fw_cfg.rst) on the fake bus."""

import logging
import os
import struct
import tracemalloc
from pathlib import Path

import pytest

from vmcore_devices.fw_cfg import LOGGED_BAD_DMA
from vmcore.device import PropertyError
from vmcore.machine import Machine
from vmcore.profile import Profile, ProfileError

SELECTOR, DATA, DMA_HIGH, DMA_LOW = 0x510, 0x511, 0x514, 0x518

FW_CFG_SIGNATURE = 0x0000
FW_CFG_ID = 0x0001
FW_CFG_RAM_SIZE = 0x0003
FW_CFG_NB_CPUS = 0x0005
FW_CFG_MAX_CPUS = 0x000F
FW_CFG_FILE_DIR = 0x0019

CTL_ERROR, CTL_READ, CTL_SKIP, CTL_SELECT, CTL_WRITE = 0x01, 0x02, 0x04, 0x08, 0x10

DESCRIPTOR = 0x1000  # where the tests put FWCfgDmaAccess in fake RAM
BUFFER = 0x2000


def select(bus, key):
    bus.outw(SELECTOR, key)


def read(bus, count):
    return bytes(bus.inb(DATA) for _ in range(count))


def item(bus, key, count):
    select(bus, key)
    return read(bus, count)


def directory(bus):
    """Parse FW_CFG_FILE_DIR as firmware does: {name: (key, size)}, and the names in order."""
    select(bus, FW_CFG_FILE_DIR)
    (count,) = struct.unpack(">I", read(bus, 4))
    assert count < 100, f"implausible file count {count:#x}"
    entries = []
    for _ in range(count):
        size, key, reserved, name = struct.unpack(">IHH56s", read(bus, 64))
        assert reserved == 0
        entries.append((name.split(b"\0", 1)[0].decode(), key, size))
    return entries


def be32_out(value):
    """The value a little-endian CPU stores to put ``value`` big-endian on the four ports."""
    return int.from_bytes(value.to_bytes(4, "big"), "little")


def dma(bus, memory, control, length, address, descriptor=DESCRIPTOR):
    memory.write(descriptor, struct.pack(">IIQ", control, length, address))
    bus.outl(DMA_HIGH, be32_out(descriptor >> 32))
    bus.outl(DMA_LOW, be32_out(descriptor & 0xFFFFFFFF))
    return struct.unpack(">I", memory.read(descriptor, 4))[0]


def test_signature_item_reads_qemu_byte_by_byte(fake_bus):
    fake_bus.attach("fw-cfg")
    select(fake_bus, FW_CFG_SIGNATURE)
    assert [fake_bus.inb(DATA) for _ in range(4)] == [ord("Q"), ord("E"), ord("M"), ord("U")]


def test_signature_is_selected_after_power_on(fake_bus):
    fake_bus.attach("fw-cfg")
    assert read(fake_bus, 4) == b"QEMU"


def test_feature_bitmap_reports_traditional_and_dma_interfaces(fake_bus):
    fake_bus.attach("fw-cfg")
    assert item(fake_bus, FW_CFG_ID, 4) == (0b11).to_bytes(4, "little")


def test_without_dma_only_the_traditional_bit_is_set_and_0x514_is_free(fake_bus):
    fake_bus.attach("fw-cfg", dma=False)
    assert item(fake_bus, FW_CFG_ID, 4) == (0b01).to_bytes(4, "little")
    assert fake_bus.pio.find(DMA_HIGH) is None


def test_dma_register_reads_the_qemu_cfg_signature(fake_bus):
    fake_bus.attach("fw-cfg")
    assert bytes(fake_bus.inb(DMA_HIGH + i) for i in range(8)) == b"QEMU CFG"
    assert fake_bus.inl(DMA_HIGH) == int.from_bytes(b"QEMU", "little")


def test_ram_size_is_the_writable_memory_of_the_machine(fake_bus, fake_memory):
    fake_memory.add_slot("bios", 0xFFFF0000, 0x10000, readonly=True)  # ROM does not count
    fake_bus.attach("fw-cfg")
    assert int.from_bytes(item(fake_bus, FW_CFG_RAM_SIZE, 8), "little") == 1 << 20


def test_ram_size_property_overrides_the_memory_slots(fake_bus):
    fake_bus.attach("fw-cfg", ram_size="2G")
    assert int.from_bytes(item(fake_bus, FW_CFG_RAM_SIZE, 8), "little") == 2 << 30


def test_cpu_counts_are_16_bit_little_endian_and_max_defaults_to_cpus(fake_bus):
    fake_bus.attach("fw-cfg", cpus=3)
    assert item(fake_bus, FW_CFG_NB_CPUS, 2) == b"\x03\x00"
    assert item(fake_bus, FW_CFG_MAX_CPUS, 2) == b"\x03\x00"


def test_max_cpus_below_cpus_is_rejected(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("fw-cfg", cpus=4, max_cpus=2)
    assert info.value.key == "max_cpus"


def test_file_directory_lists_files_sorted_by_name_with_keys_from_0x20(fake_bus, tmp_path):
    (tmp_path / "data.bin").write_bytes(b"\x01\x02\x03")
    fake_bus.attach("fw-cfg", files={"opt/zeta": str(tmp_path / "data.bin")},
                    strings={"opt/alpha": "hi", "etc/boot-fail-wait": "u32:5"})
    assert directory(fake_bus) == [
        ("etc/boot-fail-wait", 0x20, 4),
        ("opt/alpha", 0x21, 2),
        ("opt/zeta", 0x22, 3),
    ]


def test_directory_entries_are_64_bytes_with_nul_padded_names(fake_bus):
    fake_bus.attach("fw-cfg", strings={"opt/x": "y"})
    select(fake_bus, FW_CFG_FILE_DIR)
    raw = read(fake_bus, 4 + 64)
    assert raw[:4] == b"\x00\x00\x00\x01"
    assert raw[4:12] == b"\x00\x00\x00\x01\x00\x20\x00\x00"
    assert raw[12:] == b"opt/x".ljust(56, b"\0")


def test_selecting_a_file_key_reads_its_bytes(fake_bus, tmp_path):
    (tmp_path / "data.bin").write_bytes(b"hello, firmware")
    fake_bus.attach("fw-cfg", files={"opt/hello": str(tmp_path / "data.bin")})
    [(_, key, size)] = directory(fake_bus)
    assert item(fake_bus, key, size) == b"hello, firmware"


def test_relative_file_path_resolves_against_the_current_directory(fake_bus, tmp_path, monkeypatch):
    (tmp_path / "data.bin").write_bytes(b"rel")
    monkeypatch.chdir(tmp_path)
    fake_bus.attach("fw-cfg", files={"opt/hello": "data.bin"})
    assert item(fake_bus, 0x20, 3) == b"rel"


def test_a_relative_file_path_in_a_profile_resolves_against_the_profiles_folder(tmp_path, monkeypatch):
    folder = tmp_path / "machine"
    folder.mkdir()
    (folder / "data.bin").write_bytes(b"rel")
    profile = folder / "fw.yaml"
    profile.write_text("memory:\n  ram: {size: 4K}\ndevices:\n  fw: {type: fw-cfg, files: {opt/hello: data.bin}}\n")
    monkeypatch.chdir(tmp_path)  # not the profile's folder
    with Machine.build(Profile.load(profile)) as machine:
        [host_file] = machine.devices["fw"].host_files()
        assert host_file.path == str(folder / "data.bin")


def test_selecting_again_restarts_at_offset_zero(fake_bus):
    fake_bus.attach("fw-cfg")
    select(fake_bus, FW_CFG_SIGNATURE)
    read(fake_bus, 2)
    assert item(fake_bus, FW_CFG_SIGNATURE, 4) == b"QEMU"


def test_reads_past_the_end_of_an_item_return_zero(fake_bus):
    fake_bus.attach("fw-cfg", strings={"opt/a": "ab"})
    assert item(fake_bus, 0x20, 5) == b"ab\0\0\0"


def test_unknown_and_arch_local_keys_read_zero(fake_bus):
    fake_bus.attach("fw-cfg")
    assert item(fake_bus, 0x0100, 4) == b"\0\0\0\0"
    assert item(fake_bus, 0x8000 | FW_CFG_SIGNATURE, 4) == b"\0\0\0\0"


def test_data_port_and_byte_selector_writes_are_ignored(fake_bus):
    fake_bus.attach("fw-cfg")
    select(fake_bus, FW_CFG_SIGNATURE)
    fake_bus.outb(DATA, 0x55)
    fake_bus.outb(SELECTOR, FW_CFG_ID)
    assert read(fake_bus, 4) == b"QEMU"


def test_string_with_u16_prefix_is_a_little_endian_integer(fake_bus):
    fake_bus.attach("fw-cfg", strings={"etc/sercon-port": "u16:0x3f8"})
    assert item(fake_bus, 0x20, 2) == b"\xf8\x03"
    assert directory(fake_bus) == [("etc/sercon-port", 0x20, 2)]


@pytest.mark.parametrize(
    ("text", "content"),
    [("u8:7", b"\x07"), ("u32:0x12345678", b"\x78\x56\x34\x12"), ("u64:1", b"\x01" + b"\0" * 7),
     ("plain text", b"plain text"), ("str:u16:1", b"u16:1")],
)
def test_string_values_give_integers_or_text_without_a_nul(fake_bus, text, content):
    fake_bus.attach("fw-cfg", strings={"opt/v": text})
    assert item(fake_bus, 0x20, len(content) + 1) == content + b"\0"  # the 0 is past the end
    assert directory(fake_bus)[0][2] == len(content)


def test_integer_that_does_not_fit_its_width_is_rejected(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("fw-cfg", strings={"etc/sercon-port": "u16:0x10000"})
    assert info.value.key == "strings"
    assert "etc/sercon-port" in info.value.message


def test_add_file_puts_it_in_the_directory_in_name_order(fake_bus):
    fw = fake_bus.attach("fw-cfg", strings={"opt/b": "bee"})
    assert fw.add_file("opt/a", b"ay") == 0x20
    assert directory(fake_bus) == [("opt/a", 0x20, 2), ("opt/b", 0x21, 3)]
    assert item(fake_bus, 0x21, 3) == b"bee"


def test_add_file_refuses_a_taken_or_too_long_name(fake_bus):
    fw = fake_bus.attach("fw-cfg", strings={"opt/b": "bee"})
    with pytest.raises(ValueError, match="already exists"):
        fw.add_file("opt/b", b"")
    with pytest.raises(ValueError, match="at most 55"):
        fw.add_file("opt/" + "x" * 52, b"")


def test_dma_read_of_a_file_into_guest_memory_completes_with_control_0(fake_bus, fake_memory):
    fake_bus.attach("fw-cfg", strings={"opt/hello": "Hello from fw_cfg"})
    control = dma(fake_bus, fake_memory, (0x20 << 16) | CTL_SELECT | CTL_READ, 17, BUFFER)
    assert control == 0
    assert fake_memory.read(BUFFER, 17) == b"Hello from fw_cfg"


def test_dma_read_continues_from_the_data_offset_and_pads_with_zeros(fake_bus, fake_memory):
    fake_bus.attach("fw-cfg")
    fake_memory.write(BUFFER, b"\xff" * 8)
    assert dma(fake_bus, fake_memory, (FW_CFG_SIGNATURE << 16) | CTL_SELECT | CTL_SKIP, 1, 0) == 0
    assert dma(fake_bus, fake_memory, CTL_READ, 6, BUFFER) == 0
    assert fake_memory.read(BUFFER, 8) == b"EMU\0\0\0\xff\xff"


def test_dma_with_one_64_bit_write_of_the_address(fake_bus, fake_memory):
    fake_bus.attach("fw-cfg")
    fake_memory.write(DESCRIPTOR, struct.pack(">IIQ", CTL_SELECT | CTL_READ, 4, BUFFER))
    fake_bus.io_write(DMA_HIGH, 8, int.from_bytes(DESCRIPTOR.to_bytes(8, "big"), "little"))
    assert fake_memory.read(BUFFER, 4) == b"QEMU"
    assert fake_memory.read(DESCRIPTOR, 4) == b"\0\0\0\0"


def test_dma_starts_on_the_low_half_write_not_the_high_half(fake_bus, fake_memory):
    fake_bus.attach("fw-cfg")
    fake_memory.write(0, struct.pack(">IIQ", CTL_SELECT | CTL_READ, 4, BUFFER))  # descriptor at 0
    fake_bus.outl(DMA_HIGH, 0)
    assert fake_memory.read(0, 4) == struct.pack(">I", CTL_SELECT | CTL_READ)  # not run yet
    fake_bus.outl(DMA_LOW, 0)
    assert fake_memory.read(0, 4) == b"\0\0\0\0"
    assert fake_memory.read(BUFFER, 4) == b"QEMU"


def test_dma_descriptor_above_4g_through_two_32_bit_writes(fake_bus, fake_memory):
    fake_memory.add_slot("high", 0x1_0000_0000, 0x1000)
    fake_bus.attach("fw-cfg")
    assert dma(fake_bus, fake_memory, CTL_SELECT | CTL_READ, 4, BUFFER, descriptor=0x1_0000_0010) == 0
    assert fake_memory.read(BUFFER, 4) == b"QEMU"


def test_dma_to_an_address_outside_memory_sets_the_error_bit(fake_bus, fake_memory):
    fake_bus.attach("fw-cfg")
    control = dma(fake_bus, fake_memory, CTL_SELECT | CTL_READ, 4, 0x1_0000_0000)
    assert control == CTL_ERROR


def test_dma_straddling_the_end_of_memory_writes_nothing_and_sets_the_error_bit(fake_bus, fake_memory):
    fake_bus.attach("fw-cfg")
    end = (1 << 20) - 2
    control = dma(fake_bus, fake_memory, CTL_SELECT | CTL_READ, 4, end)
    assert control == CTL_ERROR
    assert fake_memory.read(end, 2) == b"\0\0"


def test_dma_write_to_a_read_only_item_sets_the_error_bit_and_changes_nothing(fake_bus, fake_memory):
    fake_bus.attach("fw-cfg", strings={"opt/a": "abcd"})
    fake_memory.write(BUFFER, b"WXYZ")
    assert dma(fake_bus, fake_memory, (0x20 << 16) | CTL_SELECT | CTL_WRITE, 4, BUFFER) == CTL_ERROR
    assert item(fake_bus, 0x20, 4) == b"abcd"


def test_dma_descriptor_outside_memory_is_dropped_without_raising(fake_bus):
    fake_bus.attach("fw-cfg")
    fake_bus.outl(DMA_LOW, be32_out(0x8000_0000))
    assert fake_bus.exit_status is None
    assert item(fake_bus, FW_CFG_SIGNATURE, 4) == b"QEMU"


def test_unknown_property_is_rejected_naming_it(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("fw-cfg", file={"opt/a": "x"})
    assert info.value.key == "file"
    assert "did you mean 'files'" in info.value.message


def test_missing_file_is_rejected_naming_the_files_property(fake_bus, tmp_path):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("fw-cfg", files={"opt/a": str(tmp_path / "missing.bin")})
    assert info.value.key == "files"
    assert "opt/a" in info.value.message and "missing.bin" in info.value.message


def test_files_must_be_a_mapping_of_names_to_paths(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("fw-cfg", files="data.bin")
    assert info.value.key == "files"


def test_name_longer_than_55_bytes_is_rejected(fake_bus):
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("fw-cfg", strings={"opt/" + "n" * 52: "x"})
    assert info.value.key == "strings"


def test_name_in_both_files_and_strings_is_rejected(fake_bus, tmp_path):
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(PropertyError) as info:
        fake_bus.attach("fw-cfg", files={"opt/a": str(tmp_path / "f")}, strings={"opt/a": "x"})
    assert info.value.key == "strings"


# --- bounded under a hostile guest or host ------------------------------------------------------


def test_200k_bad_dma_descriptors_log_a_few_then_counts_and_a_total_at_close(fake_bus, caplog):
    fw = fake_bus.attach("fw-cfg")
    with caplog.at_level(logging.WARNING):
        for _ in range(200_000):
            fake_bus.outl(DMA_LOW, be32_out(0x8000_0000))  # outside the 1 MiB of RAM
        fw.close()
    assert fw.bad_dma == 200_000
    lines = [record.getMessage() for record in caplog.records]
    assert sum("0x80000000 is not in guest memory" in line for line in lines) == LOGGED_BAD_DMA
    assert [line for line in lines if "so far" in line] == [
        f"fw_cfg: {10 ** k} bad DMA descriptors so far" for k in range(1, 6)]
    assert lines[-1] == f"fw_cfg: 200000 bad DMA descriptors in all; the first {LOGGED_BAD_DMA} were logged"
    assert len(lines) <= LOGGED_BAD_DMA + 1 + 5 + 1


def test_a_dma_status_that_cannot_be_written_counts_as_a_bad_descriptor(fake_bus, fake_memory):
    fake_memory.add_slot("rom", 0x20_0000, 0x1000, readonly=True)
    fw = fake_bus.attach("fw-cfg")
    fake_bus.outl(DMA_LOW, be32_out(0x20_0000))  # readable (all zeros: no operation), status not writable
    assert fw.bad_dma == 1


def sparse_file(path, size, marks):
    """A file of ``size`` bytes that takes no disk space but the ``marks`` ({offset: bytes})."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in marks.items():
            f.seek(offset)
            f.write(data)
    return str(path)


def test_a_large_file_is_served_in_pieces_without_being_held_in_memory(fake_bus, fake_memory, tmp_path):
    size = 200 << 20
    marks = {0: b"head", 150 << 20: b"middle" * 20_000, size - 4: b"tail"}  # the middle spans DMA pieces
    path = sparse_file(tmp_path / "big.bin", size, marks)
    tracemalloc.start()
    try:
        fake_bus.attach("fw-cfg", files={"opt/big": path})
        assert directory(fake_bus) == [("opt/big", 0x20, size)]
        assert item(fake_bus, 0x20, 4) == b"head"
        assert dma(fake_bus, fake_memory, (0x20 << 16) | CTL_SELECT | CTL_SKIP, 150 << 20, 0) == 0
        assert dma(fake_bus, fake_memory, CTL_READ, 120_000, BUFFER) == 0
        assert fake_memory.read(BUFFER, 120_000) == marks[150 << 20]
        assert dma(fake_bus, fake_memory, CTL_SKIP, size - 4 - (150 << 20) - 120_000, 0) == 0
        assert read(fake_bus, 6) == b"tail\0\0"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 << 20


def test_a_file_shrunk_after_the_build_reads_zeros_for_what_is_gone(fake_bus, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"abcdef")
    fake_bus.attach("fw-cfg", files={"opt/data": str(path)})
    path.write_bytes(b"ab")  # truncated in place: the directory still says 6
    assert item(fake_bus, 0x20, 7) == b"ab\0\0\0\0\0"


def test_a_file_over_max_file_size_is_refused_naming_the_file_and_the_cap(fake_bus, tmp_path):
    path = sparse_file(tmp_path / "big.bin", 1025, {})
    with pytest.raises(ValueError) as info:
        fake_bus.attach("fw-cfg", files={"opt/big": path}, max_file_size="1K")
    assert str(info.value) == (f"fw_cfg file 'opt/big': {path} is 1025 bytes, over the cap of 1024 bytes; "
                               "raise max_file_size to serve it")


def test_a_file_over_the_default_cap_is_a_one_line_profile_error(tmp_path):
    path = sparse_file(tmp_path / "big.bin", (256 << 20) + 1, {})
    profile = tmp_path / "fw.yaml"
    profile.write_text("name: fw\nmemory: {ram: {size: 64K}}\ndevices:\n"
                       f"  fw: {{type: fw-cfg, files: {{opt/big: {path}}}}}\n")
    with pytest.raises(ProfileError) as info:
        Machine.build(Profile.load(profile))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{profile}:4: devices.fw: ")
    assert message.endswith(f"{path} is 256.0 MiB ({(256 << 20) + 1} bytes), over the cap of 256 MiB; "
                            "raise max_file_size to serve it")


def open_paths():
    """The host files this process has open."""
    fds = Path("/proc/self/fd")
    return {os.path.realpath(fds / fd) for fd in os.listdir(fds)}


def test_building_only_stats_the_files_and_starting_opens_them(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"abc")
    profile = tmp_path / "fw.yaml"
    profile.write_text(f"name: fw\nmemory: {{ram: {{size: 64K}}}}\ndevices:\n  fw: {{type: fw-cfg, files: {{opt/d: {data}}}}}\n")
    with Machine.build(Profile.load(profile)) as machine:  # all that `vmcore check` does
        assert str(data) not in open_paths()
        machine.devices["fw"].start()
        assert str(data) in open_paths()
    assert str(data) not in open_paths()


def test_an_output_naming_a_fw_cfg_file_is_refused_as_one_of_the_machine_inputs(tmp_path):
    data = tmp_path / "data.bin"
    data.write_bytes(b"keep me")
    profile = tmp_path / "fw.yaml"
    profile.write_text("name: fw\nmemory: {ram: {size: 64K}}\ndevices:\n"
                       f"  fw: {{type: fw-cfg, files: {{opt/d: {data}}}}}\n"
                       f"  console: {{type: debugcon, backend: file, path: {data}}}\n")
    with pytest.raises(ProfileError, match="an input of this machine"):
        Machine.build(Profile.load(profile))
    assert data.read_bytes() == b"keep me"
