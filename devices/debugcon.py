"""Debug console: a write-only byte port, as in QEMU's ``isa-debugcon``.

Every byte the guest writes goes to the output. Reads return a fixed
identification byte (0xE9 by default, like QEMU) so firmware can probe for it.
The port is posted (see ``vmcore.bus.Region``): where the accelerator can queue
writes (KVM coalesced PIO) the bytes arrive in order, a little later, without an
exit each.

The output is a ``vmcore.chardev`` backend, opened when the machine starts running
(``start()``): building the machine (``vmcore check``) truncates no file.
"""

from __future__ import annotations

from typing import Literal, Sequence

import attrs

from vmcore.bus import Region, Space
from vmcore.chardev import Backend, FileBackend, HostFile, MemoryBackend, StdoutBackend
from vmcore.device import Device, DeviceContext, in_range, prop
from vmcore.hookspecs import hookimpl

#: Single-byte bytes objects, so a port write allocates nothing.
_BYTES = tuple(bytes((value,)) for value in range(256))


@attrs.frozen
class DebugconConfig:
    port: int = prop(0xF1, "I/O port the console listens on.", hex=True, validator=in_range(0, 0xFFFF))
    output: Literal["stdout", "stderr", "file", "memory"] = prop(
        "stdout", "Where written bytes go: stdout, stderr, a file (see path) or an in-memory buffer."
    )
    path: str = prop("", "File to write to when output is 'file' (truncated when the machine starts).")
    readback: int = prop(0xE9, "Byte returned by reads (QEMU returns 0xE9).", hex=True, validator=in_range(0, 0xFF))

    def __attrs_post_init__(self) -> None:
        if self.output == "file" and not self.path:
            raise ValueError("path must be set when output is 'file'")


class Debugcon(Device):
    """Write-only debug console: each byte written to the port is output as is."""

    type_name = "debugcon"
    Config = DebugconConfig

    def __init__(self, config: DebugconConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        #: Everything written, when output is 'memory'.
        self.buffer = bytearray()
        # Flushed at each newline, so interleaving with the VMM's own messages stays readable.
        self.backend: Backend
        if config.output == "file":
            self.backend = FileBackend(ctx.log, config.path)
        elif config.output == "memory":
            self.backend = MemoryBackend(ctx.log, self.buffer)
        else:
            self.backend = StdoutBackend(ctx.log, config.output)

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
