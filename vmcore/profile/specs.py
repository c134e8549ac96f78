"""The validated parts of a profile: memory slots, devices, the CPU's start, the loader, the limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cpu_model import ModelSpec
from ..immutable import Factory, Immutable
from .errors import ProfileError, Where
from .host_paths import read_bounded


class SlotSpec(Immutable):
    """A memory slot: a range of guest-physical memory and what fills it."""

    name: str
    base: int
    size: int
    kind: str  # "ram" | "rom"
    image: Path | None
    offset: int
    where: Where
    image_where: Where | None = None  # the line naming the image, for errors found when reading it

    @property
    def readonly(self) -> bool:
        return self.kind == "rom"

    def read_image(self) -> bytes:
        """The image's bytes; a ProfileError unless they fit between ``offset`` and the slot's end.

        The read is bounded by that room and never blocks: the size :func:`Profile.load` saw
        can be wrong (a /proc file says 0 and holds megabytes) or stale (the file grew since),
        and an image that does not fit must not spill into the slot above.
        """
        assert self.image is not None
        where, key = self.image_where or self.where, f"memory.{self.name}.image"
        room = self.size - self.offset
        try:
            data = read_bounded(self.image, room + 1)
        except OSError as exc:  # removed, made unreadable or replaced since the profile was read
            raise ProfileError(where, key, f"cannot read {self.image}: {exc.strerror or exc}") from None
        if len(data) > room:
            raise ProfileError(where, key, f"image {self.image} holds more than the {room:#x} bytes from offset "
                               f"{self.offset:#x} to the end of the {self.size:#x}-byte slot")
        return data


class DeviceSpec(Immutable):
    """A device instance: its type and raw properties, with where each came from."""

    name: str
    type: str
    props: dict[str, Any]
    where: Where
    prop_where: dict[str, Where]


class CpuSpec(Immutable):
    mode: str = "real"
    entry: int = 0
    tables: int | None = None
    registers: dict[str, int] = Factory(dict)
    #: The CPU model: the CPUID the guest sees (vmcore.cpu_model).
    model: ModelSpec = ModelSpec()
    where: Where = Where("<default>")


class LoaderSpec(Immutable):
    """A kernel image to load instead of (or on top of) slot images."""

    kernel: Path
    format: str  # auto | multiboot | elf | flat | linux
    cmdline: str
    address: int | None  # flat images: where to load (default: cpu.entry)
    where: Where
    initrd: Path | None = None  # linux: the initial RAM disk
    initrd_where: Where | None = None


class Limits(Immutable):
    timeout: float | None = None  # seconds of wall-clock time
    max_exits: int | None = None
