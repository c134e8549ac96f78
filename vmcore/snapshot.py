"""Device state for snapshots: what each device type declares, saved and loaded by name, versioned.

A device type declares its state as a class ``State`` whose annotated names are the instance
attributes that hold it (an attrs class works too; ``version``, unannotated, is 1 when left out)::

    class Uart(Device):
        class State:
            version = 1
            ier: int
            lcr: int
            rx: bytes
            timeout: Timer | None   # a Timer attribute: saved as its deadline (None: not armed)

:func:`save_device` reads those attributes into a JSON-ready dict; :func:`load_device` writes
them into a fresh instance built from the same configuration (a Timer attribute is re-armed
at the saved deadline, or cancelled). A part of the device that declares a ``State`` of its
own (a PIT channel, an ATA channel) is saved and loaded the same way, inside its owner's.
A type whose state has consequences outside it (the memory map it decodes, the BARs it places)
redoes them in a ``state_loaded()`` method, called after the load. A type that needs more says
so with ``save_state()``/``load_state(state: dict)`` methods.
Values are ints, floats, bools, strings, None, bytes, bytearrays, datetimes, deques, random.Random
streams, and lists, tuples and dicts of them.

:func:`check_device` is the completeness check: a device driven by the fuzzer's hostile guest
is saved at a point, a fresh one loaded from that, and both are driven on: any answer, IRQ
level, guest memory byte or exit that differs names what the state left out.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
import json
import os
import random
import struct
import zlib
from pathlib import Path
from typing import Any, Sequence

import attrs

from .clock import Timer

#: Seconds one device call may take in :func:`check_device` before it counts as hung.
WATCHDOG_SECONDS = 5.0
#: Operations of the hostile guest per :func:`check_device` run.
STEPS = 300


class SnapshotError(Exception):
    """A state that cannot be saved or loaded: a type without one, or a saved one that does not fit."""


def _state_class(device: Any) -> Any:
    state = getattr(device if isinstance(device, type) else type(device), "State", None)
    return state if isinstance(state, type) else None


def state_fields(state_cls: type) -> list[str]:
    """The fields a State declares: an attrs class's fields, or a plain class's annotated names
    (its bases' first; a ClassVar is no field). A plain class costs nothing at import, where an
    attrs class costs about a millisecond: the built-in devices use plain ones."""
    if attrs.has(state_cls):
        return [field.name for field in attrs.fields(state_cls)]
    names: list[str] = []
    for klass in reversed(state_cls.__mro__):
        for name, annotation in vars(klass).get("__annotations__", {}).items():
            if "ClassVar" not in str(annotation) and name not in names:
                names.append(name)
    return names


def savable(device: Any) -> bool:
    """Whether ``device`` (an instance or a type) declares its state (a ``State`` class, or
    save_state/load_state)."""
    return _state_class(device) is not None or hasattr(device, "save_state")


def _encode(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, bytearray):
        return {"$bytearray": value.hex()}
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, Timer):
        return {"$timer": value.deadline if value.armed else None}
    if isinstance(value, datetime.datetime):
        return {"$datetime": value.isoformat()}
    if isinstance(value, float):
        return {"$float": value.hex()}  # exact, and JSON has no infinities
    if isinstance(value, random.Random):
        return {"$random": _encode(value.getstate(), where)}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)]}
    if isinstance(value, collections.deque):
        return {"$deque": [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)], "maxlen": value.maxlen}
    if isinstance(value, list):
        return [_encode(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {"$dict": [[_encode(k, where), _encode(v, f"{where}[{k!r}]")] for k, v in value.items()]}
    if savable(value):
        return {"$part": save_device(value)}
    raise SnapshotError(f"{where}: a {type(value).__name__} is not a state value (ints, bytes, lists, ...)")


def _decode(saved: Any, current: Any, where: str) -> Any:
    """The value ``saved`` stands for; ``current`` is what the fresh device holds there (a Timer to
    re-arm, a part to load into)."""
    if not isinstance(saved, dict):
        if isinstance(saved, list):
            inner = current if isinstance(current, list) else []
            return [_decode(item, inner[i] if i < len(inner) else None, f"{where}[{i}]") for i, item in enumerate(saved)]
        return saved
    if "$bytes" in saved:
        return bytes.fromhex(saved["$bytes"])
    if "$bytearray" in saved:
        return bytearray.fromhex(saved["$bytearray"])
    if "$timer" in saved:
        if not isinstance(current, Timer):
            raise SnapshotError(f"{where}: saved as a timer, but the device holds {type(current).__name__} there")
        if saved["$timer"] is None:
            current.cancel()
        else:
            current.mod(int(saved["$timer"]))
        return current
    if "$float" in saved:
        return float.fromhex(saved["$float"])
    if "$random" in saved:
        if not isinstance(current, random.Random):
            raise SnapshotError(f"{where}: saved as a random stream, but the device holds {type(current).__name__} there")
        current.setstate(_decode(saved["$random"], None, where))
        return current
    if "$datetime" in saved:
        return datetime.datetime.fromisoformat(saved["$datetime"])
    if "$tuple" in saved:
        inner = current if isinstance(current, tuple) else ()
        return tuple(_decode(item, inner[i] if i < len(inner) else None, f"{where}[{i}]")
                     for i, item in enumerate(saved["$tuple"]))
    if "$deque" in saved:
        return collections.deque((_decode(item, None, where) for item in saved["$deque"]), maxlen=saved["maxlen"])
    if "$dict" in saved:
        inner = current if isinstance(current, dict) else {}
        out = {}
        for k, v in saved["$dict"]:
            key = _decode(k, None, where)
            out[key] = _decode(v, inner.get(key), f"{where}[{key!r}]")
        return out
    if "$part" in saved:
        if current is None or not savable(current):
            raise SnapshotError(f"{where}: saved as a part with a state, but the device holds "
                                f"{type(current).__name__} there")
        load_device(current, saved["$part"])
        return current
    raise SnapshotError(f"{where}: {sorted(saved)} is no state value")


def save_device(device: Any) -> dict[str, Any]:
    """``device``'s state as a JSON-ready dict (``type``, ``version``, ``fields``)."""
    name = getattr(device, "type_name", type(device).__name__)
    custom = getattr(device, "save_state", None)
    state_cls = _state_class(device)
    version = getattr(state_cls, "version", 1) if state_cls is not None else getattr(device, "state_version", 1)
    if custom is not None:
        fields = {key: _encode(value, f"{name}.{key}") for key, value in custom().items()}
    elif state_cls is not None:
        fields = {}
        for field in state_fields(state_cls):
            try:
                value = getattr(device, field)
            except AttributeError:
                raise SnapshotError(f"{name}: its State names {field!r}, which the device does not have") from None
            fields[field] = _encode(value, f"{name}.{field}")
    else:
        raise SnapshotError(f"device type {name!r} declares no State: it cannot be saved in a snapshot")
    return {"type": name, "version": version, "fields": fields}


def check_state(device: Any, saved: Any) -> None:
    """Raise SnapshotError where ``saved`` is not a state ``device`` can load (type, version,
    fields), changing nothing."""
    name = getattr(device, "type_name", type(device).__name__)
    if not isinstance(saved, dict) or not isinstance(saved.get("fields"), dict):
        raise SnapshotError(f"{name}: the saved state is not a device state")
    if saved.get("type") != name:
        raise SnapshotError(f"{name}: the saved state is of a {saved.get('type')!r}")
    state_cls = _state_class(device)
    version = getattr(state_cls, "version", 1) if state_cls is not None else getattr(device, "state_version", 1)
    if saved.get("version") != version:
        raise SnapshotError(f"{name}: the saved state is version {saved.get('version')}; this {name} reads "
                            f"version {version}")
    if getattr(device, "load_state", None) is not None:
        return
    if state_cls is None:
        raise SnapshotError(f"device type {name!r} declares no State: it cannot be loaded from a snapshot")
    expected = set(state_fields(state_cls))
    fields = saved["fields"]
    if set(fields) != expected:
        missing, extra = sorted(expected - set(fields)), sorted(set(fields) - expected)
        raise SnapshotError(f"{name}: the saved state's fields do not match its State"
                            f"{f' (missing {missing})' if missing else ''}{f' (unknown {extra})' if extra else ''}")


def load_device(device: Any, saved: dict[str, Any]) -> None:
    """Give ``device`` (fresh, from the same configuration) the state :func:`save_device` saved."""
    check_state(device, saved)
    name = getattr(device, "type_name", type(device).__name__)
    state_cls = _state_class(device)
    fields = saved["fields"]
    custom = getattr(device, "load_state", None)
    if custom is not None:
        try:
            custom({key: _decode(value, None, f"{name}.{key}") for key, value in fields.items()})
        except SnapshotError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise SnapshotError(f"{name}: cannot load its saved state: {exc}") from None
        return
    expected = set(state_fields(state_cls))
    for key in sorted(expected):
        setattr(device, key, _decode(fields[key], getattr(device, key, None), f"{name}.{key}"))
    loaded = getattr(device, "state_loaded", None)
    if loaded is not None:
        loaded()  # what follows from the state: memory it decodes, BARs it places


# --- the completeness check --------------------------------------------------------------------


@attrs.frozen
class Divergence:
    """Where a device loaded from a snapshot stopped behaving as the one it was saved from."""

    device: str
    split: int  # saved after this many operations
    at: int  # the first operation after the split whose result differs
    operation: str
    original: str
    restored: str

    def __str__(self) -> str:
        return (f"{self.device}: saved after {self.split} operations and loaded into a fresh one, it differs at "
                f"operation {self.at + 1} ({self.operation}): the original gave {self.original}, the loaded one "
                f"{self.restored}; its State leaves something out")


def check_device(device: str | type, props: dict[str, Any] | None = None, *, seed: int = 0, steps: int = STEPS,
                 splits: int = 5, registry: Any = None) -> list[Divergence | str]:
    """Drive ``device`` with the fuzzer's hostile guest (``steps`` operations from ``seed``), save it at
    ``splits`` points, load each into a fresh instance and drive both on: what differed (empty: nothing).
    A device that fails to save or load is a message instead."""
    from .device import build_config
    from .fuzz.campaign import _props_for, _resolve
    from .fuzz.guest import Guest
    from .fuzz.session import Session, Target, quiet_bus
    from .fuzz.watchdog import Watchdog

    cls, name = _resolve(device, registry)
    merged = _props_for(cls, props)
    config = build_config(cls.Config, merged)
    rng = random.Random(seed)
    problems: list[Divergence | str] = []
    watchdog = Watchdog(WATCHDOG_SECONDS)
    try:
        with quiet_bus():
            target = Target(cls, name, merged, config, watchdog)
            recorder = Session(target)
            if recorder.start() is not None:
                recorder.close()
                return [f"{name}: cannot be built for the check"]
            run_guest = Guest(target.regions, target.controller).for_run(rng)
            ops = [run_guest.initial_fill(rng)]
            recorder.execute(ops[0])
            for _ in range(steps):
                ops.append(run_guest.next(rng, recorder))
                _note, problem = recorder.execute(ops[-1])
                if problem is not None or recorder.exit is not None:
                    break  # a device that fails is the fuzzer's to report; the check stops before it
            recorder.close()
            points = sorted({rng.randrange(1, len(ops)) for _ in range(splits)}) if len(ops) > 1 else []
            for split in points:
                found = _diverges(target, ops, split, name)
                if found is not None:
                    problems.append(found)
                    break  # one is enough to say so; the rest would repeat it
    finally:
        watchdog.close()
    return problems


def _observed(session: Any, note: str) -> str:
    levels = "".join("1" if line.level else "0" for line in session.irq_lines)
    exit_ = "" if session.exit is None else f" exit {session.exit.status}"
    return f"{note.strip() or 'done'} (IRQ levels {levels or '-'}{exit_})"


def _diverges(target: Any, ops: Sequence[Any], split: int, name: str) -> Divergence | str | None:
    from .fuzz.session import Session

    original = Session(target)
    original.start()
    try:
        for op in ops[:split]:
            original.execute(op)
        try:
            saved = json.loads(json.dumps(save_device(original.device)))
        except SnapshotError as exc:
            return str(exc)
        restored = Session(target)
        restored.start()
        try:
            _match_surroundings(original, restored)
            try:
                load_device(restored.device, saved)
            except SnapshotError as exc:
                return str(exc)
            for at in range(split, len(ops)):
                op = ops[at]
                if original.exit is not None:
                    break
                a, _problem_a = original.execute(op)
                b, _problem_b = restored.execute(op)
                seen_a, seen_b = _observed(original, a), _observed(restored, b)
                if seen_a != seen_b:
                    return Divergence(name, split, at, str(op), seen_a, seen_b)
            if _memory(original) != _memory(restored):
                return Divergence(name, split, len(ops) - 1, "(the end)", "its guest memory", "other guest memory")
        finally:
            restored.close()
    finally:
        original.close()
    return None


def _match_surroundings(original: Any, restored: Any) -> None:
    """What is not the device's to save: machine time, guest memory and the IRQ lines' levels."""
    ahead = original.bus.clock.now() - restored.bus.clock.now()
    if ahead > 0:
        restored.bus.clock.step(ahead)
    for slot in original.bus.memory:
        if not slot.readonly:
            restored.bus.memory.write(slot.base, original.bus.memory.read(slot.base, slot.size))
    for line in original.irq_lines:
        restored.irq_lines.line(line.number).level = line.level


def _memory(session: Any) -> bytes:
    return b"".join(session.bus.memory.read(slot.base, slot.size) for slot in session.bus.memory)


# --- a whole machine: the file --------------------------------------------------------------

#: The first bytes of a snapshot file, and the format it is written in.
MAGIC = b"VMCORESN"
FORMAT = 1
PAGE = 4096
_ZERO_PAGE = bytes(PAGE)
_LENGTH = struct.Struct("<Q")


def write_snapshot(path: str | Path, header: dict[str, Any], blocks: Sequence[tuple[str, memoryview, bool]]) -> int:
    """Write a snapshot: ``header`` (JSON-ready: the CPU, devices, clock...) and the guest memory of
    ``blocks`` ((name, bytes, read-only)): each writable block's pages that are not all zero,
    compressed; read-only blocks by their digest only (the profile's images give them again).
    Written to a temporary file renamed into place, so a failed save leaves no half file.
    Returns the file's size."""
    data = bytearray()
    memory = []
    for name, view, readonly in blocks:
        entry: dict[str, Any] = {"name": name, "size": len(view), "readonly": readonly}
        if readonly:
            entry["sha256"] = hashlib.sha256(view).hexdigest()
        else:
            runs = []
            page = 0
            pages = len(view) // PAGE
            while page < pages:
                if view[page * PAGE:(page + 1) * PAGE] == _ZERO_PAGE:
                    page += 1
                    continue
                start = page
                while page < pages and page - start < 256 and view[page * PAGE:(page + 1) * PAGE] != _ZERO_PAGE:
                    page += 1
                packed = zlib.compress(view[start * PAGE:page * PAGE], 1)
                runs.append([start, page - start, len(data), len(packed)])
                data += packed
            tail = len(view) - pages * PAGE  # a block whose size is not whole pages
            if tail:
                packed = zlib.compress(view[pages * PAGE:], 1)
                runs.append([pages, -tail, len(data), len(packed)])
                data += packed
            entry["runs"] = runs
        memory.append(entry)
    text = json.dumps({**header, "format": FORMAT, "memory": memory}, separators=(",", ":")).encode()
    body = MAGIC + _LENGTH.pack(len(text)) + text + bytes(data)
    target = Path(path)
    temporary = target.with_name(f".{target.name}.partial")
    with open(temporary, "wb") as out:
        out.write(body)
        out.write(hashlib.sha256(body).digest())
    os.replace(temporary, target)
    return len(body) + 32


def read_snapshot(path: str | Path, limit: int) -> tuple[dict[str, Any], bytes]:
    """The header and the memory data of a snapshot file, checked whole (magic, format, length,
    digest) before anything is used: a SnapshotError says what is wrong. ``limit``: the most bytes
    the file may have (the machine's memory and then some)."""
    try:
        size = os.path.getsize(path)
        if size > limit:
            raise SnapshotError(f"{path}: {size} bytes, more than a snapshot of this machine can be")
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    if len(raw) < len(MAGIC) + _LENGTH.size + 32 or not raw.startswith(MAGIC):
        raise SnapshotError(f"{path}: not a vmcore snapshot")
    body, digest = raw[:-32], raw[-32:]
    if hashlib.sha256(body).digest() != digest:
        raise SnapshotError(f"{path}: truncated or corrupt (its checksum does not match)")
    (length,) = _LENGTH.unpack_from(body, len(MAGIC))
    start = len(MAGIC) + _LENGTH.size
    try:
        header = json.loads(body[start:start + length])
    except ValueError:
        raise SnapshotError(f"{path}: its header is not readable") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise SnapshotError(f"{path}: snapshot format {header.get('format') if isinstance(header, dict) else '?'}; "
                            f"this vmcore reads format {FORMAT}")
    return header, body[start + length:]


def check_memory(header: dict[str, Any], blocks: dict[str, tuple[memoryview, bool]], data_size: int) -> None:
    """Raise SnapshotError where the snapshot's memory is not the machine's (names, sizes,
    read-only images) or its runs of pages do not fit their block and the data, changing nothing."""
    try:
        saved = {entry["name"]: entry for entry in header["memory"]}
        if set(saved) != set(blocks):
            raise SnapshotError(f"the snapshot's memory is {sorted(saved)}, this machine's {sorted(blocks)}")
        for name, (view, readonly) in blocks.items():
            entry = saved[name]
            if entry["size"] != len(view) or entry["readonly"] != readonly:
                raise SnapshotError(f"memory {name}: {entry['size']} bytes{' read-only' if entry['readonly'] else ''} "
                                    f"in the snapshot, {len(view)}{' read-only' if readonly else ''} here")
            if readonly:
                if hashlib.sha256(view).hexdigest() != entry["sha256"]:
                    raise SnapshotError(f"memory {name}: its image is not the one the snapshot was made with")
                continue
            for start, count, offset, length in entry["runs"]:
                at, size = start * PAGE, _run_size(count)
                if not (start >= 0 and size > 0 and at + size <= len(view) and offset >= 0 and length > 0
                        and offset + length <= data_size):
                    raise SnapshotError(f"memory {name}: a run of pages at {at:#x} does not fit")
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"its memory is not described as a snapshot's is ({type(exc).__name__}: {exc})") from None


def _run_size(count: int) -> int:
    """Bytes a run of ``count`` pages holds (negative: a block's last, partial, page of -count bytes)."""
    return -count if count < 0 else count * PAGE


def load_memory(header: dict[str, Any], data: bytes, blocks: dict[str, tuple[memoryview, bool]]) -> None:
    """Fill the machine's memory blocks from a snapshot (checked against them first). A run that
    does not inflate to exactly its size is a SnapshotError; none inflates further than that."""
    check_memory(header, blocks, len(data))
    saved = {entry["name"]: entry for entry in header["memory"]}
    for name, (view, readonly) in blocks.items():
        if readonly:
            continue
        view[:] = bytes(len(view))
        for start, count, offset, length in saved[name]["runs"]:
            at, size = start * PAGE, _run_size(count)
            inflate = zlib.decompressobj()
            try:
                chunk = inflate.decompress(data[offset:offset + length], size)
            except zlib.error:
                chunk = b""
            if len(chunk) != size or not inflate.eof or inflate.unconsumed_tail:
                raise SnapshotError(f"memory {name}: the run of pages at {at:#x} is not {size} bytes")
            view[at:at + size] = chunk
