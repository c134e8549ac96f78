"""Host files a profile names: resolving their paths, saying why one cannot be read, reading it bounded."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

NAME_MAX = 255  # bytes in one path component (Linux)


def read_bounded(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of the regular file ``path``; OSError for anything else.

    O_NONBLOCK: a FIFO or device swapped in for the file must not block the open or the read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        chunks: list[bytes] = []
        got = 0
        while got < limit:
            chunk = os.read(fd, min(limit - got, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def host_path(folder: Path, text: str) -> Path:
    """``text`` (a path in a profile) made absolute against ``folder``, symbolic links resolved.

    Never raises: a path that cannot be resolved (a symlink loop, a name too long) comes back
    as written, for :func:`not_a_file` to say what is wrong with it.
    """
    joined = folder / text
    try:
        return Path(os.path.realpath(joined))
    except (OSError, RuntimeError, ValueError):
        return Path(os.path.abspath(joined))


def not_a_file(path: Path) -> str:
    """Why ``path`` cannot be read as a file ("" when it can), for messages."""
    try:
        mode = os.stat(path).st_mode
    except ValueError:
        return "cannot be a path: it holds a NUL character"
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "not found"
        if exc.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        if exc.errno == errno.ENAMETOOLONG:
            longest = max(len(os.fsencode(part)) for part in path.parts)
            if longest > NAME_MAX:
                return f"has a path component of {longest} bytes, more than the {NAME_MAX} a name may have"
            return f"is a path of {len(os.fsencode(path))} bytes, longer than the host allows"
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    try:
        # Non-blocking, as in SlotSpec.read_image: the file may have become a FIFO since the stat.
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return ""
