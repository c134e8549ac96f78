"""Doorbells: writes a device declares with ``Doorbell``, turned into ioeventfds on KVM.

What the device receives is documented on ``vmcore.bus.Doorbell``: one write per ring,
through the bus, on the machine thread, before the next exit is handled; with a match
value that is the guest's value, without one it is 0 (the eventfd does not carry it).
On the software CPU, and with ioeventfds off, doorbells are ordinary synchronous writes.

Two tiers, as for coalescing (tests/accel/test_coalesced.py): the exit loop with a scripted
vCPU and real eventfds, then guests on KVM compared with the software CPU. This module
is also a vmcore plugin (the ``bell`` device) for the child processes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import pytest

from tests.helpers import Closeable, ScriptedVcpu, accel_runs, io, real_mode_profile, skip_without_kvm
from vmcore.accel import RunLimits
from vmcore.accel.kvm import KvmAccelerator
from vmcore.bus import Bus, Doorbell, Region, Space
from vmcore.device import Device, DeviceContext, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.kvm import ioctl as k

BELL, OTHER = 0x90, 0x80


# --- the exit loop, scripted -------------------------------------------------------------------


class FakeVm:
    """Stands in for vmcore.kvm.Vm: ioeventfd registrations are recorded, the eventfds kept."""

    def __init__(self, ioeventfd: bool = True) -> None:
        self.caps = {k.KVM_CAP_IOEVENTFD: 1} if ioeventfd else {}
        self.log: list[tuple[Any, ...]] = []
        self.fds: dict[tuple[int, int | None], int] = {}  # (address, datamatch) -> eventfd

    def check_extension(self, cap: int) -> int:
        return self.caps.get(cap, 0)

    def ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool = False, datamatch: int | None = None,
                  deassign: bool = False) -> None:
        self.log.append(("deassign" if deassign else "assign", addr, length, pio, datamatch))
        if not deassign:
            self.fds[(addr, datamatch)] = fd

    def close(self) -> None:
        pass


class Scripted:
    """A scripted vCPU and a bus with a doorbell device (byte bell at +0 matching 0x5A, word bell
    at +2 matching anything) and a synchronous port; deliveries are logged in order."""

    def __init__(self, vm: FakeVm | None = None) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.vcpu = ScriptedVcpu([])
        self.vm = vm or FakeVm()
        self.accel = KvmAccelerator(Closeable(), self.vm, self.vcpu)  # type: ignore[arg-type]
        self.pio, self.mmio = Bus(Space.PIO), Bus(Space.MMIO)
        self.pio.claim(Region(Space.PIO, BELL, 4, None, self.bell, sizes=(1, 2),
                              doorbells=(Doorbell(0, 1, value=0x5A), Doorbell(2, 2))), "bell")
        self.pio.claim(Region(Space.PIO, OTHER, 1, None, self.other), "other")

    def bell(self, offset: int, size: int, value: int) -> None:
        self.events.append(("bell", offset, size, value))

    def other(self, offset: int, size: int, value: int) -> None:
        self.events.append(("other", value))

    def ring(self, address: int, datamatch: int | None, times: int = 1) -> Callable[..., None]:
        """A KVM_RUN in which the guest rang a doorbell ``times`` times (the kernel signals its eventfd)."""
        def step(run: Any, buf: bytearray) -> None:
            os.eventfd_write(self.vm.fds[(address, datamatch)], times)
        return step

    def run(self, script: list[Callable[..., None]], limits: RunLimits = RunLimits()) -> Any:
        self.vcpu.script = list(script)
        return self.accel.run(self.pio, self.mmio, limits)


def then(*steps: Callable[..., None]) -> Callable[..., None]:
    def step(run: Any, buf: bytearray) -> None:
        for each in steps:
            each(run, buf)
    return step


def out(port: int, data: bytes) -> Callable[..., None]:
    return io(k.KVM_EXIT_IO_OUT, port, len(data), data)


def test_every_doorbell_gets_an_ioeventfd_for_the_run_only() -> None:
    s = Scripted()
    s.run([])
    assert s.vm.log == [("assign", BELL, 1, True, 0x5A), ("assign", BELL + 2, 2, True, None),
                        ("deassign", BELL, 1, True, 0x5A), ("deassign", BELL + 2, 2, True, None)]
    for fd in s.vm.fds.values():
        with pytest.raises(OSError):
            os.fstat(fd)  # closed with the run


def test_a_ring_reaches_the_device_before_the_next_exit_is_handled() -> None:
    s = Scripted()
    stop = s.run([then(s.ring(BELL, 0x5A), out(OTHER, b"\x01"))])
    assert s.events == [("bell", 0, 1, 0x5A), ("other", 1)]
    assert stop.exits == 2  # the ring counts as the exit it replaced


def test_a_bell_without_a_match_value_delivers_zero() -> None:
    s = Scripted()
    s.run([s.ring(BELL + 2, None)])
    assert s.events == [("bell", 2, 2, 0)]


def test_each_ring_is_one_write_even_when_the_eventfd_counted_several() -> None:
    s = Scripted()
    stop = s.run([s.ring(BELL, 0x5A, times=3)])
    assert s.events == [("bell", 0, 1, 0x5A)] * 3 and stop.exits == 3


def test_rings_are_delivered_when_the_run_stops() -> None:
    s = Scripted()

    def interrupt(run: Any, buf: bytearray) -> None:
        os.eventfd_write(s.vm.fds[(BELL, 0x5A)], 1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        s.run([interrupt])
    assert s.events == [("bell", 0, 1, 0x5A)]


def test_the_exit_limit_can_fall_among_the_rings() -> None:
    s = Scripted()
    stop = s.run([s.ring(BELL, 0x5A, times=5)], RunLimits(max_exits=2))
    assert (stop.kind, stop.exits, len(s.events)) == ("max-exits", 2, 2)


def test_without_the_capability_or_when_switched_off_doorbells_stay_synchronous() -> None:
    s = Scripted(FakeVm(ioeventfd=False))
    s.run([out(BELL, b"\x5a")])
    assert s.vm.log == [] and s.events == [("bell", 0, 1, 0x5A)]
    s = Scripted()
    s.accel.ioeventfds = False
    s.run([out(BELL + 2, b"\x34\x12")])
    assert s.vm.log == [] and s.events == [("bell", 2, 2, 0x1234)]


# --- guests on KVM, compared with the software CPU ---------------------------------------------------


@attrs.frozen
class BellConfig:
    port: int = prop(0x90, "First of four I/O ports.", validator=in_range(0, 0xFFFC))
    flag: int = prop(0x800, "Guest-physical byte set to 1 when the byte doorbell rings with 0x5A.")


class Bell(Device):
    """A doorbell device: a byte bell at +0 (rings on 0x5A) and a word bell at +2 (any value).

    Ringing the byte bell with 0x5A sets a flag in guest memory, as a device finishing a
    request would, so a guest can wait for it without an exit.
    """

    type_name = "bell"
    Config = BellConfig

    def __init__(self, config: BellConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.log: list[tuple[int, int, int]] = []

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 4, None, self.write, sizes=(1, 2), name="bell",
                       doorbells=(Doorbell(0, 1, value=0x5A), Doorbell(2, 2)))]

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append((offset, size, value))
        if (offset, value) == (0, 0x5A):
            self.ctx.memory.write(self.config.flag, b"\x01")


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Bell]


# Real mode, DS = 0; the flag at 0x800 starts at 0 (past the image, in the 4 KiB of RAM).
WAIT_FOR_BELL = bytes([
    0xB0, 0x5A,                    # mov al, 0x5A
    0xE6, 0x90,                    # out 0x90, al          the byte bell, matching: no exit on KVM
    0x80, 0x3E, 0x00, 0x08, 0x01,  # cmp byte [0x800], 1   set by the device when it hears the bell
    0x75, 0xF9,                    # jne (the cmp)         spins without exiting until then
    0xB8, 0x34, 0x12,              # mov ax, 0x1234
    0xE7, 0x92,                    # out 0x92, ax          the word bell: any value rings it
    0xB0, 0x11,                    # mov al, 0x11
    0xE6, 0x90,                    # out 0x90, al          not the match: an ordinary exit
    0xF4,                          # hlt
])
BELL_THEN_EXIT = bytes([
    0xB0, 0x5A,                    # mov al, 0x5A
    0xE6, 0x90,                    # out 0x90, al          rung: on KVM the next exit is debug-exit's
    0xBA, 0x01, 0x05,              # mov dx, 0x501
    0xB0, 0x07,                    # mov al, 7
    0xEE,                          # out dx, al            debug-exit: status 15
    0xF4,                          # hlt (not reached)
])
PLUGINS = ("tests.accel.test_ioeventfd",)
WAYS = [{"accel": "kvm"}, {"accel": "kvm", "ioeventfds": False}, {"accel": "tcg"}]


@pytest.mark.kvm
def test_a_doorbell_reaches_the_device_while_the_guest_waits_without_exiting(tmp_path: Path) -> None:
    skip_without_kvm()
    path = real_mode_profile(tmp_path, "bell", WAIT_FOR_BELL, devices="  bell: {type: bell, port: 0x90}\n")
    kvm, plain, tcg = accel_runs(path, WAYS, PLUGINS)
    for result in (kvm, plain, tcg):
        assert result["kind"] == "halted", result
    assert kvm["log"] == [[0, 1, 0x5A], [2, 2, 0], [0, 1, 0x11]]  # the word bell carries no value: 0
    assert plain["log"] == tcg["log"] == [[0, 1, 0x5A], [2, 2, 0x1234], [0, 1, 0x11]]
    assert kvm["exits"] == plain["exits"] == tcg["exits"] == 3


@pytest.mark.kvm
def test_a_doorbell_keeps_its_place_before_the_exit_that_follows_it(tmp_path: Path) -> None:
    skip_without_kvm()
    path = real_mode_profile(tmp_path, "bell_exit", BELL_THEN_EXIT, devices="  bell: {type: bell, port: 0x90}\n")
    kvm, plain, tcg = accel_runs(path, WAYS, PLUGINS)
    for result in (kvm, plain, tcg):
        assert (result["kind"], result["status"]) == ("exit", 15), result
        assert result["log"] == [[0, 1, 0x5A]]
    assert kvm["trace"] == plain["trace"] == tcg["trace"] == [
        ["pio", "write", 0x90, 1, 0x5A, "bell"], ["pio", "write", 0x501, 1, 7, "exit"]]


def test_on_the_software_cpu_the_bells_are_ordinary_writes(tmp_path: Path) -> None:
    path = real_mode_profile(tmp_path, "bell_tcg", WAIT_FOR_BELL, devices="  bell: {type: bell, port: 0x90}\n")
    (tcg,) = accel_runs(path, [{"accel": "tcg"}], PLUGINS)
    assert tcg["kind"] == "halted"
    assert tcg["log"] == [[0, 1, 0x5A], [2, 2, 0x1234], [0, 1, 0x11]]
