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
