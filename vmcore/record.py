"""Recording a run, replaying it exactly, and a recorded device's transactions as a unit test.

``vmcore run PROFILE --record FILE`` keeps what makes a run what it is: the profile (path,
``--set`` overrides, and a digest of the machine it builds: devices and their configuration,
memory as built), the host input each device received and the instruction at which it
arrived, and what the run did: every bus transaction and IRQ event with its machine time
(at most :data:`MAX_EVENTS`), and how it stopped. With ``clock: virtual`` machine time is made of
instructions, host input is all that differs between two runs, and a recording gates it, so a
device sees input only at a point the recording names (:class:`Recorder`). On the host's clock
(KVM, or the software CPU without it) the recording also keeps every reading of the clock made on
the machine's thread, in order, and where the vCPU came back without an exit
(vmcore.clock.LoggedHostClock); its input is committed at the loop's next look, without stopping
the guest. A replay gives the readings back in order: it follows the recording exactly where
timers and input reached the guest at its exits or while it waited in ``hlt``, and says where it
diverged otherwise (an interrupt that stopped the guest while it ran cannot be put at the same
instruction without an instruction counter; a TSC the guest reads is the host's).

``vmcore replay FILE`` builds the same machine, hands each device its input at the recorded
instruction, and compares the run with the recording event by event: the first difference is
reported (a replay that diverged), as PANDA reports one.

``vmcore export-test FILE --device NAME`` writes a pytest module that attaches the device to
the fake bus (vmcore.testing) with its profile's properties, replays its transactions at their
machine times and asserts each read's answer and its IRQ lines: a bug seen under a guest
becomes a unit test. It is checked before it is written: where the device's answers depend on
more than its own transactions and time (guest memory it reads by DMA, another device, host
input), the fake bus answers otherwise and the export says where, rather than write a test
that fails.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .bus import Direction, Space, Transaction
from .device import resolve_paths
from .irq import IrqEvent
from .units import format_size

if TYPE_CHECKING:
    from .machine import Machine
    from .stop import StopReason

FORMAT = "vmcore recording"
VERSION = 1
#: Most transactions and IRQ events a recording keeps (the inputs are always kept): enough for a
#: firmware boot many times over; a Linux boot's millions would make a file of hundreds of MB.
MAX_EVENTS = 1_000_000
#: Most readings of the host's clock a recording on it keeps (a few per exit).
MAX_READINGS = 4_000_000
#: Most host input a recording keeps; input past it ends the recording's usefulness, and says so.
MAX_INPUT = 16 << 20
#: Largest recording file read back (a file this big is no recording of ours).
MAX_FILE = 512 << 20


class RecordingError(Exception):
    """A recording that cannot be made, read, replayed or exported (one line, what and why)."""


def input_buffer(device: Any) -> Any:
    """The host input buffer of a device's backend (vmcore.chardev.InputBuffer), if it receives any."""
    buffer = getattr(getattr(device, "backend", None), "input", None)
    return buffer if getattr(buffer, "capacity", 0) else None


def machine_digest(machine: "Machine") -> str:
    """What a replay must build again: each device's name, type and configuration, and memory as
    built (before the run: images, zeroes, what a loader wrote)."""
    digest = hashlib.sha256()
    for name, device in sorted(machine.devices.items()):
        digest.update(f"{name}={type(device).type_name}:{getattr(device, 'config', None)!r}\n".encode())
    for block in machine.memory.blocks():
        digest.update(f"{block.name}:{block.size}\n".encode())
        digest.update(block.view)
    return digest.hexdigest()


def _space(txn: Transaction) -> str:
    return txn.space.value


