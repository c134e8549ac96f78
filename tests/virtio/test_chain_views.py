"""Chain.views: a checked chain's data as views onto guest RAM, batched for preadv/pwritev."""

from __future__ import annotations

import pytest

from vmcore.memory import GuestMemory
from vmcore.virtio.queue import IOV_MAX, PIECE, Buffer, Chain


@pytest.fixture
def memory():  # type: ignore[no-untyped-def]
    mem = GuestMemory()
    mem.add_slot("low", 0, 4 << 20)
    mem.add_slot("high", 4 << 20, 4 << 20)  # adjacent: a buffer may run across both
    yield mem
    mem.close()


def test_batches_hold_at_most_iov_max_views(memory) -> None:  # type: ignore[no-untyped-def]
    buffers = tuple(Buffer(0x1000 + 32 * k, 16) for k in range(IOV_MAX + 100))
    chain = Chain(0, (), buffers)
    batches = list(chain.views(memory, 0, chain.writable_length, writing=True))
    assert [len(batch) for batch in batches] == [IOV_MAX, 100]
    batches[1][-1][:] = b"z" * 16
    assert memory.read(buffers[-1].address, 16) == b"z" * 16


def test_batches_hold_at_most_a_piece_and_follow_start_and_length(memory) -> None:  # type: ignore[no-untyped-def]
    size = 600 << 10
    chain = Chain(0, tuple(Buffer(k * size, size) for k in range(4)), ())
    batches = list(chain.views(memory, 0, 4 * size, writing=False))
    assert [sum(map(len, batch)) for batch in batches] == [size] * 4  # two would pass PIECE
    assert all(sum(map(len, batch)) <= PIECE for batch in batches)
    # From the middle of the second buffer, 1000 bytes: one view, at the right place.
    memory.write(size + 100, b"marker")
    [[view]] = list(chain.views(memory, size + 100, 1000, writing=False))
    assert (len(view), bytes(view[:6])) == (1000, b"marker")
    assert view.readonly


def test_a_buffer_across_two_windows_gives_a_view_of_each(memory) -> None:  # type: ignore[no-untyped-def]
    chain = Chain(0, (), (Buffer((4 << 20) - 8, 16),))
    [batch] = list(chain.views(memory, 0, 16, writing=True))
    assert [len(view) for view in batch] == [8, 8]
    for view in batch:
        view[:] = b"q" * 8
    assert memory.read((4 << 20) - 8, 16) == b"q" * 16


def test_lengths_are_given_or_summed() -> None:
    chain = Chain(3, (Buffer(0, 16),), (Buffer(64, 100), Buffer(256, 1)))
    assert (chain.readable_length, chain.writable_length) == (16, 101)


# --- Chain.pread and Chain.pwrite: a host file and guest RAM, no copy between -----------------------

@pytest.fixture
def data_file(tmp_path):  # type: ignore[no-untyped-def]
    import os

    path = tmp_path / "data"
    path.write_bytes(os.urandom(64 << 10))
    fd = os.open(path, os.O_RDWR)
    yield path, fd
    os.close(fd)


@pytest.mark.parametrize("base", [0x1000, (4 << 20) - 0x2000], ids=["one-window", "across-windows"])
def test_pread_fills_scattered_buffers_in_order_from_start(memory, data_file, base) -> None:  # type: ignore[no-untyped-def]
    path, fd = data_file
    sizes = [100, 4096, 3, 5000, 1]
    addresses, at = [], base
    for size in sizes:
        addresses.append(at)
        at += size + 64  # gaps between buffers, and (across-windows) a buffer over the boundary
    chain = Chain(0, (), tuple(Buffer(a, n) for a, n in zip(addresses, sizes)))
    data = path.read_bytes()
    start, length = 50, sum(sizes) - 51  # from inside the first buffer to before the last byte
    assert chain.pread(memory, fd, 1000, start, length) == length
    got = b"".join(memory.read(a, n) for a, n in zip(addresses, sizes))
    assert got[start:start + length] == data[1000:1000 + length]
    assert got[:start] == bytes(start) and got[-1:] == b"\0"  # nothing outside the range


def test_pread_stops_at_the_end_of_the_file_and_pwrite_writes_back(memory, data_file) -> None:  # type: ignore[no-untyped-def]
    path, fd = data_file
    chain = Chain(0, (Buffer(0x9000, 8192),), (Buffer(0x1000, 4096), Buffer(0x5000, 4096)))
    assert chain.pread(memory, fd, (64 << 10) - 1000, 0, 8192) == 1000  # short: the file ends
    memory.write(0x9000, b"\xEE" * 8192)
    assert chain.pwrite(memory, fd, 4096, 0, 8192) == 8192
    assert path.read_bytes()[4096:4096 + 8192] == b"\xEE" * 8192


def test_pread_takes_more_buffers_than_one_iovec_array_holds(memory, data_file) -> None:  # type: ignore[no-untyped-def]
    path, fd = data_file
    buffers = tuple(Buffer(0x10000 + 32 * k, 16) for k in range(IOV_MAX + 10))
    chain = Chain(0, (), buffers)
    assert chain.pread(memory, fd, 0, 0, chain.writable_length) == chain.writable_length
    data = path.read_bytes()
    assert b"".join(memory.read(b.address, 16) for b in buffers) == data[:chain.writable_length]


def test_a_chain_from_a_queue_and_one_built_by_hand_are_equal_and_read_alike(memory) -> None:  # type: ignore[no-untyped-def]
    one = Chain(7, (Buffer(0x100, 16),), (Buffer(0x200, 8),))
    other = Chain._of(7, (0x100, 0x200), (16, 8), 1, 16, 8)
    assert one == other and other.readable == (Buffer(0x100, 16),) and other.writable == (Buffer(0x200, 8),)
    assert "Chain(head=7" in repr(other)
    memory.write(0x100, bytes(range(16)))
    assert other.read(memory, 4, 100) == bytes(range(4, 16))
    assert other.write(memory, 6, b"abcdef") == 2 and memory.read(0x206, 2) == b"ab"
