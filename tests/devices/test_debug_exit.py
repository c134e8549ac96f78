"""devices/debug_exit.py: the exit port (QEMU ``isa-debug-exit``) on the fake bus."""

import pytest

from vmcore.device import PropertyError

DEFAULT_PORT = 0x501


@pytest.mark.parametrize("value", [0, 1, 0x10, 0x7F, 0xFF])
def test_byte_write_of_v_exits_with_status_v_shifted_left_or_one(fake_bus, value):
    fake_bus.attach("debug-exit")
    fake_bus.outb(DEFAULT_PORT, value)
    assert fake_bus.exit_status == (value << 1) | 1
    assert f"{value:#x}" in fake_bus.exit_reason


def test_exit_status_is_always_odd_so_it_differs_from_hlt(fake_bus):
    fake_bus.attach("debug-exit")
    fake_bus.outb(DEFAULT_PORT, 0)
    assert fake_bus.exit_status == 1


def test_word_write_passes_the_whole_value(fake_bus):
    fake_bus.attach("debug-exit")
    fake_bus.outw(DEFAULT_PORT, 0x1234)
    assert fake_bus.exit_status == (0x1234 << 1) | 1


def test_nothing_exits_until_the_port_is_written(fake_bus):
    fake_bus.attach("debug-exit")
    fake_bus.outb(DEFAULT_PORT - 1, 3)
    assert fake_bus.exit_status is None
    assert fake_bus.exit_reason is None


@pytest.mark.parametrize("size", [1, 2])
def test_reads_return_all_ones_and_do_not_exit(fake_bus, size):
    fake_bus.attach("debug-exit")
    assert fake_bus.io_read(DEFAULT_PORT, size) == (1 << (8 * size)) - 1
    assert fake_bus.exit_status is None


@pytest.mark.parametrize("width", [1, 2, 4])
def test_width_property_claims_that_many_ports(fake_bus, width):
    fake_bus.attach("debug-exit", name="exit", width=width)
    for port in range(DEFAULT_PORT, DEFAULT_PORT + width):
        found = fake_bus.pio.find(port)
        assert found is not None and found[1] == "exit"
    assert fake_bus.pio.find(DEFAULT_PORT + width) is None
    assert fake_bus.pio.find(DEFAULT_PORT - 1) is None


@pytest.mark.parametrize("width", [2, 4])
def test_write_to_the_last_claimed_port_also_exits(fake_bus, width):
    fake_bus.attach("debug-exit", width=width)
    fake_bus.outb(DEFAULT_PORT + width - 1, 2)
    assert fake_bus.exit_status == 5


@pytest.mark.parametrize("width", [0, 3, 8])
def test_width_other_than_1_2_or_4_is_rejected(fake_bus, width):
    with pytest.raises(PropertyError) as excinfo:
        fake_bus.attach("debug-exit", width=width)
    assert excinfo.value.key == "width"
    assert f"width must be 1, 2 or 4, got {width}" in excinfo.value.message


def test_port_property_moves_the_exit_port(fake_bus):
    fake_bus.attach("debug-exit", port="0xF4", width=1)
    fake_bus.outb(DEFAULT_PORT, 9)
    assert fake_bus.exit_status is None
    fake_bus.outb(0xF4, 9)
    assert fake_bus.exit_status == 19


def test_ports_running_past_0xffff_are_rejected(fake_bus):
    with pytest.raises(PropertyError) as excinfo:
        fake_bus.attach("debug-exit", port="0xFFFE", width=4)
    assert excinfo.value.key == "port"
    assert "runs past port 0xffff" in excinfo.value.message


def test_port_past_0xffff_is_rejected(fake_bus):
    with pytest.raises(PropertyError) as excinfo:
        fake_bus.attach("debug-exit", port=0x10000)
    assert excinfo.value.key == "port"