class Recorder:
    """Keeps a run of ``machine`` (built from ``profile`` with ``overrides``) for :func:`save`."""

    def __init__(self, machine: "Machine", profile: str, overrides: list[str]) -> None:
        from .clock import LoggedHostClock

        if not machine.clock.virtual and not isinstance(machine.clock, LoggedHostClock):
            raise RecordingError("--record needs clock: virtual, or a machine built with a LoggedHostClock "
                                 "(vmcore run --record does that on the host's clock)")
        self.machine = machine
        self.host_time = isinstance(machine.clock, LoggedHostClock)
        self.header: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "profile": profile, "overrides": list(overrides),
            "machine": machine_digest(machine), "recorded": datetime.datetime.now().isoformat(timespec="seconds"),
            "clock": "host" if self.host_time else "virtual",
        }
        #: [time ns, space, direction, address, size, value, device] and [time, "irq", kind, number, value, devices].
        self.events: list[list[Any]] = []
        self.dropped = 0
        #: [instructions, time ns, device, hex bytes]: host input as each device received it (on the
        #: host's clock: [readings of the clock so far, the last one, device, hex bytes]).
        self.inputs: list[list[Any]] = []
        self._input_bytes = 0
        self.input_overflow = False

    def attach(self) -> tuple[Callable[[Transaction], None], Callable[[IrqEvent], None]]:
        """Gate every device's host input; returns the sinks for transactions and IRQ events (the
        caller puts them on the machine's tracers, with any others it has)."""
        machine = self.machine
        clock = machine.clock
        for name, device in machine.devices.items():
            buffer = input_buffer(device)
            if buffer is not None:  # (on the host's clock without stopping the vCPU: see Clock.post_quietly)
                buffer.hold(clock.post_quietly if self.host_time else clock.call_soon_threadsafe, self._committer(name))
        return self._transaction, self._irq

    def _committer(self, name: str) -> Callable[[bytes], None]:
        clock = self.machine.clock

        def committed(data: bytes) -> None:
            self._input_bytes += len(data)
            if self._input_bytes > MAX_INPUT:
                self.input_overflow = True
                return
            if self.host_time:  # where in the clock's readings (reading it here would add one)
                readings = clock.readings  # type: ignore[attr-defined]
                self.inputs.append([len(readings), readings[-1] if readings else 0, name, data.hex()])
            else:
                self.inputs.append([clock.instructions, clock.now(), name, data.hex()])

        return committed

    def _transaction(self, txn: Transaction) -> None:
        if len(self.events) >= MAX_EVENTS:
            self.dropped += 1
            return
        self.events.append([self.machine.clock.now(), _space(txn), txn.direction.value, txn.address, txn.size,
                            txn.value, txn.device])

    def _irq(self, event: IrqEvent) -> None:
        if len(self.events) >= MAX_EVENTS:
            self.dropped += 1
            return
        self.events.append([event.time, "irq", event.kind, event.number, event.value, list(event.devices)])

    def save(self, path: str | Path, stop: "StopReason") -> int:
        """Write the recording (to a temporary file, renamed into place); returns its size."""
        if self.input_overflow:
            raise RecordingError(f"the run received more than {format_size(MAX_INPUT)} bytes of host input: a "
                                 "replay could not give the devices what they received")
        clock: Any = self.machine.clock
        if self.host_time and clock.overflow:
            raise RecordingError(f"the run read the host's clock more than {clock.limit} times: a replay could "
                                 "not give it the same time")
        accelerator = self.machine.accelerator
        record = dict(self.header, stop={"kind": stop.kind, "status": stop.status}, inputs=self.inputs,
                      events=self.events, dropped=self.dropped,
                      accelerator=accelerator.name if accelerator is not None else None)
        if self.host_time:
            record.update(readings=clock.readings, power_on=(clock.power_on or clock.power_on_time()).isoformat(),
                          time_ns=clock.readings[-1] if clock.readings else 0)
        else:
            record.update(instructions=clock.instructions, time_ns=clock.now())
        target = Path(path)
        temporary = target.with_name(f".{target.name}.partial")  # as a snapshot is written: no half file
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(record, file, separators=(",", ":"))
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        return target.stat().st_size


