"""Throw-away host resources a device type may point its fuzzing properties at.

A device type's ``fuzz_props(scratch)`` (see :meth:`vmcore.device.Device.fuzz_props`) gets a
:class:`FuzzScratch`: the fuzzer's writes then land in files made for it, never in a user's.
Each resource is made on first use, once per process, and removed when the process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

#: The size of a scratch disk image: small, as a fuzz run reaches few sectors.
SCRATCH_DISK_BYTES = 256 * 1024

_disks: dict[int, str] = {}
_folders: list[Path] = []  # at most one: the process's scratch folder


def scratch_disk(index: int = 0) -> str:
    """A zero-filled disk image of :data:`SCRATCH_DISK_BYTES` in the temp folder, one per ``index``.

    A device with several drives takes one image each (``index`` 0, 1, ...): two writable
    drives on one file is a configuration error.
    """
    path = _disks.get(index)
    if path is None:
        fd, path = tempfile.mkstemp(prefix=f"vmcore-fuzz-disk{index}-", suffix=".img")
        os.ftruncate(fd, SCRATCH_DISK_BYTES)
        os.close(fd)
        atexit.register(lambda: os.path.exists(path) and os.unlink(path))
        _disks[index] = path
    return path


def scratch_folder() -> Path:
    """An empty folder in the temp folder for files a device reads or writes while fuzzed."""
    if not _folders:
        folder = Path(tempfile.mkdtemp(prefix="vmcore-fuzz-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        _folders.append(folder)
    return _folders[0]


class FuzzScratch:
    """What ``fuzz_props(scratch)`` is handed: scratch disk images and a scratch folder."""

    def disk(self, index: int = 0) -> str:
        """The path of scratch disk image ``index`` (see :func:`scratch_disk`)."""
        return scratch_disk(index)

    def folder(self) -> Path:
        """The scratch folder (see :func:`scratch_folder`)."""
        return scratch_folder()
