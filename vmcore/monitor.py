"""The monitor: a running machine controlled from outside, as QEMU's QMP and HMP do.

``vmcore run --monitor`` is a Python REPL on the terminal whose ``vm`` (:class:`Commands`)
has a method per command below (no device may read the terminal meanwhile).

``vmcore run --monitor-socket PATH`` serves a Unix socket; a client sends one JSON object
per line, ``{"execute": COMMAND, "arguments": {...}}``, and gets one line back,
``{"return": ...}`` or ``{"error": "..."}``. Commands:

- ``status``: running or paused, machine time (ns);
- ``pause`` and ``resume``: the guest stops between two exits and its machine time stops
  with it (timers do not fire while paused), and so does the run's wall-clock ``timeout``;
- ``step`` (paused only): the guest runs one instruction (its exit served, a pending
  interrupt taken first, as a CPU would) and stops again; the answer is its registers
  (KVM single-steps with KVM_SET_GUEST_DEBUG; the software CPU runs one instruction);
- ``registers``: the vCPU's registers; ``set-registers`` (``registers``: ``{"rax": 1, ...}``,
  general-purpose registers, ``rip`` and ``rflags``) writes them;
- ``read-memory`` (``address``, ``length`` up to 64 KiB: hex) and ``write-memory``
  (``address``, ``data`` hex), guest-physical;
- ``devices``: each device's name and type; ``device`` (``name``): its state (a register
  map's registers by name, its number, string and flag attributes);
- ``bus-read`` (``space`` pio|mmio, ``address``, ``size``) and ``bus-write`` (and
  ``value``): an access through the bus, as the guest would make it, device side effects
  included;
- ``irq`` (``line``, ``level``): drive an IRQ line;
- ``snapshot`` (``path``; paused only): save the machine there (vmcore.snapshot), as
  ``vmcore run --snapshot`` does; ``vmcore run --restore PATH`` goes on from it;
- ``reload`` (``device``): import the device's module again and rebuild the device from its
  state under the running guest (vmcore.reload); refused, with why, where it cannot be;
- ``quit``: end the run (stop kind ``exit``, status 0).

Every command runs on the machine's thread (posted to its clock, or taken by the paused
machine), so device state is never touched from two threads.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import queue
import socket
import threading
from typing import Any, Callable

from .bus import Space
from .faults import GuestExit

log = logging.getLogger("vmcore.monitor")

#: The longest request line taken, and the most bytes read-memory returns.
MAX_LINE = 64 * 1024
MAX_READ = 64 * 1024
#: Seconds a command may wait for the machine's thread.
COMMAND_TIMEOUT = 10.0


class MonitorError(Exception):
    """A command that cannot be carried out: its message goes back to the client."""


class Monitor:
    """Commands for one machine, run on its thread; :meth:`execute` is what a client calls."""

    def __init__(self, machine: Any) -> None:
        self.machine = machine
        self.paused = threading.Event()
        self._resumed = threading.Event()  # set when a paused machine has gone on
        self._parked: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._stepping = False  # a step was asked for: the next park answers it
        self._stepped = threading.Event()
        self._step_error: Exception | None = None

    # --- running a command on the machine's thread ---------------------------------------------

    def _on_machine(self, command: Callable[[], Any]) -> Any:
        done: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def task() -> None:
            if done.set_running_or_notify_cancel():
                try:
                    done.set_result(command())
                except GuestExit:
                    done.set_result({})
                    raise  # quit: the run loop ends the run
                except BaseException as exc:  # noqa: BLE001 - handed back to the client
                    done.set_exception(exc)

        if self.paused.is_set():
            self._parked.put(task)
        else:
            self.machine.clock.call_soon_threadsafe(task)
        try:
            return done.result(COMMAND_TIMEOUT)
        except concurrent.futures.TimeoutError:
            done.cancel()
            raise MonitorError("the machine did not answer (is it running?)") from None

    def _park(self) -> dict[str, Any]:
        """On the machine's thread: stay here (the guest stopped, machine time stopped) until resumed,
        running the commands that come meanwhile."""
        clock = self.machine.clock
        clock.pause()
        self.paused.set()
        if self._stepping:  # back from the step: its answer can be given
            self._stepping = False
            self._stepped.set()
        try:
            while (task := self._parked.get()) is not None:
                if task is _STEP:
                    try:
                        self.machine.accelerator.request_step(self._park)
                    except Exception as exc:  # noqa: BLE001 - the accelerator cannot: the client is told
                        self._step_error = exc
                        self._stepped.set()
                        continue
                    self._stepping = True
                    break  # the machine runs its instruction; the run core parks it here again
                task()
        finally:
            clock.resume()
            self.paused.clear()
            self._resumed.set()
        return {}

    # --- commands ------------------------------------------------------------------------------

    def execute(self, command: str, arguments: dict[str, Any]) -> Any:
        """Run ``command``; its result (JSON-ready), or MonitorError."""
        machine = self.machine
        if command == "status":
            return {"running": not self.paused.is_set(), "time_ns": machine.clock.now()}
        if command == "pause":
            if self.paused.is_set():
                return {}
            machine.clock.call_soon_threadsafe(self._park)
            if not self.paused.wait(COMMAND_TIMEOUT):
                raise MonitorError("the machine did not stop (is it running?)")
            return {}
        if command == "resume":
            if self.paused.is_set():
                self._resumed.clear()
                self._parked.put(None)
                if not self._resumed.wait(COMMAND_TIMEOUT):
                    raise MonitorError("the machine did not go on")
            return {}
        if command == "step":
            if not self.paused.is_set():
                raise MonitorError("pause the machine first: step runs one instruction of a paused guest")
            self._stepped.clear()
            self._step_error = None
            self._parked.put(_STEP)
            if not self._stepped.wait(COMMAND_TIMEOUT):
                raise MonitorError("the machine did not come back from the step (did the run end?)")
            if self._step_error is not None:
                raise MonitorError(str(self._step_error))
            return self._on_machine(lambda: machine.accelerator.snapshot()[0])
        if command == "registers":
            return self._on_machine(lambda: machine.accelerator.snapshot()[0])
        if command == "read-memory":
            address, length = _int(arguments, "address"), _int(arguments, "length")
            if not 0 <= length <= MAX_READ:
                raise MonitorError(f"length must be 0..{MAX_READ}, got {length}")
            return self._on_machine(lambda: machine.memory.read(address, length).hex())
        if command == "write-memory":
            address = _int(arguments, "address")
            try:
                data = bytes.fromhex(str(arguments.get("data", "")))
            except ValueError:
                raise MonitorError("data must be hex digits") from None
            return self._on_machine(lambda: machine.memory.write(address, data) or {})
        if command == "set-registers":
            values = arguments.get("registers")
            if not isinstance(values, dict) or not values:
                raise MonitorError('registers must be an object such as {"rax": 1}')
            for name, value in values.items():
                if name not in REGISTERS:
                    raise MonitorError(f"{name!r} is not one of {', '.join(REGISTERS)}")
                if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
                    raise MonitorError(f"{name}: {value!r} is not a 64-bit value")
            return self._on_machine(lambda: machine.accelerator.set_registers(dict(values)) or {})
        if command == "device":
            name = str(arguments.get("name"))
            device = machine.devices.get(name)
            if device is None:
                raise MonitorError(f"no device {name!r}; devices: {', '.join(machine.devices)}")
            return self._on_machine(lambda: _state(device))
        if command == "devices":
            return [{"name": name, "type": getattr(device, "type_name", type(device).__name__)}
                    for name, device in machine.devices.items()]
        if command in ("bus-read", "bus-write"):
            bus = {"pio": machine.pio, "mmio": machine.mmio}.get(str(arguments.get("space")))
            if bus is None:
                raise MonitorError("space must be pio or mmio")
            address, size = _int(arguments, "address"), _int(arguments, "size")
            if size not in (1, 2, 4, 8):
                raise MonitorError(f"size must be 1, 2, 4 or 8, got {size}")
            if command == "bus-read":
                return self._on_machine(lambda: bus.read(address, size))
            value = _int(arguments, "value")
            if not 0 <= value < 1 << (8 * size):
                raise MonitorError(f"value {value:#x} does not fit {size} bytes")
            return self._on_machine(lambda: bus.write(address, size, value) or {})
        if command == "irq":
            line, level = _int(arguments, "line"), bool(arguments.get("level"))
            if not 0 <= line < 256:
                raise MonitorError(f"line must be 0..255, got {line}")
            return self._on_machine(lambda: machine.irq_lines.line(line).set_level(level) or {})
        if command == "snapshot":
            if not self.paused.is_set():
                raise MonitorError("pause the machine first: a snapshot is taken of a paused guest")
            path = arguments.get("path")
            if not isinstance(path, str) or not path:
                raise MonitorError('path must be a file name, as in {"path": "machine.snap"}')
            return self._on_machine(lambda: {"bytes": machine.save_snapshot(path)})
        if command == "reload":
            name = arguments.get("device")
            if not isinstance(name, str) or name not in machine.devices:
                raise MonitorError(f'device must be one of {", ".join(machine.devices)}, as in {{"device": "com1"}}')

            def reload() -> dict[str, str]:
                from .reload import ReloadError

                try:
                    return {"reloaded": machine.reload_device(name)}
                except ReloadError as exc:
                    raise MonitorError(str(exc)) from None

            return self._on_machine(reload)
        if command == "quit":

            def quit_() -> None:
                raise GuestExit(0, "monitor: quit")

            if self.paused.is_set():
                self._parked.put(quit_)
                self._parked.put(None)
                return {}
            return self._on_machine(quit_)
        raise MonitorError(f"unknown command {command!r}")


def _STEP() -> None:
    """The parked machine's marker for a step (see Monitor._park); never called."""


