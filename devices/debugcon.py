"""Debug console: a write-only byte port, as in QEMU's ``isa-debugcon``.

Every byte the guest writes goes to the output. Reads return a fixed
identification byte (0xE9 by default, like QEMU) so firmware can probe for it.
The port is posted (see ``vmcore.bus.Region``): where the accelerator can queue
writes (KVM coalesced PIO) the bytes arrive in order, a little later, without an
exit each.
"""

from __future__ import annotations

import sys
from typing import IO, Literal, Sequence

import attrs

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, in_range, prop
from vmcore.hookspecs import hookimpl


@attrs.frozen
class DebugconConfig:
    port: int = prop(0xF1, "I/O port the console listens on.", hex=True, validator=in_range(0, 0xFFFF))
    output: Literal["stdout", "stderr", "file", "memory"] = prop(
        "stdout", "Where written bytes go: stdout, stderr, a file (see path) or an in-memory buffer."
    )
    path: str = prop("", "File to write to when output is 'file' (truncated at start).")
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
        self._stream: IO[bytes] | None = None
        self._owns_stream = False
        if config.output == "stdout":
            self._stream = sys.stdout.buffer
        elif config.output == "stderr":
            self._stream = sys.stderr.buffer
        elif config.output == "file":
            self._stream = open(config.path, "wb")
            self._owns_stream = True

    def regions(self) -> Sequence[Region]:
        # Posted: output only needs to arrive in order, so on KVM the bytes queue in the
        # coalesced ring instead of exiting one by one; reads (the 0xE9 probe) still exit.
        return [Region(Space.PIO, self.config.port, 1, self.read, self.write, sizes=(1,), name="data", posted=True)]

    def read(self, offset: int, size: int) -> int:
        return self.config.readback

    def write(self, offset: int, size: int, value: int) -> None:
        byte = value & 0xFF
        stream = self._stream
        if stream is None:
            self.buffer.append(byte)
            return
        stream.write(bytes((byte,)))
        if byte == 0x0A:
            # Line-buffered, so interleaving with the VMM's own messages stays readable.
            stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            # stdout may already be closed by the host (pytest's capfd closes it before fake_bus).
            if not self._stream.closed:
                self._stream.flush()
            if self._owns_stream:
                self._stream.close()
            self._stream = None


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Debugcon]
