"""virtio-mmio devices on the fake bus, driven through their registers and rings as a driver does."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from vmcore.testing.virtio import VirtioDriver
from vmcore.virtio import Chain
from vmcore.virtio.mmio import (CONFIG_CHANGE, DEVICE_NEEDS_RESET, F_INDIRECT_DESC, F_VERSION_1, FEATURES_OK,
                                INTERRUPT_STATUS, MAGIC, QUEUE_NUM_MAX, STATUS, USED_BUFFER)

BASE = 0x1000_0000


def test_the_transport_says_what_it_is(fake_bus) -> None:
    fake_bus.attach("virtio-rng", base=BASE, irq=5)
    assert [fake_bus.readl(BASE + offset) for offset in (0, 4, 8)] == [MAGIC, 2, 4]
    driver = VirtioDriver(fake_bus, BASE)
    assert driver.offered() & (F_VERSION_1 | F_INDIRECT_DESC) == F_VERSION_1 | F_INDIRECT_DESC
    assert driver.read(QUEUE_NUM_MAX) == 64
    driver.write(0x30, 1)  # QueueSel: a queue the device does not have
    assert driver.read(QUEUE_NUM_MAX) == 0


def test_a_driver_without_virtio_1_or_with_unoffered_features_gets_no_features_ok(fake_bus) -> None:
    fake_bus.attach("virtio-rng", base=BASE, irq=5)
    driver = VirtioDriver(fake_bus, BASE)
    assert not driver.start(features=F_INDIRECT_DESC) & FEATURES_OK  # a legacy driver
    assert not driver.start(features=F_VERSION_1 | 1 << 40) & FEATURES_OK  # a bit never offered
    assert driver.start() & FEATURES_OK


def test_registers_are_32_bit(fake_bus) -> None:
    fake_bus.attach("virtio-rng", base=BASE, irq=5)
    assert fake_bus.readw(BASE) == 0  # a 16-bit read of MagicValue: refused, 0
    fake_bus.writeb(BASE + STATUS, 1)
    assert fake_bus.readl(BASE + STATUS) == 0


# --- virtio-rng -------------------------------------------------------------------------------------

def test_rng_fills_the_buffers_and_interrupts(fake_bus) -> None:
    rng = fake_bus.attach("virtio-rng", base=BASE, irq=5, rate=0)
    rng.source = lambda n: bytes(range(n))
    driver = VirtioDriver(fake_bus, BASE)
    driver.start()
    queue = driver.queue(0)
    head = queue.add([(16, True)])
    second = queue.add([(8, True), (8, True)], indirect=True)
    queue.notify()
    assert queue.used() == [(head, 16), (second, 16)]
    assert queue.data(head) == bytes(range(16))
    assert queue.data(second, 1) == bytes(range(8, 16))
    assert fake_bus.irq_level(5)
    assert driver.interrupt() == USED_BUFFER
    assert not fake_bus.irq_level(5)


def test_rng_is_rate_limited_in_machine_time(fake_bus) -> None:
    fake_bus.attach("virtio-rng", base=BASE, irq=5, rate=1000)  # bytes per second; a second's worth at once
    driver = VirtioDriver(fake_bus, BASE)
    driver.start()
    queue = driver.queue(0)
    queue.add([(1000, True)])
    for _ in range(60):  # more than 3 s of the rate can fill, 64 bytes a time
        queue.add([(64, True)])
    queue.notify()
    assert [written for _head, written in queue.used()] == [1000]  # the full bucket, then it is empty
    given = []
    for tenth in range(1, 31):
        fake_bus.step(100_000_000)
        given += [written for _head, written in queue.used()]
        assert sum(given) <= 1000 * tenth // 10  # never more than the rate allows
    assert sum(given) >= 3000 - 2 * 64  # and the rate is given: served as 64 bytes build up
    assert all(written == 64 for written in given)


def test_rng_honours_interrupt_suppression(fake_bus) -> None:
    fake_bus.attach("virtio-rng", base=BASE, irq=5, rate=0)
    driver = VirtioDriver(fake_bus, BASE)
    driver.start()
    queue = driver.queue(0)
    queue.suppress_interrupts()
    queue.add([(4, True)])
    queue.notify()
    assert len(queue.used()) == 1 and not fake_bus.irq_level(5)


# --- virtio-blk -------------------------------------------------------------------------------------

@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    path.write_bytes(b"".join(bytes([sector]) * 512 for sector in range(16)))
    return path


def _request(kind: int, sector: int) -> bytes:
    return struct.pack("<IIQ", kind, 0, sector)


def _blk(fake_bus, image: Path, **props):  # type: ignore[no-untyped-def]
    blk = fake_bus.attach("virtio-blk", base=BASE, irq=6, image=str(image), **props)
    driver = VirtioDriver(fake_bus, BASE)
    assert driver.start() & FEATURES_OK
    return blk, driver, driver.queue(0)


def test_blk_config_space_gives_the_capacity(fake_bus, image) -> None:
    _blk(fake_bus, image)
    assert fake_bus.readq(BASE + 0x100) == 16
    assert fake_bus.readl(BASE + 0x100 + 20) == 512  # blk_size


def test_blk_reads_writes_flushes_and_identifies(fake_bus, image) -> None:
    _, _, queue = _blk(fake_bus, image)
    read = queue.add([_request(0, 3), (1024, True), (1, True)])
    queue.notify()
    assert queue.used() == [(read, 1025)]
    assert queue.data(read, 1) == bytes([3]) * 512 + bytes([4]) * 512
    assert queue.data(read) == b"\0"  # VIRTIO_BLK_S_OK
    write = queue.add([_request(1, 15), b"\xAB" * 512, (1, True)])
    flush = queue.add([_request(4, 0), (1, True)])
    ident = queue.add([_request(8, 0), (20, True), (1, True)])
    queue.notify()
    assert queue.used() == [(write, 1), (flush, 1), (ident, 21)]
    assert image.read_bytes()[15 * 512:] == b"\xAB" * 512
    assert queue.data(ident, 1).rstrip(b"\0") == b"VMCORE-VIRTIO-BLK"


def test_blk_refuses_what_is_outside_the_image_or_not_whole_sectors(fake_bus, image) -> None:
    before = image.read_bytes()
    _, _, queue = _blk(fake_bus, image)
    beyond = queue.add([_request(1, 16), b"x" * 512, (1, True)])
    partial = queue.add([_request(0, 0), (100, True), (1, True)])
    unknown = queue.add([_request(99, 0), (1, True)])
    queue.notify()
    assert [written for _head, written in queue.used()] == [1, 1, 1]
    assert [queue.data(head) for head in (beyond, partial, unknown)] == [b"\1", b"\1", b"\2"]  # IOERR, UNSUPP
    assert image.read_bytes() == before


def test_blk_readonly_refuses_writes_and_says_so_in_its_features(fake_bus, image) -> None:
    before = image.read_bytes()
    _, driver, queue = _blk(fake_bus, image, readonly=True)
    assert driver.features & (1 << 5)  # VIRTIO_BLK_F_RO
    head = queue.add([_request(1, 0), b"y" * 512, (1, True)])
    queue.notify()
    assert queue.data(head) == b"\1" and image.read_bytes() == before


def test_blk_a_request_without_a_status_byte_breaks_the_queue_once(fake_bus, image, caplog) -> None:
    _, driver, queue = _blk(fake_bus, image)
    queue.add([_request(0, 0)])  # no writable status byte
    queue.notify()
    queue.notify()
    assert driver.read(STATUS) & DEVICE_NEEDS_RESET
    assert driver.read(INTERRUPT_STATUS) & CONFIG_CHANGE and fake_bus.irq_level(6)
    assert sum("needs a reset" in record.message for record in caplog.records) == 1
    assert driver.start() & FEATURES_OK  # a reset brings it back
    queue = driver.queue(0)
    head = queue.add([_request(0, 1), (512, True), (1, True)])
    queue.notify()
    assert queue.used() == [(head, 513)] and not driver.read(STATUS) & DEVICE_NEEDS_RESET


def test_blk_a_large_request_moves_in_pieces(fake_bus, tmp_path) -> None:
    path = tmp_path / "big.img"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    from vmcore.testing import FakeBus
    bus = FakeBus(ram_size=16 << 20)
    try:
        bus.attach("virtio-blk", base=BASE, irq=6, image=str(path))
        driver = VirtioDriver(bus, BASE)
        driver.start()
        queue = driver.queue(0)
        head = queue.add([_request(0, 0), (3 << 20, True), (1, True)])
        queue.notify()
        assert queue.used() == [(head, (3 << 20) + 1)] and queue.data(head, 1) == data
    finally:
        bus.close()


def test_blk_scattered_buffers_read_and_write_straight_through_guest_ram(fake_bus, image) -> None:
    """Data buffers of every size and place, a sector split across them: the bytes land in order."""
    _, _, queue = _blk(fake_bus, image)
    sizes = [1, 511, 512, 7, 1017]  # 2048 bytes: sectors 4..7, cut anywhere
    read = queue.add([_request(0, 4), *[(size, True) for size in sizes], (1, True)])
    queue.notify()
    assert queue.used() == [(read, 2049)]
    got = b"".join(queue.data(read, 1 + k) for k in range(len(sizes)))
    assert got == b"".join(bytes([sector]) * 512 for sector in range(4, 8))
    pattern = bytes(range(256)) * 8
    cuts = [0, 3, 700, 1024, 2048]
    write = queue.add([_request(1, 8), *[pattern[a:b] for a, b in zip(cuts, cuts[1:])], (1, True)])
    queue.notify()
    assert queue.used() == [(write, 1)] and queue.data(write) == b"\0"
    assert image.read_bytes()[8 * 512:12 * 512] == pattern


def test_blk_a_host_io_error_answers_ioerr_and_is_logged_once(fake_bus, image, caplog, monkeypatch) -> None:
    _, driver, queue = _blk(fake_bus, image)

    def failing(*_args: object) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Chain, "pread", failing)
    monkeypatch.setattr(Chain, "pwrite", failing)
    heads = [queue.add([_request(0, 0), (512, True), (1, True)]),
             queue.add([_request(1, 0), b"z" * 512, (1, True)])]
    queue.notify()
    assert [queue.data(head) for head in heads] == [b"\1", b"\1"]  # IOERR, the queue still works
    assert not driver.read(STATUS) & DEVICE_NEEDS_RESET
    assert sum("Input/output error" in record.message for record in caplog.records) == 1
    monkeypatch.undo()
    head = queue.add([_request(0, 2), (512, True), (1, True)])
    queue.notify()
    assert queue.data(head, 1) == bytes([2]) * 512


# --- virtio-console ---------------------------------------------------------------------------------

def _console(fake_bus):  # type: ignore[no-untyped-def]
    console = fake_bus.attach("virtio-console", base=BASE, irq=7, backend="memory")
    driver = VirtioDriver(fake_bus, BASE)
    assert driver.start(queues=(0, 1)) & FEATURES_OK
    return console, driver


def test_console_transmits_the_guests_output_in_order(fake_bus) -> None:
    console, driver = _console(fake_bus)
    tx = driver.queue(1)
    tx.add([b"hello, ", b"hvc0"])
    tx.add([b"\n"])
    tx.notify()
    assert console.output == b"hello, hvc0\n"
    assert [written for _head, written in tx.used()] == [0, 0]


def test_console_holds_host_input_until_the_driver_gives_buffers(fake_bus) -> None:
    console, driver = _console(fake_bus)
    console.feed(b"typed before any buffer")
    rx = driver.queue(0)
    assert rx.used() == []
    first = rx.add([(8, True)])
    second = rx.add([(64, True)])
    rx.notify()
    assert rx.used() == [(first, 8), (second, 15)]
    assert rx.data(first) + rx.data(second)[:15] == b"typed before any buffer"
    console.feed(b"more")
    assert rx.used() == []  # no buffer left: it waits, nothing is lost
    third = rx.add([(64, True)])
    rx.notify()
    assert rx.used() == [(third, 4)] and rx.data(third)[:4] == b"more"


def test_console_emergency_write_and_size(fake_bus) -> None:
    console, _driver = _console(fake_bus)
    assert fake_bus.readw(BASE + 0x100) == 80 and fake_bus.readw(BASE + 0x102) == 25
    fake_bus.writel(BASE + 0x108, ord("!"))
    assert console.output == b"!"


def test_console_a_flood_of_host_input_is_held_to_the_bound_and_loses_nothing(fake_bus, tmp_path) -> None:
    import time

    from vmcore_devices.virtio_console import HOST_INPUT_BUFFER

    data = os.urandom(64 * 1024)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    console = fake_bus.attach("virtio-console", base=BASE, irq=7, backend="file", path=str(tmp_path / "out"),
                              input=str(source))
    driver = VirtioDriver(fake_bus, BASE)
    driver.start(queues=(0, 1))
    deadline = time.monotonic() + 10
    while len(console.backend.input) < HOST_INPUT_BUFFER // 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # a reader that ignored the bound would go on reading meanwhile
    assert HOST_INPUT_BUFFER // 2 <= len(console.backend.input) <= HOST_INPUT_BUFFER
    rx = driver.queue(0)
    received, outstanding = bytearray(), 0
    while len(received) < len(data) and time.monotonic() < deadline:
        while outstanding < rx.size:  # as a driver does: never more buffers out than the queue holds
            rx.add([(4096, True)])
            outstanding += 1
        rx.notify()
        fake_bus.step(0)  # the reader's wake-ups, posted to the machine thread
        for head, written in rx.used():
            received += rx.data(head)[:written]
            outstanding -= 1
        assert len(console.backend.input) <= HOST_INPUT_BUFFER
        time.sleep(0.01)
    assert bytes(received) == data


def test_reports_call_the_transports_registers_by_their_specification_names(fake_bus) -> None:
    rng = fake_bus.attach("virtio-rng", base=BASE, irq=5)
    [region] = rng.regions()
    assert [region.label(offset) for offset in (0x000, 0x060, 0x062, 0x070, 0x0FC, 0x108, 0x048)] == [
        "MagicValue", "InterruptStatus", "InterruptStatus+2", "Status", "ConfigGeneration", "Config+0x8",
        "reserved 0x48"]
