"""The Linux x86 boot protocol (vmcore/linux_boot.py, loader format linux) and machines/linux.yaml.

Synthetic bzImages check what the loader writes (boot_params, e820, command line, initrd)
and each bad input's one-line profile error; Debian's kernel (scripts/fetch-linux, cached in
.cache/linux) boots to its busybox init on the software CPU.
"""

from __future__ import annotations

import functools
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, PtyReader, kvm_runs_guest_code_slowly, vmcore
from vmcore.linux_boot import BOOT_PARAMS, CMDLINE, E820_RAM, E820_RESERVED, LinuxBootError, e820_map, load_linux
from vmcore.loader import load_image
from vmcore.memory import GuestMemory

MIB = 1 << 20
LINUX = REPO / "machines" / "linux.yaml"


def bzimage(version: int = 0x020F, xloadflags: int = 1, setup_sects: int = 4, kernel: bytes = b"\x90" * 0x400,
            pref_address: int = 0x100_0000, init_size: int = 0x20_0000, cmdline_size: int = 255,
            initrd_addr_max: int = 0x7FFF_FFFF, relocatable: int = 1) -> bytes:
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xAA"
    setup[0x201] = 0x6A  # header length past 0x202
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 0x01
    struct.pack_into("<I", setup, 0x22C, initrd_addr_max)
    struct.pack_into("<I", setup, 0x230, 0x20_0000)
    setup[0x234] = relocatable
    struct.pack_into("<H", setup, 0x236, xloadflags)
    struct.pack_into("<I", setup, 0x238, cmdline_size)
    struct.pack_into("<Q", setup, 0x258, pref_address)
    struct.pack_into("<I", setup, 0x260, init_size)
    return bytes(setup) + kernel


def ram(size: int = 64 * MIB) -> GuestMemory:
    memory = GuestMemory()
    memory.add_slot("ram", 0, size, False)
    return memory


def test_the_kernel_goes_at_its_preferred_address_and_starts_at_its_64_bit_entry() -> None:
    memory = ram()
    boot = load_image(bzimage(kernel=b"\xAB" * 0x400), memory, format="linux", cmdline="console=ttyS0")
    assert (boot.mode, boot.entry, boot.registers) == ("long", 0x100_0200, {"rsi": BOOT_PARAMS})
    assert memory.read(0x100_0000, 0x400) == b"\xAB" * 0x400
    assert "boot protocol 2.15" in boot.description


def test_boot_params_hold_the_header_and_what_a_loader_fills_in() -> None:
    memory = ram()
    image = bzimage()
    initrd = bytes(range(256)) * 16
    load_linux(image, memory, cmdline="console=ttyS0 quiet", initrd=initrd, name="k")
    params = memory.read(BOOT_PARAMS, 0x1000)
    assert params[0x202:0x206] == b"HdrS" and params[0x1F1] == 4  # the setup header, copied
    assert params[0x210] == 0xFF and params[0x211] & 1  # type_of_loader, LOADED_HIGH
    (cmd_line_ptr,) = struct.unpack_from("<I", params, 0x228)
    assert cmd_line_ptr == CMDLINE and memory.read(CMDLINE, 20) == b"console=ttyS0 quiet\0"
    ramdisk, size = struct.unpack_from("<II", params, 0x218)
    assert size == len(initrd) and memory.read(ramdisk, size) == initrd
    assert ramdisk % 4096 == 0 and ramdisk + size <= 64 * MIB and ramdisk >= 0x100_0000 + 0x20_0000
    entries = [struct.unpack_from("<QQI", params, 0x2D0 + 20 * i) for i in range(params[0x1E8])]
    assert entries == [(0, 0x9_FC00, E820_RAM), (0x9_FC00, 0x6_0400, E820_RESERVED),
                       (0x10_0000, 64 * MIB - 0x10_0000, E820_RAM)]


def test_rom_slots_are_reserved_in_e820() -> None:
    memory = ram(16 * MIB)
    memory.add_slot("bios", 0xFFFC_0000, 0x4_0000, True)
    assert e820_map(memory.home_slots())[-1] == (0xFFFC_0000, 0x4_0000, E820_RESERVED)


@pytest.mark.parametrize("image, message", [
    (b"\0" * 0x1000, "not a bzImage"),
    (bzimage(version=0x0209), "boot protocol 2.09 is too old"),
    (bzimage(xloadflags=0), "not a 64-bit kernel"),
])
def test_an_image_vmcore_cannot_boot_is_refused(image: bytes, message: str) -> None:
    with pytest.raises(LinuxBootError, match=message):
        load_linux(image, ram(), cmdline="", initrd=None, name="k")


