"""A machine's run as a Perfetto timeline (``vmcore run --perfetto FILE``).

The file is a Perfetto trace (a ``Trace`` protobuf: one ``TracePacket`` after another, in the
TrackEvent format) that opens in the Perfetto UI (ui.perfetto.dev) and in its trace processor.
It holds, under one track named after the machine:

- ``vCPU 0``: a ``guest`` slice for each time the accelerator ran the guest (on KVM one
  KVM_RUN; on the software CPU one stretch of emulation, during which accesses are served),
  a ``halted`` slice for each ``hlt`` wait, and an instant for every interrupt the CPU takes
  (``interrupt 0x08 <- pic``);
- ``devices``: a track per device with an instant for each bus transaction it served
  (``write 0x3f8/1 <- 0x41``, ``read 0x3fd/1 -> 0x60``; ``unclaimed`` for accesses nobody
  claims) and each of its timers that fired (``timer _tick``);
- ``IRQ lines``: a counter track per line, its level (0 or 1) at each change.

Timestamps are the host's monotonic clock in ns from the run's start. The encoding is written
here (a few protobuf fields, no dependency); the tests read it back with the ``perfetto``
package's ``perfetto_trace_pb2``. The file stops growing at ``max_bytes`` (a warning says
so once): what was written is a whole trace.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import IO, Any, Callable

log = logging.getLogger("vmcore.timeline")

#: Where a trace stops growing unless told otherwise.
MAX_BYTES = 256 * 1024 * 1024
_FLUSH_AT = 64 * 1024

# perfetto_trace.proto field numbers (checked against the perfetto package's descriptors by the tests).
_TRACE_PACKET = 1  # Trace.packet
_TIMESTAMP, _SEQUENCE_ID, _TRACK_EVENT, _SEQUENCE_FLAGS, _TRACK_DESCRIPTOR = 8, 10, 11, 13, 60
_UUID, _NAME, _PARENT_UUID, _COUNTER = 1, 2, 5, 8  # TrackDescriptor
_EVENT_TYPE, _TRACK_UUID, _EVENT_NAME, _COUNTER_VALUE = 9, 11, 23, 30  # TrackEvent
SLICE_BEGIN, SLICE_END, INSTANT, COUNTER = 1, 2, 3, 4  # TrackEvent.Type
_INCREMENTAL_STATE_CLEARED = 1  # TracePacket.SequenceFlags
_SEQUENCE = 1


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _uint(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value & 0xFFFF_FFFF_FFFF_FFFF)  # int64: two's complement, as protobuf


def _bytes(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


class Timeline:
    """Writes a Perfetto trace to ``out`` (a binary file) as events come; one per machine run.

    Events may come from any thread (a lock keeps packets whole). ``name`` names the root track.
    """

    def __init__(self, out: IO[bytes], name: str = "vmcore", max_bytes: int = MAX_BYTES) -> None:
        self._out = out
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._written = 0
        self._max = max_bytes
        self.full = False  # max_bytes reached: later events are dropped
        self._start = time.monotonic_ns()
        self._tracks: dict[tuple[str, ...], int] = {}
        self._first = True
        self.root = self._track((name,), name)
        self.cpu = self.track("vCPU 0")
        self._devices = self.track("devices")
        self._irqs = self.track("IRQ lines")

    # --- tracks and packets ----------------------------------------------------------------

    def track(self, name: str, parent: int | None = None, counter: bool = False) -> int:
        """The uuid of the track ``name`` under ``parent`` (the root track if None), made on first use."""
        parent = self.root if parent is None else parent
        return self._track((str(parent), name), name, parent, counter)

    def _track(self, key: tuple[str, ...], name: str, parent: int | None = None, counter: bool = False) -> int:
        uuid = self._tracks.get(key)
        if uuid is None:
            uuid = self._tracks[key] = len(self._tracks) + 1
            body = _uint(_UUID, uuid) + _bytes(_NAME, name.encode())
            if parent is not None:
                body += _uint(_PARENT_UUID, parent)
            if counter:
                body += _bytes(_COUNTER, b"")
            self._packet(_bytes(_TRACK_DESCRIPTOR, body))
        return uuid

    def _packet(self, body: bytes, timestamp: int | None = None) -> None:
        with self._lock:
            if self.full:
                return
            packet = _uint(_SEQUENCE_ID, _SEQUENCE) + body
            if timestamp is not None:
                packet = _uint(_TIMESTAMP, timestamp) + packet
            if self._first:
                packet += _uint(_SEQUENCE_FLAGS, _INCREMENTAL_STATE_CLEARED)
                self._first = False
            data = _bytes(_TRACE_PACKET, packet)
            if self._written + len(self._buffer) + len(data) > self._max:
                self.full = True
                log.warning("--perfetto: the trace reached %d bytes; later events are left out", self._max)
                return
            self._buffer += data
            if len(self._buffer) >= _FLUSH_AT:
                self._flush()

    def _flush(self) -> None:
        self._out.write(self._buffer)
        self._written += len(self._buffer)
        self._buffer.clear()

    def now(self) -> int:
        return time.monotonic_ns() - self._start

    def event(self, track: int, kind: int, name: str | None = None, value: int | None = None,
              at: int | None = None) -> None:
        """One TrackEvent: a slice's begin or end, an instant, or a counter's ``value``."""
        body = _uint(_EVENT_TYPE, kind) + _uint(_TRACK_UUID, track)
        if name is not None:
            body += _bytes(_EVENT_NAME, name.encode())
        if value is not None:
            body += _uint(_COUNTER_VALUE, value)
        self._packet(_bytes(_TRACK_EVENT, body), self.now() if at is None else at)

    def close(self) -> None:
        """Write what is buffered (the file stays open: the caller's)."""
        with self._lock:
            self._flush()
        self._out.flush()

    # --- what the machine and the run core record ----------------------------------------------

    def wrap_enter(self, enter: Callable[[], int]) -> Callable[[], int]:
        """The run core's ``enter`` with a ``guest`` slice around each call."""
        return self._sliced("guest", enter)

    def wrap_wait(self, wait: Callable[[], bool]) -> Callable[[], bool]:
        """The run core's ``hlt`` wait with a ``halted`` slice around it."""
        return self._sliced("halted", wait)

    def _sliced(self, name: str, call: Callable[[], Any]) -> Callable[[], Any]:
        cpu, event = self.cpu, self.event

        def sliced() -> Any:
            event(cpu, SLICE_BEGIN, name)
            try:
                return call()
            finally:
                event(cpu, SLICE_END)

        return sliced

    def transaction(self, txn: Any) -> None:
        """A bus transaction (vmcore.bus.Transaction), on its device's track."""
        track = self.track(txn.device or "unclaimed", self._devices)
        where = f"{txn.address:#x}/{txn.size}"
        if txn.direction.value == "write":
            name = f"write {where} <- {txn.value:#x}"
        else:
            name = f"read {where} -> {txn.value:#x}"
        self.event(track, INSTANT, name if txn.space.value == "pio" else f"{txn.space.value} {name}")

    def interrupt(self, event: Any) -> None:
        """An IRQ line change (a counter) or an interrupt the CPU took (an instant on the vCPU)."""
        if event.kind == "line":
            self.event(self.track(f"IRQ {event.number}", self._irqs, counter=True), COUNTER, value=event.value)
        else:
            self.event(self.cpu, INSTANT, f"interrupt {event.value:#04x} <- {'/'.join(event.devices)}")

    def timer(self, device: str | None, callback: Callable[[], None]) -> None:
        """A timer that fired: on its device's track (``timers`` when no device owns it)."""
        name = getattr(callback, "__name__", None) or type(callback).__name__
        self.event(self.track(device or "timers", self._devices), INSTANT, f"timer {name}")
