"""pytest fixtures for device authors (registered via the ``pytest11`` entry point)."""

from __future__ import annotations

from typing import Iterator

import pytest

from ..clock import ManualClock
from ..memory import GuestMemory
from ..plugins import DeviceRegistry
from . import FakeBus


@pytest.fixture(scope="session")
def device_registry() -> DeviceRegistry:
    """Every installed device type (found through the ``vmcore`` entry points)."""
    return DeviceRegistry.default()


@pytest.fixture
def fake_bus(device_registry: DeviceRegistry) -> Iterator[FakeBus]:
    """A :class:`FakeBus` with 1 MiB of fake RAM at 0, a manual clock and IRQ recording."""
    bus = FakeBus(device_registry)
    yield bus
    bus.close()


@pytest.fixture
def fake_clock(fake_bus: FakeBus) -> ManualClock:
    """The fake bus's clock: ``fake_clock.step(ns)`` fires due device timers."""
    return fake_bus.clock


@pytest.fixture
def fake_memory(fake_bus: FakeBus) -> GuestMemory:
    """The fake bus's guest RAM, for devices that DMA."""
    return fake_bus.memory
