"""The Perfetto timeline (vmcore.timeline, ``vmcore run --perfetto``), read back with Perfetto's
own protobuf definitions (the ``perfetto`` package)."""

from __future__ import annotations

import collections
import io
from pathlib import Path

import pytest

from tests.helpers import vmcore
from vmcore import timeline as T

P = pytest.importorskip("perfetto.protos.perfetto.trace.perfetto_trace_pb2")


def _read(data: bytes) -> tuple[dict[int, tuple[str, int, bool]], list]:  # type: ignore[type-arg]
    trace = P.Trace()
    trace.ParseFromString(data)
    tracks: dict[int, tuple[str, int, bool]] = {}
    events = []
    for packet in trace.packet:
        assert packet.trusted_packet_sequence_id == 1
        if packet.HasField("track_descriptor"):
            d = packet.track_descriptor
            assert d.uuid not in tracks
            tracks[d.uuid] = (d.name, d.parent_uuid, d.HasField("counter"))
        else:
            assert packet.HasField("track_event")
            assert packet.track_event.track_uuid in tracks  # described before its first event
            events.append((packet.timestamp, packet.track_event))
    assert trace.packet[0].sequence_flags == P.TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
    return tracks, events


def test_the_field_numbers_are_perfettos() -> None:
    fields = {message: {f.name: f.number for f in getattr(P, message).DESCRIPTOR.fields}
              for message in ("Trace", "TracePacket", "TrackDescriptor", "TrackEvent")}
    assert fields["Trace"]["packet"] == T._TRACE_PACKET
    assert (fields["TracePacket"]["timestamp"], fields["TracePacket"]["trusted_packet_sequence_id"],
            fields["TracePacket"]["track_event"], fields["TracePacket"]["sequence_flags"],
            fields["TracePacket"]["track_descriptor"]) == (T._TIMESTAMP, T._SEQUENCE_ID, T._TRACK_EVENT,
                                                           T._SEQUENCE_FLAGS, T._TRACK_DESCRIPTOR)
    assert (fields["TrackDescriptor"]["uuid"], fields["TrackDescriptor"]["name"],
            fields["TrackDescriptor"]["parent_uuid"], fields["TrackDescriptor"]["counter"]) == (
        T._UUID, T._NAME, T._PARENT_UUID, T._COUNTER)
    assert (fields["TrackEvent"]["type"], fields["TrackEvent"]["track_uuid"], fields["TrackEvent"]["name"],
            fields["TrackEvent"]["counter_value"]) == (T._EVENT_TYPE, T._TRACK_UUID, T._EVENT_NAME, T._COUNTER_VALUE)
    types = dict(P.TrackEvent.Type.items())
    assert (types["TYPE_SLICE_BEGIN"], types["TYPE_SLICE_END"], types["TYPE_INSTANT"], types["TYPE_COUNTER"]) == (
        T.SLICE_BEGIN, T.SLICE_END, T.INSTANT, T.COUNTER)


def test_a_run_as_a_timeline_matches_its_text_trace(accel: str, tmp_path: Path) -> None:
    """rm-timer counts ten PIT ticks, halting between them: the timeline has each bus transaction
    the text trace has, on its device's track, and the ticks as IRQ 0 levels, pit timers,
    interrupts taken and halts."""
    out, text = tmp_path / "run.pftrace", tmp_path / "run.txt"
    run = vmcore("run", "--accel", accel, "rm-timer", "--perfetto", str(out), "--trace-file", str(text))
    assert run.stdout == b"rm ticks: 10\n", run.stderr[-2000:]
    tracks, events = _read(out.read_bytes())
    names = {uuid: name for uuid, (name, _parent, _counter) in tracks.items()}
    (root,) = [uuid for uuid, (_name, parent, _c) in tracks.items() if parent == 0]
    assert names[root] == "vmcore rm-timer"
    top = {name: uuid for uuid, (name, parent, _c) in tracks.items() if parent == root}
    assert set(top) == {"vCPU 0", "devices", "IRQ lines"}
    devices = {uuid: name for uuid, (name, parent, _c) in tracks.items() if parent == top["devices"]}
    assert {"pic", "pit", "console"} <= set(devices.values())

    # Every pio/mmio line of the text trace is an instant on its device's track, in order.
    bus_lines = [line.split() for line in text.read_text().splitlines() if line.startswith(("pio ", "mmio"))]
    instants = [(devices[e.track_uuid], e.name) for _t, e in events
                if e.track_uuid in devices and e.type == T.INSTANT and not e.name.startswith("timer")]
    assert len(instants) == len(bus_lines) > 20
    for (device, name), line in zip(instants, bus_lines):
        assert device == line[-1] if line[-1] != "(unclaimed)" else device == "unclaimed"
        assert name.split()[0] == line[1] and int(name.split()[1].split("/")[0], 16) == int(line[2].split("/")[0], 16)

    by_track = collections.defaultdict(list)
    for timestamp, event in events:
        by_track[event.track_uuid].append((timestamp, event))
    for track_events in by_track.values():
        assert [t for t, _e in track_events] == sorted(t for t, _e in track_events)  # in time order per track
    irq0 = [uuid for uuid, (name, parent, counter) in tracks.items() if name == "IRQ 0" and counter]
    assert len(irq0) == 1 and tracks[irq0[0]][1] == top["IRQ lines"]
    levels = [e.counter_value for _t, e in by_track[irq0[0]]]
    assert levels.count(1) >= 10 and set(levels) == {0, 1}
    pit = next(uuid for uuid, name in devices.items() if name == "pit")
    assert sum(e.name.startswith("timer ") for _t, e in by_track[pit]) >= 10
    cpu = by_track[top["vCPU 0"]]
    assert sum(e.type == T.INSTANT and e.name == "interrupt 0x08 <- pic" for _t, e in cpu) >= 10
    depth = 0
    halts = 0
    for _t, e in cpu:  # slices nest properly: guest runs and halts, never open at once
        if e.type == T.SLICE_BEGIN:
            assert depth == 0 and e.name in ("guest", "halted")
            halts += e.name == "halted"
            depth += 1
        elif e.type == T.SLICE_END:
            assert depth == 1
            depth -= 1
    assert depth == 0 and halts >= 10


def test_a_full_timeline_stops_at_its_limit_and_stays_a_whole_trace(caplog: pytest.LogCaptureFixture) -> None:
    out = io.BytesIO()
    timeline = T.Timeline(out, "small", max_bytes=2000)
    track = timeline.track("device")
    for n in range(1000):
        timeline.event(track, T.INSTANT, f"write {n:#x}")
    timeline.close()
    assert timeline.full and 1000 < len(out.getvalue()) <= 2000
    _tracks, events = _read(out.getvalue())
    assert 0 < len(events) < 1000 and [e.name for _t, e in events] == [f"write {n:#x}" for n in range(len(events))]
    assert sum("reached 2000 bytes" in record.message for record in caplog.records) == 1


def test_a_timeline_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    run = vmcore("run", "rm-timer", "--perfetto", str(tmp_path / "missing" / "x.pftrace"))
    assert run.status == 2
    assert run.stderr.strip().startswith("vmcore: --perfetto") and "No such file" in run.stderr
