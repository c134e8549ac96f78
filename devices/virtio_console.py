"""virtio-console (virtio 1.x, 5.3): one console port (Linux's ``hvc0``) on the UART's host backends.

Two queues: the receive queue, where the driver leaves device-writable buffers that the
device fills with host input, and the transmit queue, whose device-readable buffers are
the guest's output. The host end is chosen by the same properties as the UART's
(``backend``, ``path``, ``socket_mode``, ``input``) and opened when the machine starts.
Host input waits in the backend's bounded buffer (4 KiB; the reader stops reading while it
is full, so a flood of input is held by the host, not by vmcore) until the driver has
buffers to take it; nothing is dropped. The emergency write register (VIRTIO_CONSOLE_F_EMERG_WRITE,
configuration offset 8) outputs one character without a queue, for early console output.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Sequence

from vmcore.chardev import (BackendKind, HostFile, SocketMode, backend_prop, check_backend_props, make_backend,
                            path_prop, socket_mode_prop)
from vmcore.device import DeviceContext, config, prop
from vmcore.hookspecs import hookimpl
from vmcore.virtio import VirtioMmioConfig, VirtioMmioDevice, Virtqueue

if TYPE_CHECKING:
    from vmcore.fuzz import FuzzScratch

RECEIVE, TRANSMIT = 0, 1
F_SIZE, F_EMERG_WRITE = 1 << 0, 1 << 2
EMERG_WR = 8
#: Host input held while the guest has no receive buffers (the reader then waits).
HOST_INPUT_BUFFER = 4096


@config
class VirtioConsoleConfig(VirtioMmioConfig):
    backend: BackendKind = backend_prop()
    path: str = path_prop()
    socket_mode: SocketMode = socket_mode_prop()
    input: str = prop("", "With backend 'file': a host file (or FIFO) read as the console's input.", path=True)
    cols: int = prop(80, "Columns the console reports (VIRTIO_CONSOLE_F_SIZE).")
    rows: int = prop(25, "Rows the console reports.")

    def __attrs_post_init__(self) -> None:
        check_backend_props(self.backend, self.path)


class VirtioConsole(VirtioMmioDevice):
    """virtio console: one port, hvc0 in Linux."""

    type_name = "virtio-console"
    Config = VirtioConsoleConfig
    device_id = 3
    queue_sizes = (64, 64)
    features = F_SIZE | F_EMERG_WRITE

    @classmethod
    def fuzz_props(cls, scratch: FuzzScratch) -> dict[str, str]:
        return {"backend": "memory"}  # the guest's output to a buffer, not the terminal

    def __init__(self, config: VirtioConsoleConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        #: Everything the guest wrote, when backend is 'memory'.
        self.output = bytearray()
        self.backend = make_backend(ctx.log, config.backend, self.output, path=config.path,
                                    socket_mode=config.socket_mode, input_path=config.input,
                                    input_capacity=HOST_INPUT_BUFFER)

    def host_files(self) -> Sequence[HostFile]:
        return self.backend.host_files()

    def start(self) -> None:
        self.backend.open(self._host_input_ready)

    def close(self) -> None:
        self.backend.close()

    def config_space(self) -> bytes:
        return struct.pack("<HHII", self.config.cols, self.config.rows, 1, 0)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset == EMERG_WR and size == 4:
            self.backend.write(bytes((value & 0xFF,)))

    def feed(self, data: bytes) -> None:
        """Host input (machine thread), as a backend's reader gives it: queued, then received."""
        self.backend.input.put(data)
        self.notify(RECEIVE)

    def serve(self, index: int, queue: Virtqueue) -> None:
        if index == TRANSMIT:
            while (chain := queue.pop()) is not None:
                for piece in chain.read_pieces(self.memory):
                    self.backend.write(piece)
                self.complete(queue, chain, 0)
            return
        # Waiting host input into the driver's receive buffers, one chain per piece (new buffers, or
        # new input: see _host_input_ready).
        while len(self.backend.input) and (chain := queue.pop()) is not None:
            data = self.backend.input.take(chain.writable_length)
            self.complete(queue, chain, chain.write(self.memory, 0, data))

    def _host_input_ready(self) -> None:
        # A backend thread: device state is touched on the machine thread only.
        self.ctx.clock.call_soon_threadsafe(lambda: self.notify(RECEIVE))


@hookimpl
def vmcore_device_types() -> list[type]:
    return [VirtioConsole]
