"""Exceptions that cross the bus: a guest-requested end of run, and a contained device fault."""

from __future__ import annotations

import logging
import traceback


class GuestExit(Exception):
    """Raised (through the bus) by a device that ends the run, e.g. debug-exit.

    The run loop catches it and stops the machine with ``status``.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class GuestReset(GuestExit):
    """Raised by a device that resets the machine (a keyboard controller's reset line): the run
    ends with a stop of its own kind, ``reset``, status 0, as QEMU's ``-no-reboot``."""

    def __init__(self, reason: str) -> None:
        super().__init__(0, reason)


class BadAnswer(ValueError):
    """A device's read handler returned something that is not an int of the access's width."""

    def __init__(self, value: object, size: int) -> None:
        text = repr(value)
        if len(text) > 80:  # the value is the device's: keep the one-line report one line
            text = text[:77] + "..."
        super().__init__(f"returned {text} ({type(value).__name__}); a read of {size} byte{'s' if size != 1 else ''} "
                         f"must return an int in 0..{(1 << (8 * size)) - 1:#x}")
        self.value = value
        self.size = size


class DeviceFault(Exception):
    """A device model raised while serving a transaction, or in a timer callback
    (``space`` "timer", ``direction`` "callback"), under policy ``stop``.

    Carries what the fault report needs: the device, the access, and the
    device's own traceback (the original exception is ``__cause__``).
    """

    def __init__(self, device: str, space: str, direction: str, address: int, size: int,
                 value: int | None, error: BaseException) -> None:
        self.device = device
        self.space = space
        self.direction = direction
        self.address = address
        self.size = size
        self.value = value
        self.error = error
        self.traceback = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        if space == "timer":  # not a bus access: one of the device's own timers fired
            access = f"{space} {direction}"
        else:
            access = f"{space} {direction} of {size} byte{'s' if size != 1 else ''} at {address:#x}"
        if value is not None:
            access += f" (value {value:#x})"
        if isinstance(error, BadAnswer):
            super().__init__(f"device {device!r} answered a {access} wrongly: it {error}")
        else:
            super().__init__(f"device {device!r} raised {type(error).__name__}: {error} during a {access}")


def obey(policy: str, fault: DeviceFault, counts: dict[tuple[str, str], int], log: logging.Logger,
         going_on: str = "continuing") -> None:
    """What a profile's ``device_errors`` says to do with a contained device fault.

    ``stop``: raise it (the run ends with a report naming the device). ``continue``: count it
    in ``counts`` by (device, exception type) and log it, with the device's traceback, the
    first time only.
    """
    if policy == "stop":
        raise fault from fault.error
    key = (fault.device, type(fault.error).__name__)
    count = counts.get(key, 0)
    counts[key] = count + 1
    if count == 0:
        log.error("%s; %s\n%s", fault, going_on, fault.traceback.rstrip())
