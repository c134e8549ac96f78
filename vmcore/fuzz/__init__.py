"""The hostile guest: fuzzing one device model on the fake bus.

A guest can do anything its CPU can: access every width at any offset in and
around a device's ports and MMIO, let time pass, fill its RAM with garbage that
the device then takes for DMA descriptors, and (for an interrupt controller)
toggle IRQ inputs and take interrupts. Real hardware survives all of that, so a
device model must too. :func:`fuzz_device` plays such a guest against one device
type, each run on a fresh :class:`~vmcore.testing.FakeBus`, and reports what
broke:

- **exception**: anything escaping a device method (construction, ``regions()``,
  ``read``/``write``, a timer callback, ``set_irq``, ``pending``, ``acknowledge``,
  ``close``), ``SystemExit`` and other ``BaseException`` included, but a
  :class:`~vmcore.device.GuestExit` and ``KeyboardInterrupt`` (the user's: it stops
  the fuzzer). A ``GuestExit`` is legitimate (a debug-exit port, a keyboard
  controller's reset request): the run goes on with a new instance, as a machine
  would be restarted;
- **out-of-range**: a read handler answering an N-byte access with anything but
  an int in ``0 .. 2**(8*N)-1``;
- **region**: ``regions()`` placing a region outside its address space, or two of
  the device's regions overlapping;
- **hang**: one access, IRQ change, acknowledge or slice of a clock advance taking
  more than ``timeout`` seconds of host time; a device stuck in a loop is
  interrupted there, and the traceback shows where;
- **bad-vector**: an interrupt controller's ``acknowledge()`` returning anything
  but a vector 0..255.

Two sources of choices drive the same guest. ``mode="hypothesis"`` draws every
choice from hypothesis, which shrinks a failing run to a minimal one; ``"random"``
draws from a :class:`random.Random` seeded per run (``f"{seed}/{run}"``), far
cheaper per transaction, for long runs. Either way a failure is then shrunk again
by deleting operations and simplifying values for as long as the *same* failure
reproduces (same kind; for an exception, the same type raised at the same line),
and reported as lines to replay by hand or paste into a fake-bus test::

    outb 0x70 0x32
    outb 0x71 0xff
    inb 0x71 -> 0x20

Properties that would reach host resources are the device type's business: its
``fuzz_props(scratch)`` (:meth:`vmcore.device.Device.fuzz_props`) names values that keep
it off the terminal, files and sockets and make runs repeat, pointing what it must write
at a :class:`FuzzScratch`. The type is built with those plus the properties given, and a
type that cannot be built is reported, not fuzzed.

Hang detection is described in :mod:`vmcore.fuzz.watchdog`.
"""

from __future__ import annotations

from .campaign import assert_survives_fuzzing, fuzz_all, fuzz_device, replay
from .guest import LOW_MEMORY, PAGE, RAM_SIZE, low_memory_pattern, ram_pattern
from .ops import Op
from .report import FuzzFailure, FuzzReport
from .scratch import SCRATCH_DISK_BYTES, FuzzScratch, scratch_disk, scratch_folder
from .search import MAX_DISTINCT_FAILURES
from .session import STEP_SLICE_NS

__all__ = [
    "FuzzFailure",
    "FuzzReport",
    "FuzzScratch",
    "Op",
    "assert_survives_fuzzing",
    "fuzz_all",
    "fuzz_device",
    "replay",
]
