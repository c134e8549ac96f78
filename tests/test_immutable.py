"""vmcore.immutable: value classes for vmcore's internal values, made without generating code."""

from __future__ import annotations

import builtins
import copy
import pickle

import pytest

from vmcore.immutable import Factory, Immutable


class Point(Immutable):
    x: int
    y: int = 0
    tags: dict[str, int] = Factory(dict)


class Point3(Point):
    z: int = 0


class Checked(Immutable):
    value: int

    def __post_init__(self) -> None:
        if self.value < 0:
            raise ValueError("negative")


def test_fields_are_set_by_position_keyword_or_default_and_factories_are_fresh() -> None:
    a, b = Point(1), Point(x=1, y=0)
    assert (a.x, a.y, a.tags) == (1, 0, {}) and a == b
    assert a.tags is not b.tags  # a Factory default is made for each instance
    assert Point(1, 2, {"k": 3}).tags == {"k": 3}
    assert Point3(1, z=5) == Point3(1, 0, {}, 5) and Point3._fields == ("x", "y", "tags", "z")
    assert Point.__slots__ == ("x", "y", "tags") and Point3.__slots__ == ("z",)
    assert not hasattr(a, "__dict__")


def test_wrong_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="missing its field 'x'"):
        Point()
    with pytest.raises(TypeError, match="no field 'w'"):
        Point(1, w=2)
    with pytest.raises(TypeError, match="second value for 'x'"):
        Point(1, x=2)
    with pytest.raises(TypeError, match="takes 3 arguments, 4 given"):
        Point(1, 2, {}, 4)
    with pytest.raises(TypeError, match="without a default follows"):
        class Bad(Immutable):
            a: int = 0
            b: int


def test_values_cannot_change() -> None:
    a = Point(1)
    with pytest.raises(AttributeError, match="immutable"):
        a.x = 2  # type: ignore[misc]
    with pytest.raises(AttributeError, match="immutable"):
        del a.x  # type: ignore[misc]
    with pytest.raises(AttributeError):
        a.other = 1  # type: ignore[attr-defined]
    assert a.x == 1


def test_equality_hash_repr_and_copies_go_by_value_and_class() -> None:
    a = Point(1, 2)
    assert a == Point(1, 2) and a != Point(1, 3) and not (a != Point(1, 2))
    assert Point3(1, 2) != Point(1, 2)  # another class: never equal
    assert a != (1, 2, {})
    assert len({Checked(1), Checked(1), Checked(2)}) == 2 and hash(Checked(1)) == hash(Checked(1))
    with pytest.raises(TypeError):
        hash(a)  # a dict field: unhashable, as a frozen attrs class with one is
    assert repr(Point3(1)) == "Point3(x=1, y=0, tags={}, z=0)"
    assert pickle.loads(pickle.dumps(a)) == a and copy.deepcopy(a) == a and copy.copy(a) == a
    assert a.evolve(y=5) == Point(1, 5) and a == Point(1, 2)


def test_post_init_checks_each_instance_and_evolve_runs_it_too() -> None:
    assert Checked(3).value == 3
    with pytest.raises(ValueError, match="negative"):
        Checked(-1)
    with pytest.raises(ValueError, match="negative"):
        Checked(1).evolve(value=-2)


def test_a_class_is_made_without_compiling_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled: list[object] = []
    real = builtins.compile

    def counting(*args: object, **kwargs: object) -> object:
        compiled.append(args[1] if len(args) > 1 else kwargs.get("filename"))
        return real(*args, **kwargs)  # type: ignore[call-overload]

    with monkeypatch.context() as patched:
        patched.setattr(builtins, "compile", counting)

        class Made(Immutable):
            a: int
            b: str = "b"

        made = Made(1)
    assert compiled == []
    assert made == Made(1, "b") and repr(Made(2)) == "Made(a=2, b='b')"


class Labelled(Immutable):
    _not_compared = ("label",)
    value: int
    label: object = None


def test_fields_left_out_of_equality_do_not_change_it_or_the_hash() -> None:
    a, b = Labelled(1, label=lambda offset: "A"), Labelled(1, label=None)
    assert a == b and hash(a) == hash(b) and Labelled(2) != a
    assert "label=" in repr(a) and a.evolve(value=3).label is a.label  # still a field in every other way


def test_public_values_keep_their_checks_and_evolve() -> None:
    from vmcore.accel import RunLimits
    from vmcore.bus import Doorbell, Region, Space

    with pytest.raises(ValueError, match="timeout must be positive"):
        RunLimits(timeout=0)
    assert RunLimits(timeout=5).evolve(max_exits=9) == RunLimits(timeout=5, max_exits=9)
    region = Region(Space.PIO, 0x60, 4, lambda o, s: 0, lambda o, s, v: None, doorbells=[Doorbell(0, 1)])
    assert region.doorbells == (Doorbell(0, 1),)  # any iterable, kept as a tuple
    assert region.evolve(label=str) == region  # the label is left out of equality, as before
    with pytest.raises(Exception, match="size must be positive"):
        region.evolve(size=0)