def test_a_command_line_longer_than_the_kernel_accepts_is_refused() -> None:
    with pytest.raises(LinuxBootError, match="longer than the kernel accepts") as info:
        load_linux(bzimage(cmdline_size=16), ram(), cmdline="x" * 17, initrd=None, name="k")
    assert info.value.key == "loader.cmdline"


def test_a_kernel_or_initrd_that_does_not_fit_in_ram_is_refused() -> None:
    with pytest.raises(LinuxBootError, match="do not hold it there"):
        load_linux(bzimage(init_size=64 * MIB), ram(32 * MIB), cmdline="", initrd=None, name="k")
    with pytest.raises(LinuxBootError, match="does not fit in RAM") as info:
        load_linux(bzimage(), ram(32 * MIB), cmdline="", initrd=b"\0" * (31 * MIB), name="k")
    assert info.value.key == "loader.initrd"


def test_profile_errors_name_the_loader_key(tmp_path: Path) -> None:
    (tmp_path / "k.bin").write_bytes(bzimage(cmdline_size=8))
    (tmp_path / "i.cpio").write_bytes(b"\0" * 4096)

    def run(loader: str) -> str:
        profile = tmp_path / "p.yaml"
        profile.write_text("name: p\ncpu: {mode: long}\nmemory:\n  ram: {base: 0, size: 64M, kind: ram}\n"
                           f"loader: {loader}\n")
        result = vmcore("run", str(profile), "--accel", "tcg")
        assert result.status == 2, result.stderr
        return result.stderr.strip().splitlines()[-1]

    assert "loader.cmdline: k.bin: command line of 9 bytes is longer" in run(
        "{kernel: k.bin, format: linux, cmdline: '123456789'}")
    assert "loader.initrd: initrd nothing.cpio not found" in run("{kernel: k.bin, initrd: nothing.cpio}")
    assert "loader.initrd: only a Linux kernel takes an initrd (format: linux), not format multiboot" in run(
        "{kernel: k.bin, format: multiboot, initrd: i.cpio}")
    (tmp_path / "flat.bin").write_bytes(b"\xF4")
    assert "loader.initrd: flat.bin is not a Linux bzImage" in run("{kernel: flat.bin, initrd: i.cpio}")


# --- Debian's kernel on the software CPU ---------------------------------------------------------

@functools.cache
def linux_files() -> Path:
    """.cache/linux from scripts/fetch-linux (apt-get download; no root needed); skips with its reason."""
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "fetch-linux")], capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        pytest.skip(done.stderr.strip()[-300:] or "scripts/fetch-linux failed")
    return Path(done.stdout.strip())


def test_linux_saved_in_the_middle_of_its_boot_goes_on_from_the_snapshot(tmp_path: Path) -> None:
    """Saved after 20,000 exits (the kernel setting up its APICs and timer), restored into a new
    process: the kernel boots on to its init, runs the command and powers off."""
    linux_files()
    settings = ["--set", "loader.cmdline=console=ttyS0 vmcore.run=cmd:uname,-r"]
    snap = tmp_path / "linux.snap"
    saved = vmcore("run", str(LINUX), "--accel", "tcg", *settings, "--snapshot", str(snap),
                   "--snapshot-after", "20000", timeout=240)
    assert saved.status == 0 and "vmcore: saved the machine after" in saved.stderr, saved.stderr[-2000:]
    assert b"vmcore-linux: init" not in saved.stdout
    restored = vmcore("run", str(LINUX), "--accel", "tcg", *settings, "--restore", str(snap), timeout=240)
    out = restored.stdout.decode(errors="replace")
    assert "vmcore-linux: init" in out and "vmcore-linux: status 0" in out, restored.stderr[-2000:]
    assert restored.status == 0


