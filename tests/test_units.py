"""vmcore.units: the one parser for the numbers profiles and the command line contain."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcore.units import format_size, parse_int


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("42", 42), ("4096", 4096), (" 7 ", 7)])
def test_decimal_text_is_decimal(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize(("text", "value"), [("010", 10), ("0755", 755), ("00", 0)])
def test_leading_zero_is_still_decimal_unlike_yaml_1_1(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("0x2A", 42), ("0x3f8", 0x3F8), ("0X3F8", 0x3F8), ("0b101010", 42), ("0B11", 3), ("0o52", 42), ("0O777", 0o777)],
)
def test_prefixed_bases_hex_binary_octal_in_either_case(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize(("text", "value"), [("1_000_000", 1_000_000), ("0xFFFF_0000", 0xFFFF0000), ("0b1111_0000", 0xF0)])
def test_underscores_group_digits(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4K", 4 << 10),
        ("1M", 1 << 20),
        ("2G", 2 << 30),
        ("1T", 1 << 40),
        ("0x10K", 16 << 10),
        ("4 K", 4 << 10),
    ],
)
def test_binary_unit_suffixes_scale_by_powers_of_1024(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [("4KiB", 4 << 10), ("1MiB", 1 << 20), ("1GiB", 1 << 30), ("4KB", 4 << 10), ("1MB", 1 << 20), ("2GB", 2 << 30), ("3TB", 3 << 40)],
)
def test_kib_and_kb_style_suffixes_mean_the_same_binary_unit(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize(("text", "value"), [("4k", 4 << 10), ("1m", 1 << 20), ("1gib", 1 << 30), ("1Gib", 1 << 30), ("2mb", 2 << 20)])
def test_unit_suffixes_ignore_case(text, value):
    assert parse_int(text) == value


def test_python_int_passes_through_unchanged():
    assert parse_int(0x3F8) == 0x3F8


def test_bool_is_not_a_number():
    # YAML 1.1 turns `off` into False; it must not silently become 0.
    with pytest.raises(ValueError, match="expected a number"):
        parse_int(False)


@pytest.mark.parametrize(
    "text", ["", "abc", "4X", "0x", "0xZZ", "0x_", "0b2", "0o8", "1.5", "-1", "4 KK", "1iB", "K", "12 34"]
)
def test_garbage_is_rejected_with_a_message_showing_the_expected_forms(text):
    with pytest.raises(ValueError) as excinfo:
        parse_int(text)
    message = str(excinfo.value)
    assert "expected a number like 42, 0x2A, 4K" in message
    assert repr(text) in message


@given(st.integers(min_value=0, max_value=1 << 50))
def test_format_size_round_trips_through_parse_int(size):
    assert parse_int(format_size(size)) == size


@pytest.mark.parametrize(("size", "text"), [(4096, "4K"), (3000, "3000"), (0, "0"), (1 << 20, "1M"), (3 << 30, "3G"), (1536, "1536"), (1 << 40, "1T")])
def test_format_size_picks_the_largest_exact_unit(size, text):
    assert format_size(size) == text
