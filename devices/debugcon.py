"""Debug console: a write-only byte port, as in QEMU's ``isa-debugcon``.

Every byte the guest writes goes to the output. Reads return a fixed
identification byte (0xE9 by default, like QEMU) so firmware can probe for it.
The port is posted (see ``vmcore.bus.Region``): where the accelerator can queue
writes (KVM coalesced PIO) the bytes arrive in order, a little later, without an
exit each.

The host end is a ``vmcore.chardev`` backend chosen by the same properties as the UART's
(``backend``, ``path``, ``socket_mode``), opened when the machine starts running (``start()``):
building the machine (``vmcore check``) truncates no file. The console receives nothing, so
``stdio`` leaves stdin alone and flushes at each newline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from vmcore.bus import Region, Space
from vmcore.chardev import (BackendKind, HostFile, SocketMode, backend_prop, check_backend_props, make_backend,
                            path_prop, socket_mode_prop)
from vmcore.device import Device, DeviceContext, config, in_range, prop
from vmcore.hookspecs import hookimpl

if TYPE_CHECKING:
    from vmcore.fuzz import FuzzScratch

#: Single-byte bytes objects, so a port write allocates nothing.
_BYTES = tuple(bytes((value,)) for value in range(256))


@config
class DebugconConfig:
    port: int = prop(0xF1, "I/O port the console listens on.", hex=True, validator=in_range(0, 0xFFFF))
    backend: BackendKind = backend_prop()
    path: str = path_prop()
    socket_mode: SocketMode = socket_mode_prop()
    readback: int = prop(0xE9, "Byte returned by reads (QEMU returns 0xE9).", hex=True, validator=in_range(0, 0xFF))

    def __attrs_post_init__(self) -> None:
        check_backend_props(self.backend, self.path)


class Debugcon(Device):
    """Write-only debug console: each byte written to the port is output as is."""

    type_name = "debugcon"
    Config = DebugconConfig
    class State:
        """Nothing the guest can see: what it wrote went to the backend (a snapshot keeps no host I/O)."""

    @classmethod
    def fuzz_props(cls, scratch: FuzzScratch) -> dict[str, str]:
        return {"backend": "memory"}  # the guest's bytes to a buffer, not the terminal

    def __init__(self, config: DebugconConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        #: Everything written, when backend is 'memory'.
        self.output = bytearray()
        #: The host end, opened by start(); it has no input (the console receives nothing).
        self.backend = make_backend(ctx.log, config.backend, self.output, path=config.path,
                                    socket_mode=config.socket_mode)

    def host_files(self) -> Sequence[HostFile]:
        return self.backend.host_files()

    def start(self) -> None:
        self.backend.open()

    def regions(self) -> Sequence[Region]:
        # Posted: output only needs to arrive in order, so on KVM the bytes queue in the
        # coalesced ring instead of exiting one by one; reads (the 0xE9 probe) still exit.
        return [Region(Space.PIO, self.config.port, 1, self.read, self.write, sizes=(1,), name="data", posted=True)]

    def read(self, offset: int, size: int) -> int:
        return self.config.readback

    def write(self, offset: int, size: int, value: int) -> None:
        self.backend.write(_BYTES[value & 0xFF])

    def close(self) -> None:
        self.backend.close()


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Debugcon]
