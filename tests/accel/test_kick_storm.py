"""The software CPU stopped by kicks from another thread all the time runs every guest as when left alone.

A kick makes unicorn stop where the next translation block starts (unicorn._Kicker):
never in the middle of an instruction, so nothing a device sees and no register differs
from a run without kicks, whatever the guest does there (port and MMIO accesses, string
IO, ROM writes replayed, interrupts, mode switches, RAM read-modify-writes).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import in_process
from tests.test_diff import FIRMWARE_BOOTED, HOST_TIMED, SOURCES, profile_and_plugins

STORM = "tests.accel.tcg_kick_storm"


def _plugins(extra: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(("tests.helpers", *extra)))


#: Guests whose timer interrupts come by host time: when the loop looks decides which
#: instruction one lands after, so their traces differ by design.
TIMED = {"one_irq"}


@pytest.mark.parametrize("name", sorted(set(SOURCES) - FIRMWARE_BOOTED - HOST_TIMED - TIMED))
def test_a_guest_kicked_without_pause_runs_as_a_quiet_one(name: str, tmp_path: Path) -> None:
    profile, plugins = profile_and_plugins(name, tmp_path)
    quiet = in_process(profile, accel="tcg", plugins=_plugins(plugins))
    kicked = in_process(profile, accel="tcg", plugins=_plugins((*plugins, STORM)))
    for key in ("kind", "status", "console", "scratch", "roms", "trace", "registers", "exits"):
        assert kicked[key] == quiet[key], f"{key}: {kicked['message']} ({kicked['exits']} exits)\n{kicked['stderr'][-1500:]}"
