"""The stuck-guest detector (vmcore.stuck): a guest polling a status bit nobody sets is named, once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, in_process
from tests.tiny_guests import TinyGuest, profile_for
from vmcore.clock import ManualClock
from vmcore.memory import GuestMemory
from vmcore.stuck import PollWatch, _loop_test, describe

KBD_POLL = TinyGuest("kbd_poll", code=bytes([
    0xE4, 0x64,              # 0: in al, 0x64       the i8042's status
    0xA8, 0x01,              #    test al, 1        output buffer full?
    0x74, 0xFA,              #    jz 0              no key ever comes
    0xF4,                    #    hlt
]))

MMIO_POLL = TinyGuest("mmio_poll", code=bytes([
    0xA0, 0x03, 0x20,        # 0: mov al, [0x2003]  the scratch device's byte 3
    0xA8, 0x20,              #    test al, 0x20
    0x74, 0xF9,              #    jz 0              nobody sets bit 5
    0xF4,                    #    hlt
]))


def _run(guest: TinyGuest, folder: Path, accel: str, devices: str, *overrides: str) -> dict:  # type: ignore[type-arg]
    """The guest polls until the 3 s timeout: past the detector's default 2 s of machine time."""
    profile = profile_for(guest, folder, devices)
    text = profile.read_text().replace("limits: {timeout: 20}", "limits: {timeout: 3}")
    profile.write_text(text)
    return in_process(profile, *overrides, accel=accel, timeout=None)


def stuck_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "the guest seems stuck" in line]


def test_a_guest_polling_the_keyboard_status_for_a_key_is_named_with_the_bit_it_waits_for(
        accel: str, tmp_path: Path) -> None:
    result = _run(KBD_POLL, tmp_path, accel, "  kbd: {type: i8042}\n")
    assert result["kind"] == "timeout"
    [line] = stuck_lines(result["stderr"])  # said once
    assert "reading pio 0x64 (kbd status-command) and gets 0x10" in line
    assert "its loop at 0x0 (test al, 1; je) waits for bit 0 (0x1) to be set; 0x10 has it clear" in line


def test_a_guest_polling_an_mmio_register_is_named_too(accel: str, tmp_path: Path) -> None:
    result = _run(MMIO_POLL, tmp_path, accel, "  regs: {type: scratch, base: 0x2000}\n")
    [line] = stuck_lines(result["stderr"])
    assert "reading mmio 0x2003 (regs regs+0x3) and gets 0x00" in line
    assert "waits for bit 5 (0x20) to be set; 0x0 has it clear" in line


PM_POLL = TinyGuest("pm_poll", code=bytes([
    0xBA, 0x00, 0x06,        # 0: mov dx, 0x600      acpi-pm's PM1 status
    0xED,                    # 3: in ax, dx
    0xA9, 0x00, 0x01,        #    test ax, 0x100     the power button's status bit
    0x74, 0xFA,              #    jz 3               nobody presses it
    0xF4,                    #    hlt
]))


def test_a_register_map_names_the_register(accel: str, tmp_path: Path) -> None:
    result = _run(PM_POLL, tmp_path, accel, "  pm: {type: acpi-pm}\n")
    [line] = stuck_lines(result["stderr"])
    assert "reading pio 0x600 (pm PM1_STS) and gets 0x0000" in line
    assert "its loop at 0x3 (test ax, 0x100; je) waits for bit 8 (0x100) to be set" in line


def _loop(code: bytes, value: int) -> str | None:
    memory = GuestMemory()
    memory.add_slot("ram", 0, 0x1000)
    try:
        memory.write(0x100, code)
        return _loop_test(memory, 0x100, 0x100, 16, value)
    finally:
        memory.close()


@pytest.mark.parametrize(("code", "value", "says"), [
    # in al, dx; and al, 0x80; jnz back: waits for the busy bit to clear
    (bytes([0xEC, 0x24, 0x80, 0x75, 0xFB]), 0x80, "waits for bit 7 (0x80) to clear; 0x80 has it set"),
    # in al, dx; cmp al, 0x55; jne back: waits for a value
    (bytes([0xEC, 0x3C, 0x55, 0x75, 0xFB]), 0x00, "waits for the value to be 0x55"),
    # in al, dx; test al, 3; jnz out; jmp back; out: the decision is the jump out
    (bytes([0xEC, 0xA8, 0x03, 0x75, 0x02, 0xEB, 0xF9, 0xF4]), 0x00, "waits for bits 0, 1 (0x3) to be set"),
])
def test_the_loop_is_read_in_its_usual_shapes(code: bytes, value: int, says: str) -> None:
    got = _loop(code, value)
    assert got is not None and says in got


def test_a_loop_it_cannot_read_is_named_by_its_address() -> None:
    assert _loop(bytes([0xEC, 0xEB, 0xFD]), 0) == "its loop at 0x100 tests nothing vmcore can read"
    assert _loop(bytes([0x90] * 8 + [0xF4]), 0) == "its loop around 0x100 is not one vmcore can read"


def test_the_watch_waits_for_the_threshold_and_reports_once() -> None:
    clock = ManualClock()
    watch = PollWatch(1.0, clock)
    watch.space, watch.address, watch.size, watch.value = "pio", 0x64, 1, 0x10
    for count in (256, 512):
        watch.count = count
        assert not watch.overdue()
        clock.step(400_000_000)
    watch.count = 768
    clock.step(300_000_000)
    assert watch.overdue() and watch.pending
    watch.reported, watch.pending = True, False
    watch.count = 1024
    clock.step(5_000_000_000)
    assert not watch.overdue()  # once per run
    line = describe(watch, "kbd", "status", ({}, {}, None, None), None)
    assert line.startswith("the guest seems stuck: it keeps reading pio 0x64 (kbd status) and gets 0x10, 1024 times")


def test_the_detector_can_be_turned_off(tmp_path: Path) -> None:
    result = _run(KBD_POLL, tmp_path, "tcg", "  kbd: {type: i8042}\n")
    assert stuck_lines(result["stderr"])
    off = subprocess.run([sys.executable, "-m", "vmcore", "run", str(tmp_path / "kbd_poll.yaml"), "--accel", "tcg",
                          "--stuck-after", "0"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert off.returncode != 0 and not stuck_lines(off.stderr) and "timeout" in off.stderr