@pytest.mark.parametrize("apics", [True, False], ids=["lapic", "no-apic"])
def test_debians_kernel_boots_to_its_init_and_runs_a_command_on_the_software_cpu(apics: bool) -> None:
    """With the lapic and ioapic models (found through the loader's MP table: symmetric I/O mode,
    the PIT's interrupt through the I/O APIC's pin 2), and without any APIC."""
    linux_files()
    settings = ["--set", "loader.cmdline=console=ttyS0 vmcore.run=cmd:uname,-r"]
    if not apics:
        settings = ["--set", "devices.apic=null", "--set", "devices.ioapic=null",
                    "--set", "loader.cmdline=console=ttyS0 noapic nolapic vmcore.run=cmd:uname,-r"]
    run = vmcore("run", str(LINUX), "--accel", "tcg", *settings, timeout=240)
    out = run.stdout.decode(errors="replace")
    assert "vmcore-linux: init" in out, run.stderr[-2000:]
    lines = out.splitlines()
    status = lines.index("vmcore-linux: status 0")
    assert lines[status - 1].endswith("-amd64")  # uname -r: Debian's release
    assert run.status == 0
    assert ("IOAPIC[0]: apic_id 1, version 32, address 0xfec00000, GSI 0-23" in out) == apics
    assert ("APIC: Switch to symmetric I/O mode setup" in out) == apics
    assert ("..TIMER: vector=0x30 apic1=0 pin1=2" in out) == apics


def test_a_reboot_through_the_keyboard_controller_ends_the_run_with_a_reset_stop() -> None:
    linux_files()
    run = vmcore("run", str(LINUX), "--accel", "tcg", "--set",
                 "loader.cmdline=console=ttyS0 vmcore.run=reboot", timeout=240)
    assert "vmcore-linux: init" in run.stdout.decode(errors="replace"), run.stderr[-2000:]
    assert run.status == 0
    assert run.stderr.strip().splitlines()[-1].startswith(
        "vmcore: reset: the guest asked for a system reset (command 0xfe pulsed the reset line)")


def test_a_shell_on_the_serial_console_through_a_terminal() -> None:
    """vmcore run linux on a pty: a command typed at busybox's shell answers through the serial
    console; Ctrl-C reaches the guest (it interrupts a sleep, the shell says so); Ctrl-A x leaves."""
    import os
    import pty
    import time

    linux_files()
    pid, fd = pty.fork()
    if pid == 0:  # the child: vmcore with the pty as its terminal
        os.execv(sys.executable, [sys.executable, "-m", "vmcore", "run", str(LINUX), "--accel", "tcg", "--set",
                                  "loader.cmdline=console=ttyS0 quiet vmcore.run=shell"])
    reader = PtyReader(fd)
    seen, wait_for = reader.seen, reader.wait_for

    try:
        assert wait_for(b"vmcore-linux: shell", 200), seen[-2000:]
        assert wait_for(b"# ", 30), seen[-500:]
        os.write(fd, b"echo answer-$((6*7))\r")
        assert wait_for(b"answer-42", 30), seen[-500:]
        start = len(seen)
        os.write(fd, b"sleep 100\r")
        time.sleep(1.0)
        os.write(fd, b"\x03")  # Ctrl-C: the guest's, as on a serial console
        assert wait_for(b"^C", 30), seen[start:]
        os.write(fd, b"echo status-$?\r")
        assert wait_for(b"status-130", 30), seen[start:]  # the sleep died of SIGINT: 128 + 2
        os.write(fd, b"\x01x")  # Ctrl-A x: leave vmcore
        assert reader.wait_exit(pid, 30) == 130, seen[-500:]  # the "interrupted" stop
        assert b"stopped by the user" in seen
    finally:
        reader.close(pid)


def test_terminal_keys_pass_everything_but_the_escape() -> None:
    from vmcore.chardev import TerminalKeys

    left: list[bool] = []
    keys = TerminalKeys(lambda: left.append(True))
    assert keys.filter(b"ls\x03\r") == b"ls\x03\r"  # Ctrl-C is the guest's
    assert keys.filter(b"a\x01\x01b") == b"a\x01b"  # Ctrl-A Ctrl-A: one Ctrl-A
    assert keys.filter(b"\x01") == b"" and not left  # an escape split across reads...
    assert keys.filter(b"q!") == b"!"  # ...then an unknown key: dropped
    assert keys.filter(b"z\x01xdropped") == b"z" and left == [True]  # Ctrl-A x leaves; the rest is not sent


def test_the_same_profile_boots_on_kvm() -> None:
    """On hardware KVM the same profile runs; on a KVM that emulates guest code it skips, probed."""
    if (reason := kvm_runs_guest_code_slowly()) is not None:
        pytest.skip(reason)
    linux_files()
    run = vmcore("run", str(LINUX), "--accel", "kvm", "--set", "loader.cmdline=console=ttyS0 vmcore.run=cmd:uname,-r",
                 timeout=240)
    out = run.stdout.decode(errors="replace")
    assert "vmcore-linux: init" in out and "vmcore-linux: status 0" in out, run.stderr[-2000:]
    assert run.status == 0