def load(path: str | Path) -> dict[str, Any]:
    """A recording, checked to be one (format, version, the fields a replay reads)."""
    try:
        size = Path(path).stat().st_size
        if size > MAX_FILE:
            raise RecordingError(f"{path}: {size} bytes, larger than any recording ({format_size(MAX_FILE)})")
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecordingError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordingError(f"{path}: not a recording ({type(exc).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise RecordingError(f"{path}: not a vmcore recording")
    if record.get("version") != VERSION:
        raise RecordingError(f"{path}: a recording of version {record.get('version')!r}; this vmcore reads version "
                             f"{VERSION}")
    try:
        for key, kind in (("profile", str), ("overrides", list), ("machine", str), ("inputs", list),
                          ("events", list), ("stop", dict)):
            if not isinstance(record[key], kind):
                raise TypeError(f"{key} is not a {kind.__name__}")
        for item in record["inputs"]:
            int(item[0]), int(item[1]), str(item[2]), bytes.fromhex(item[3])
        if record.get("clock", "virtual") == "host":
            if not isinstance(record["readings"], list) or not all(type(v) is int for v in record["readings"]):
                raise TypeError("readings is not a list of numbers")
            datetime.datetime.fromisoformat(record["power_on"])
        elif record.get("clock", "virtual") != "virtual":
            raise ValueError(f"clock {record['clock']!r} is neither host nor virtual")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise RecordingError(f"{path}: a damaged recording ({type(exc).__name__}: {exc})") from None
    return record


# --- replay ------------------------------------------------------------------------------------


class Replay:
    """Runs a machine built again from a recording: inputs at their instructions, every event
    compared with the recording as it happens (the first difference is kept)."""

    def __init__(self, machine: "Machine", record: dict[str, Any]) -> None:
        self.host_time = record.get("clock", "virtual") == "host"
        if self.host_time and not machine.clock.replaying:
            raise RecordingError("a recording on the host's clock replays on a machine built with its readings "
                                 "(replayed_clock)")
        if not self.host_time and not machine.clock.virtual:
            raise RecordingError("the recorded profile no longer has clock: virtual")
        if machine_digest(machine) != record["machine"]:
            raise RecordingError("the profile builds another machine than the one recorded (its devices, their "
                                 "configuration or memory as built differ: a changed image or profile?)")
        self.machine = machine
        self.record = record
        self.expected = record["events"]
        self.seen = 0
        #: The first difference: (event index, recorded, replayed), or None.
        self.divergence: tuple[int, Any, Any] | None = None

    def attach(self) -> tuple[Callable[[Transaction], None], Callable[[IrqEvent], None]]:
        """Silence the host's input and schedule the recording's; returns the sinks that compare
        transactions and IRQ events with it."""
        machine = self.machine
        clock = machine.clock
        buffers = {name: input_buffer(device) for name, device in machine.devices.items()}
        for buffer in buffers.values():
            if buffer is not None:
                buffer.silence()  # the host's input is not this run's: the recording's is
        for where, time_ns, name, data in self.record["inputs"]:
            buffer = buffers.get(name)
            if buffer is None:
                raise RecordingError(f"the recording gives host input to device {name!r}, which receives none here")
            if self.host_time:  # at the same reading of the host's clock
                clock.call_at_position(int(where), _injector(buffer, bytes.fromhex(data)))  # type: ignore[attr-defined]
            else:
                clock.call_at_instruction(int(where), int(time_ns), _injector(buffer, bytes.fromhex(data)))
        return self._transaction, self._irq

    def _check(self, event: list[Any]) -> None:
        index = self.seen
        self.seen += 1
        if self.divergence is not None or index >= len(self.expected):
            return
        if self.expected[index] != event:
            self.divergence = (index, self.expected[index], event)

    def _transaction(self, txn: Transaction) -> None:
        self._check([self.machine.clock.now(), _space(txn), txn.direction.value, txn.address, txn.size, txn.value,
                     txn.device])

    def _irq(self, event: IrqEvent) -> None:
        self._check([event.time, "irq", event.kind, event.number, event.value, list(event.devices)])

    def verdict(self, stop: "StopReason") -> str | None:
        """None when the replay went as recorded; else what differed first, in one line."""
        hint = (" (on the host's clock a replay follows the recording where timers and input reached the guest "
                "at its exits or while it waited in hlt, and it read no time of its own (TSC); one that came while it "
                "ran took it elsewhere)" if self.host_time else "")
        clock: Any = self.machine.clock
        if self.host_time and clock.stopped_while_running:
            hint = (" (the recording's vCPU was stopped by the host's time while it ran: a replay cannot stop it "
                    "at that instruction)")
        if self.divergence is not None:
            index, recorded, replayed = self.divergence
            return (f"the replay diverged at event {index} (machine time {replayed[0]} ns): recorded "
                    f"{describe(recorded)}, replayed {describe(replayed)}{hint}")
        if self.host_time and clock.exhausted:
            return f"the replay read the host's clock more often than the recording did{hint}"
        kept = len(self.expected)
        if self.seen < kept:
            return f"the replay stopped after {self.seen} of the {kept} recorded events ({stop.kind}: {stop.message})"
        if not self.record.get("dropped") and self.seen > kept:
            return f"the replay went on past the {kept} recorded events"
        recorded = self.record["stop"]
        if (stop.kind, stop.status) != (recorded["kind"], recorded["status"]):
            return f"the run ended otherwise: recorded {recorded['kind']} (status {recorded['status']}), replayed " \
                   f"{stop.kind} (status {stop.status})"
        return None


def replayed_clock(record: dict[str, Any]) -> Any:
    """The clock a replay's machine is built with: for a recording on the host's clock, its
    readings given back in order (vmcore.clock.ReplayedHostClock); else None (the profile's)."""
    if record.get("clock", "virtual") != "host":
        return None
    from .clock import ReplayedHostClock

    return ReplayedHostClock(record["readings"], datetime.datetime.fromisoformat(record["power_on"]))


def recording_clock(profile: Any) -> Any:
    """The clock ``vmcore run --record`` builds a machine with: on the host's clock one that keeps
    its readings (vmcore.clock.LoggedHostClock); None for a virtual clock (the profile's)."""
    if profile.clock == "virtual":
        return None
    from .clock import LoggedHostClock

    return LoggedHostClock(MAX_READINGS)


def _injector(buffer: Any, data: bytes) -> Callable[[], None]:
    return lambda: buffer.inject(data)


def describe(event: list[Any]) -> str:
    """An event of a recording as a trace line shows it."""
    if event[1] == "irq":
        _time, _irq, kind, number, value, devices = event
        return str(IrqEvent(kind, number, value, tuple(devices), _time))
    _time, space, direction, address, size, value, device = event
    return str(Transaction(Space(space), address, size, Direction(direction), value, device))


# --- export-test -------------------------------------------------------------------------------

#: Properties a device's host end takes: on the fake bus its backend is "memory", nothing opened.
_HOST_PROPS = ("backend", "path", "socket_mode", "input")
#: Most transactions an exported test replays (the rest are left out, and the test says so).
MAX_EXPORTED = 20_000


def export_test(record: dict[str, Any], device: str, registry: Any, profile_devices: dict[str, Any],
                limit: int = MAX_EXPORTED) -> str:
    """The pytest module for ``device``'s recorded transactions, checked on the fake bus first."""
    from .testing import FakeBus

    spec = profile_devices.get(device)
    if spec is None:
        known = ", ".join(sorted(profile_devices)) or "none"
        raise RecordingError(f"the recorded machine has no device {device!r} (its devices: {known})")
    dtype = registry.get(spec.type)
    # Host paths (a disk image) as the machine resolved them: relative to the profile that set them.
    folders = {key: Path(where.file).parent for key, where in spec.prop_where.items() if where.line and where.file}
    props = {key: value for key, value in resolve_paths(dtype.cls.Config, spec.props, folders).items()
             if key not in _HOST_PROPS}
    if "backend" in {info.name for info in dtype.properties}:
        props["backend"] = "memory"
    ops = [event for event in record["events"] if event[1] in ("pio", "mmio") and event[6] == device]
    if not ops:
        raise RecordingError(f"device {device!r} made no port or MMIO transaction in the recording")
    cut = len(ops) > limit
    ops = ops[:limit]
    lines = {int(event[3]) for event in record["events"]
             if event[1] == "irq" and event[2] == "line" and device in event[5]}
    end = ops[-1][0]
    irqs = [[event[0], event[3], bool(event[4])] for event in record["events"]
            if event[1] == "irq" and event[2] == "line" and event[3] in lines and event[0] <= end]
    # The check: the same replay, here and now, must give the recorded answers.
    bus = FakeBus(registry)
    try:
        try:
            bus.attach(spec.type, name=device, **props)
        except Exception as exc:  # noqa: BLE001 - whatever it is, the device cannot stand alone on the fake bus
            raise RecordingError(f"device {device!r} ({spec.type}) cannot be built alone on the fake bus: {exc}") from None
        for index, (when, space, direction, address, size, value, _owner) in enumerate(ops):
            bus.step(max(0, when - bus.clock.now()))
            got = _access(bus, space, direction, address, size, value)
            if direction == "read" and got != value:
                raise RecordingError(
                    f"on the fake bus {device!r} answers otherwise: its transaction {index} (machine time {when} ns), "
                    f"{space} read {address:#x}/{size}, gave {value:#x} under the guest and {got:#x} here: its "
                    "answers depend on more than its own transactions and time (guest memory it reads by DMA, "
                    "another device, host input)")
        seen = [[when, line, level] for when, line, level in bus.irq_events if line in lines]
        if seen != irqs:
            raise RecordingError(f"on the fake bus {device!r} drives its IRQ lines otherwise than under the guest "
                                 f"(first recorded changes {irqs[:3]}, here {seen[:3]})")
    finally:
        bus.close()
    return _module(record, device, spec.type, props, ops, sorted(lines), irqs, cut)


def identifier(device: str) -> str:
    """A device name as a Python identifier's part (the test's name, its default file name)."""
    return "".join(c if c.isalnum() else "_" for c in device).strip("_") or "device"


def _access(bus: Any, space: str, direction: str, address: int, size: int, value: int) -> int | None:
    if space == "pio":
        return bus.io_read(address, size) if direction == "read" else bus.io_write(address, size, value)
    return bus.mmio_read(address, size) if direction == "read" else bus.mmio_write(address, size, value)


def _module(record: dict[str, Any], device: str, dtype: str, props: dict[str, Any], ops: list[list[Any]],
            lines: list[int], irqs: list[list[Any]], cut: bool) -> str:
    name = identifier(device)
    rows = "\n".join(f"    ({when}, {space!r}, {direction!r}, {address:#x}, {size}, {value:#x}),"
                     for when, space, direction, address, size, value, _owner in ops)
    irq_rows = "\n".join(f"    ({when}, {line}, {level})," for when, line, level in irqs)
    note = (f"\nOnly the first {len(ops)} of its transactions are here (vmcore export-test --limit).\n" if cut else "")
    overrides = " ".join(f"--set {item}" for item in record["overrides"])
    return f'''"""{device} ({dtype}) as a recorded run saw it: `vmcore export-test --device {device}` from a
recording of {record["profile"]}{(" " + overrides) if overrides else ""} ({record.get("recorded", "")}).

Each transaction the guest made is replayed on the fake bus at its machine time; each read must
give the answer the device gave under the guest, and its IRQ lines must change as they did.
Edit an expected answer where the recorded one was the bug.
{note}"""

from __future__ import annotations

#: The device's properties in the profile (its host end on the fake bus: memory).
PROPS = {props!r}

#: (machine time in ns, space, direction, address, size, value): a read's value is its answer.
TRANSACTIONS = [
{rows}
]

#: The IRQ lines it drives, and each change of their level up to its last transaction:
#: (machine time in ns, line, level).
LINES = {set(lines) if lines else "set()"}
IRQS = [
{irq_rows}
]


def test_{name}_answers_as_recorded(fake_bus):
    fake_bus.attach({dtype!r}, name={device!r}, **PROPS)
    for index, (when, space, direction, address, size, value) in enumerate(TRANSACTIONS):
        fake_bus.step(max(0, when - fake_bus.clock.now()))
        if space == "pio":
            if direction == "read":
                got = fake_bus.io_read(address, size)
            else:
                fake_bus.io_write(address, size, value)
        elif direction == "read":
            got = fake_bus.mmio_read(address, size)
        else:
            fake_bus.mmio_write(address, size, value)
        if direction == "read":
            assert got == value, f"transaction {{index}} at {{when}} ns: {{space}} read {{address:#x}}/{{size}} gave {{got:#x}}, recorded {{value:#x}}"
    assert [(when, line, level) for when, line, level in fake_bus.irq_events if line in LINES] == IRQS
'''
