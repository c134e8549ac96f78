"""vmcore.wiring: the one place the machine, the fake bus and the fuzzer build devices and wire IRQ lines."""

from __future__ import annotations

import pytest

from vmcore.bus import Bus, BusError, Region, Space
from vmcore.clock import ManualClock
from vmcore.dma import DmaSpace
from vmcore.irq import IrqLine
from vmcore.memory import GuestMemory
from tests.helpers import REPO
from vmcore.wiring import IrqLines, build_device, claim_regions, controller_of


def test_every_device_asking_for_a_line_number_gets_the_same_line() -> None:
    lines = IrqLines()
    assert lines.line(4) is lines.line(4)
    assert lines.get(5) is None
    assert [line.number for line in lines] == [4]


def test_a_line_knows_the_devices_that_drive_it_and_a_trace_names_them() -> None:
    from vmcore.irq import IrqEvent

    lines = IrqLines()
    assert lines.line(10, owner="nic") is lines.line(10, owner="disk") is lines.line(10, owner="nic")
    lines.line(4)  # asked for without an owner (a test, a tool): named by nobody
    assert lines.owners(10) == ("nic", "disk") and lines.owners(4) == () and lines.owners(7) == ()
    assert str(IrqEvent("line", 10, 1, lines.owners(10), 0)) == "irq  line 10 -> 1 nic/disk"
    assert str(IrqEvent("vector", 0, 0x30, ("apic",), 0)) == "intr vector 0x30 <- apic"


def test_a_change_is_recorded_then_routed() -> None:
    order: list[tuple[str, int, bool]] = []
    lines = IrqLines(record=lambda n, level: order.append(("record", n, level)))
    lines.line(3).pulse()  # no route yet: recorded only
    lines.route = lambda n, level: order.append(("route", n, level))
    lines.line(3).raise_()
    assert order == [("record", 3, True), ("record", 3, False), ("record", 3, True), ("route", 3, True)]


def _region(base: int, space: Space = Space.PIO) -> Region:
    return Region(space, base, 4, lambda o, s: 0, lambda o, s, v: None)


def test_claiming_is_all_or_none() -> None:
    pio, mmio = Bus(Space.PIO), Bus(Space.MMIO)
    claim_regions([_region(0x10)], "first", pio, mmio)
    with pytest.raises(BusError, match="overlaps"):
        claim_regions([_region(0x1000_0000, Space.MMIO), _region(0x20), _region(0x12)], "second", pio, mmio)
    assert [owner for _, owner in pio.claims()] == ["first"]
    assert list(mmio.claims()) == []


class _Device:
    type_name = "wired"

    @classmethod
    def create(cls, config: object, ctx: object) -> "_Device":
        device = cls()
        device.ctx = ctx  # type: ignore[attr-defined]
        return device


def test_a_built_device_gets_the_worlds_lines_clock_and_dma() -> None:
    memory, mmio, clock, lines = GuestMemory(), Bus(Space.MMIO), ManualClock(), IrqLines()
    try:
        device = build_device(_Device, None, "w", clock=clock, memory=memory, mmio=mmio, irq_lines=lines)
        ctx = device.ctx
        assert ctx.irq(7) is lines.line(7) and isinstance(ctx.irq(7), IrqLine)
        assert ctx.clock is clock and ctx.memory is memory
        assert isinstance(ctx.dma, DmaSpace) and ctx.dma.mmio is mmio and ctx.dma.owner == "w"
    finally:
        memory.close()


def test_the_controller_is_the_device_that_takes_lines() -> None:
    class Pic:
        intr_changed = None

        def set_irq(self, line: int, level: bool) -> None: ...
        def pending(self) -> bool: return False
        def acknowledge(self) -> int: return 0

    pic = Pic()
    assert controller_of([object(), pic]) is pic
    assert controller_of([object()]) is None


def test_implements_answers_as_isinstance_for_each_interrupt_protocol() -> None:
    # vmcore.irq.implements replaces typing's per-call isinstance for the runtime-checkable
    # protocols: the same answer for every device of every bundled machine, and for objects
    # with some, all or none of a protocol's members.
    import glob
    import types

    from vmcore import irq
    from vmcore.machine import Machine
    from vmcore.profile import Profile, ProfileError

    protocols = (irq.InterruptController, irq.LocalInterruptController, irq.ModelSpecificRegisters,
                 irq.IoInterruptController)
    candidates: list[object] = [None, object(), types.SimpleNamespace(set_irq=print),
                                types.SimpleNamespace(set_irq=print, connect_local=print),
                                types.SimpleNamespace(msr_indices=tuple, read_msr=print, write_msr=print),
                                types.SimpleNamespace(acknowledge=int, pending=bool, set_irq=print, intr_changed=None)]
    built = 0
    for path in sorted(glob.glob(str(REPO / "machines" / "*.yaml"))):
        try:
            machine = Machine.build(Profile.load(path))
        except (ProfileError, OSError):  # a profile whose images this host lacks
            continue
        with machine:
            candidates.extend(machine.devices.values())
            built += 1
    assert built >= 10
    for candidate in candidates:
        for protocol in protocols:
            assert irq.implements(candidate, protocol) == isinstance(candidate, protocol), (candidate, protocol)
    assert any(irq.implements(c, irq.IoInterruptController) for c in candidates)
    assert any(irq.implements(c, irq.LocalInterruptController) for c in candidates)