#: The registers set-registers writes.
REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14",
             "r15", "rip", "rflags")


def _state(device: Any) -> dict[str, Any]:
    """A device's state as JSON: its register map's values by name, and its public attributes that are
    numbers, strings or flags (bytes as hex, at most 256 of them)."""
    from .regmap import RegisterFile

    state: dict[str, Any] = {"type": getattr(device, "type_name", type(device).__name__)}
    for name, value in sorted(vars(device).items()):
        if name.startswith("_") or name in ("config", "ctx"):
            continue
        if isinstance(value, RegisterFile):
            state["registers"] = {reg.name: value.values[i] for i, reg in enumerate(value.map.regs)}
        elif isinstance(value, (bool, int, str)):
            state[name] = value
        elif isinstance(value, (bytes, bytearray)) and len(value) <= 256:
            state[name] = bytes(value).hex()
    return state


def _int(arguments: dict[str, Any], name: str) -> int:
    value = arguments.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MonitorError(f"{name} must be an integer, got {value!r}")
    return value


class MonitorServer:
    """A Unix socket at ``path`` speaking the monitor's JSON lines, one client at a time, in a thread."""

    def __init__(self, monitor: Monitor, path: str) -> None:
        self.monitor = monitor
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.bind(path)  # OSError (in use, no such folder): the caller reports it
        self._socket.listen(1)
        self._closed = False
        self._idle = threading.Event()  # clear while a request is answered (quit's answer must go out)
        self._idle.set()
        self._thread = threading.Thread(target=self._serve, name="vmcore-monitor", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed:
            try:
                client, _ = self._socket.accept()
            except OSError:
                return  # closed
            with client:
                reader = client.makefile("rb")
                while not self._closed:
                    line = reader.readline(MAX_LINE + 1)
                    if not line:
                        break
                    rest = line
                    while len(rest) > MAX_LINE and not rest.endswith(b"\n"):
                        rest = reader.readline(MAX_LINE + 1)  # drop the rest of an overlong line: one answer
                    self._idle.clear()
                    try:
                        client.sendall(json.dumps(self._answer(line)).encode() + b"\n")
                    except OSError:
                        break  # the client went away
                    finally:
                        self._idle.set()

    def _answer(self, line: bytes) -> dict[str, Any]:
        if len(line) > MAX_LINE:
            return {"error": f"request longer than {MAX_LINE} bytes"}
        try:
            request = json.loads(line)
        except ValueError as exc:
            return {"error": f"not JSON: {exc}"}
        if not isinstance(request, dict) or not isinstance(request.get("execute"), str):
            return {"error": 'expected {"execute": COMMAND, "arguments": {...}}'}
        arguments = request.get("arguments", {})
        if not isinstance(arguments, dict):
            return {"error": "arguments must be an object"}
        try:
            return {"return": self.monitor.execute(request["execute"], arguments)}
        except MonitorError as exc:
            return {"error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - a device or memory error: the client hears of it
            return {"error": f"{type(exc).__name__}: {exc}"}

    def close(self) -> None:
        self._idle.wait(2.0)  # an answer on its way (quit's) goes out before the run's end is reported
        self._closed = True
        if self.monitor.paused.is_set():
            self.monitor._parked.put(None)
        try:
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._socket.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Commands:
    """``vm`` in the monitor's REPL (``vmcore run --monitor``): the monitor's commands as methods."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def _do(self, command: str, **arguments: Any) -> Any:
        return self._monitor.execute(command, arguments)

    def status(self) -> dict[str, Any]:
        return self._do("status")  # type: ignore[no-any-return]

    def pause(self) -> None:
        self._do("pause")

    def resume(self) -> None:
        self._do("resume")

    def step(self) -> dict[str, int]:
        """Run one instruction of the paused guest; its registers after."""
        return self._do("step")  # type: ignore[no-any-return]

    def registers(self) -> dict[str, int]:
        return self._do("registers")  # type: ignore[no-any-return]

    def read_memory(self, address: int, length: int) -> bytes:
        return bytes.fromhex(self._do("read-memory", address=address, length=length))

    def write_memory(self, address: int, data: bytes) -> None:
        self._do("write-memory", address=address, data=bytes(data).hex())

    def set_registers(self, **values: int) -> None:
        """Write registers: ``vm.set_registers(rax=1, rip=0x100)``."""
        self._do("set-registers", registers=values)

    def devices(self) -> list[dict[str, str]]:
        return self._do("devices")  # type: ignore[no-any-return]

    def device(self, name: str) -> dict[str, Any]:
        """A device's state: its registers by name (a register map's) and its simple attributes."""
        return self._do("device", name=name)  # type: ignore[no-any-return]

    def read(self, space: str, address: int, size: int) -> int:
        """A device register through the bus (``space`` "pio" or "mmio")."""
        return self._do("bus-read", space=space, address=address, size=size)  # type: ignore[no-any-return]

    def write(self, space: str, address: int, size: int, value: int) -> None:
        self._do("bus-write", space=space, address=address, size=size, value=value)

    def irq(self, line: int, level: bool) -> None:
        self._do("irq", line=line, level=level)

    def snapshot(self, path: str) -> dict[str, int]:
        """Save the paused machine to ``path`` (``vmcore run --restore PATH`` goes on from it)."""
        return self._do("snapshot", path=path)  # type: ignore[no-any-return]

    def reload(self, device: str) -> dict[str, str]:
        """Re-import ``device``'s module and rebuild it from its state under the running guest (vmcore.reload)."""
        return self._do("reload", device=device)  # type: ignore[no-any-return]

    def quit(self) -> None:
        self._do("quit")

    def __repr__(self) -> str:
        return ("vm: status() pause() resume() step() registers() set_registers(rax=...) read_memory(address, length) "
                "write_memory(address, data) devices() device(name) read(space, address, size) "
                "write(space, address, size, value) irq(line, level) snapshot(path) quit()")


def start_console(monitor: Monitor) -> threading.Thread:
    """The monitor as a Python REPL on the terminal, in a thread: ``vm`` is :class:`Commands`. Leaving it
    (Ctrl-D) ends the run as ``vm.quit()`` does."""
    import code

    commands = Commands(monitor)
    console = code.InteractiveConsole({"vm": commands})

    def run() -> None:
        console.interact(banner=f"vmcore monitor: the machine runs; {commands!r}", exitmsg="")
        try:
            commands.quit()
        except Exception:  # noqa: BLE001 - the run has ended already
            pass

    thread = threading.Thread(target=run, name="vmcore-monitor-console", daemon=True)
    thread.start()
    return thread
