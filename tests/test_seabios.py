"""machines/pc-bios.yaml: Debian's SeaBIOS boots on vmcore's devices and starts guest/bootsector.S.

Each run is the CLI as a user types it (``vmcore run machines/pc-bios.yaml``), on
each accelerator. The screen is SeaBIOS's serial console on COM1 (stdout); its debug
log goes to port 0x402 (stderr). Skipped only where the seabios package is absent
(``.ci/run`` installs it) or, for KVM, where /dev/kvm cannot be used.

A run that outlives its own --timeout is killed by the harness and fails with
what it printed, so a regression shows as a failure, never as a stuck suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import skip_without_kvm

ROOT = Path(__file__).resolve().parent.parent
PROFILE = ROOT / "machines" / "pc-bios.yaml"
FIRMWARE = Path("/usr/share/seabios/bios.bin")

needs_seabios = pytest.mark.skipif(not FIRMWARE.is_file(),
                                   reason=f"{FIRMWARE} is absent: sudo apt-get install seabios")

ACCELERATORS = [pytest.param("tcg"), pytest.param("kvm", marks=pytest.mark.kvm)]


def vmcore(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """The CLI; a run that outlives ``timeout`` (its own --timeout not honoured) is killed, status -9."""
    command = [sys.executable, "-m", "vmcore", *args]
    try:
        return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired as exc:
        def text(data: bytes | str | None) -> str:
            return data.decode(errors="replace") if isinstance(data, bytes) else data or ""

        return subprocess.CompletedProcess(command, -9, text(exc.stdout), text(exc.stderr) + "\n(killed: hung)")


@pytest.fixture(scope="module", params=ACCELERATORS)
def boot(request: pytest.FixtureRequest) -> subprocess.CompletedProcess[str]:
    if not FIRMWARE.is_file():
        pytest.skip(f"{FIRMWARE} is absent: sudo apt-get install seabios")
    if request.param == "kvm":
        skip_without_kvm()
    if request.param == "tcg":
        return vmcore("run", str(PROFILE), "--accel", "tcg", "--timeout", "30", timeout=90)
    return vmcore("run", str(PROFILE), "--accel", "kvm", "--timeout", "60")


def screen(text: str) -> str:
    """The serial console without its terminal control sequences."""
    return re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|c)", "", text).replace("\r", "")


def test_seabios_boots_the_boot_sector_and_its_status_is_the_process_status(boot):
    out = screen(boot.stdout)
    assert boot.returncode == 85, boot.stderr[-3000:]
    # SeaBIOS's banner and boot message on its serial console, then the boot sector's lines:
    # one printed through int 10h, the other read from sector 2 through int 13h.
    lines = [line for line in out.splitlines() if line.strip()]
    assert lines[0].startswith("SeaBIOS (version 1.16"), out
    assert lines[1:] == ["Booting from Hard Disk...", "vmcore boot sector: hello from int 10h",
                         "sector 2 says: read through int 13h"], out


def test_seabios_debug_log_shows_the_machine_it_found(boot):
    log = boot.stderr
    # fw_cfg with DMA, the RAM size from CMOS, the three PCI functions, the console and the disk.
    for expected in ("Found QEMU fw_cfg", "QEMU fw_cfg DMA interface supported",
                     "RamSize: 0x01fa0000 [cmos]", "PCI: init bdf=00:00.0 id=8086:1237",
                     "PCI: init bdf=00:01.0 id=8086:7000", "PCI: init bdf=00:01.1 id=8086:7010",
                     "sercon: using ioport 0x3f8", "Booting from Hard Disk...",
                     "Booting from 0000:7c00"):
        assert expected in log, expected


def need(accel: str) -> None:
    if accel == "kvm":
        skip_without_kvm()


@needs_seabios
@pytest.mark.parametrize("accel", ACCELERATORS)
def test_trace_shows_pci_enumeration_and_pam_writes_with_device_names(tmp_path: Path, accel: str):
    need(accel)
    trace = tmp_path / "trace.txt"
    result = vmcore("run", str(PROFILE), "--accel", accel, "--trace-file", str(trace), "--timeout", "60")
    assert result.returncode == 85, result.stderr[-3000:]
    text = trace.read_text()
    # SeaBIOS probes every slot's vendor ID; absent ones master-abort (all ones, unclaimed).
    assert re.search(r"^pci  read  00:00\.0\+0x00/2 <- 0x8086 i440fx$", text, re.M)
    assert re.search(r"^pci  read  00:01\.0\+0x00/2 <- 0x8086 isa$", text, re.M)
    assert re.search(r"^pci  read  00:01\.1\+0x00/2 <- 0x8086 ide$", text, re.M)
    assert re.search(r"^pci  read  00:1f\.0\+0x00/2 <- 0xffff \(unclaimed\)$", text, re.M)
    # make_bios_writable: PAM0-PAM6 opened for read and write, then read-only at the end of POST.
    assert re.search(r"^pci  write 00:00\.0\+0x58/4 -> 0x33333000 i440fx$", text, re.M)
    assert re.search(r"^pci  write 00:00\.0\+0x5c/4 -> 0x33333333 i440fx$", text, re.M)
    assert re.search(r"^pci  write 00:00\.0\+0x5[89a-f]/\d -> 0x[0-9a-f]*1[0-9a-f]* i440fx$", text, re.M)
    # The port side of the same accesses names the host bridge's ports.
    assert re.search(r"^pio  write 0x00000cf8/4 -> 0x80000058 i440fx$", text, re.M)


@needs_seabios
@pytest.mark.parametrize("accel", ACCELERATORS)
def test_unclaimed_log_lists_what_seabios_probed_that_vmcore_does_not_model(accel: str):
    need(accel)
    result = vmcore("run", str(PROFILE), "--accel", accel, "--timeout", "60")
    assert result.returncode == 85, result.stderr[-3000:]
    unclaimed = set(re.findall(r"vmcore: unclaimed (pio|mmio) (?:read|write) at (0x[0-9a-f]+)", result.stderr))
    # Parallel ports (lpt_setup probes 0x378 and 0x278) and the secondary DMA controller
    # are not modelled; SeaBIOS's probes of them are logged, once per address.
    assert ("pio", "0x378") in unclaimed
    assert ("pio", "0x278") in unclaimed
    # CPUID shows no local APIC (none is modelled), so SeaBIOS does not drive one: it only
    # reads the version register for its MP table.
    assert "unclaimed mmio write at 0xfee" not in result.stderr
    for line in result.stderr.splitlines():
        if line.startswith("vmcore: unclaimed"):
            assert result.stderr.count(line + "\n") == 1, line


@needs_seabios
def test_missing_firmware_names_the_path_and_the_package(tmp_path: Path):
    profile = tmp_path / "pc.yaml"
    profile.write_text(f"extends: {PROFILE}\nmemory:\n  bios: {{image: /nonexistent/seabios/bios.bin}}\n")
    result = vmcore("check", str(profile))
    assert result.returncode == 2
    assert "image file /nonexistent/seabios/bios.bin not found" in result.stderr
    assert "sudo apt-get install seabios" in result.stderr


def test_profile_checks_without_running(tmp_path: Path):
    if not FIRMWARE.is_file():
        result = vmcore("check", str(PROFILE))
        assert result.returncode == 2 and "apt-get install seabios" in result.stderr
        return
    result = vmcore("check", str(PROFILE))
    assert result.returncode == 0, result.stderr
    assert os.path.getsize(FIRMWARE) == 128 * 1024