def test_the_mp_table_is_what_the_spec_asks() -> None:
    from vmcore.mptable import MP_BASE, mp_table

    table = mp_table(lapic_id=0, ioapic_id=1, ioapic_base=0xFEC0_0000)
    pointer, config = table[:16], table[16:]
    assert pointer[:4] == b"_MP_" and sum(pointer) % 256 == 0
    assert struct.unpack_from("<I", pointer, 4)[0] == MP_BASE + 16 and pointer[8:10] == b"\x01\x04"
    length, count = struct.unpack_from("<H", config, 4)[0], struct.unpack_from("<H", config, 34)[0]
    assert config[:4] == b"PCMP" and length == len(config) and sum(config) % 256 == 0
    assert struct.unpack_from("<I", config, 36)[0] == 0xFEE0_0000
    entries, at = [], 44
    for _ in range(count):
        kind = config[at]
        size = 20 if kind == 0 else 8
        entries.append(config[at:at + size])
        at += size
    assert at == length
    assert [e[0] for e in entries[:3]] == [0, 1, 2]  # processor, bus, I/O APIC
    assert entries[0][3] == 0x3 and entries[1][2:8] == b"ISA   " and entries[2][1] == 1
    routes = {e[5]: e[7] for e in entries if e[0] == 3}  # ISA IRQ -> I/O APIC pin
    assert routes[0] == 2 and all(routes[irq] == irq for irq in routes if irq) and 2 not in routes
    assert [(e[1], e[7]) for e in entries if e[0] == 4] == [(3, 0), (1, 1)]  # LINT0 ExtINT, LINT1 NMI


# --- Linux's own virtio drivers on vmcore's virtio-mmio devices -----------------------------------

LINUX_VIRTIO = REPO / "machines" / "linux-virtio.yaml"


def test_linux_drivers_use_the_virtio_disk_console_and_entropy_devices(tmp_path: Path) -> None:
    """Debian's kernel finds the three devices through the ACPI tables (DSDT LNRO0005), loads
    virtio_mmio, virtio_blk, virtio_console and virtio-rng from the initramfs, then /init reads the
    disk's first sector, writes its second, reads 64 bytes from /dev/hwrng and writes to /dev/hvc0."""
    cache = linux_files()
    disk = tmp_path / "disk.img"
    disk.write_bytes((cache / "virtio-disk.img").read_bytes())
    hvc = tmp_path / "hvc0.txt"
    run = vmcore("run", str(LINUX_VIRTIO), "--accel", "tcg", "--set", f"devices.disk.image={disk}",
                 "--set", "devices.hvc.backend=file", "--set", f"devices.hvc.path={hvc}", timeout=240)
    out = run.stdout.decode(errors="replace")
    assert "vmcore-virtio: done" in out, (out[-3000:], run.stderr[-2000:])
    assert "vmcore-virtio: disk says vmcore virtio-blk: a known first sector" in out
    assert "virtio_blk virtio0: [vda] 2048 512-byte logical blocks" in out
    entropy = next(line for line in out.splitlines() if line.startswith("vmcore-virtio: hwrng ")).split()[-1]
    assert len(entropy) == 128 and len(set(entropy)) > 4  # 64 bytes, not a constant
    assert disk.read_bytes()[512:1024].startswith(b"written by linux through virtio-blk\n")  # in the host image
    assert hvc.read_bytes() == b"hello from hvc0\r\n"  # the tty turns \n into \r\n (ONLCR)
    assert "virtio_mmio.device=" not in out  # found through ACPI only: not twice
    assert run.status == 0  # poweroff -f: ACPI S5 through the acpi-pm device


def test_without_acpi_the_loader_puts_virtio_devices_on_the_command_line(tmp_path: Path) -> None:
    """Kernels built with VIRTIO_MMIO_CMDLINE_DEVICES (Firecracker's, for one) find them there."""
    from vmcore.machine import Machine
    from vmcore.profile import Profile

    cache = linux_files()
    profile = Profile.load(LINUX_VIRTIO, ("devices.pm=null", f"devices.disk.image={cache / 'virtio-disk.img'}",
                                          "devices.disk.readonly=true", "devices.hvc.backend=memory"))
    with Machine.build(profile) as machine:
        low = machine.memory.read(0, 0x10_0000)
        assert b"virtio_mmio.device=0x200@0xd0000000:5 virtio_mmio.device=0x200@0xd0001000:6 " \
               b"virtio_mmio.device=0x200@0xd0002000:7" in low
        assert b"RSD PTR " not in low[0xE0000:]  # and no ACPI tables
