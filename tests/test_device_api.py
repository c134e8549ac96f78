"""vmcore.device (properties: conversion, validation, introspection) and vmcore.plugins (the registry)."""

import enum
import sys
import types
from typing import Literal, Optional

import attrs
import pytest

from vmcore.device import (
    Device,
    PropertyError,
    PropertyInfo,
    build_config,
    config,
    convert_value,
    in_range,
    prop,
    properties,
)
from vmcore.hookspecs import hookimpl
from vmcore.plugins import DeviceRegistry, DeviceTypeError, make_plugin_manager


class Parity(enum.Enum):
    NONE = "none"
    EVEN = "even"


@attrs.frozen
class WidgetConfig:
    base: int = prop(0x1000, "Base address of the register window.", validator=in_range(0, 0xFFFF))
    ram: int = prop(4096, "Size of the on-board RAM.")
    enabled: bool = prop(True, "Whether the widget answers at all.")
    mode: Literal["fast", "slow"] = prop("fast", "Clock speed.")
    label: str = prop("widget", "Name shown in logs.")
    parity: Parity = prop(Parity.NONE, "Parity checking.")
    timeout: Optional[int] = prop(None, "Watchdog timeout in ns, or none.")
    queue: int = prop(1, "Number of queues.", validator=in_range(1, 8))
    queue_size: int = prop(256, "Entries per queue.", validator=in_range(1, 0x8000))


# --- @config: attrs.frozen with shared equality, hashing and repr -------------------------------


def _twins():  # type: ignore[no-untyped-def]
    """The same fields made by @attrs.frozen and by @config, under one name (repr shows it)."""

    def body() -> dict:
        return {"__annotations__": {"port": "int", "label": "str", "cache": "list", "secret": "int", "size": "int"},
                "port": prop(0x10, "A port.", hex=True, validator=in_range(0, 0xFFFF)),
                "label": attrs.field(default="a", repr=lambda value: value.upper()),
                "cache": attrs.field(factory=list, eq=False),
                "secret": attrs.field(default=7, repr=False),
                "size": attrs.field(default=4, converter=int, eq=lambda value: value // 4)}

    return attrs.frozen(type("Twin", (), body())), config(type("Twin", (), body()))


def test_a_config_class_compares_hashes_and_prints_as_attrs_frozen_makes_it():
    made_by_attrs, made_by_config = _twins()
    pairs = [((), ()), ((1,), (2,)), ((1, "x"), (1, "x")), ((1, "x", [1]), (1, "x", [2])), ((1, "x", [], 3), (1, "x", [], 4)),
             ((1, "x", [], 3, 4), (1, "x", [], 3, "7")), ((1, "x", [], 3, 4), (1, "x", [], 3, 8)), ((5,), (5,))]
    for left, right in pairs:
        expected = made_by_attrs(*left) == made_by_attrs(*right)
        assert (made_by_config(*left) == made_by_config(*right)) is expected, (left, right)
        assert (made_by_config(*left) != made_by_config(*right)) is not expected, (left, right)
        if expected:
            assert hash(made_by_config(*left)) == hash(made_by_config(*right))
        assert repr(made_by_config(*left)) == repr(made_by_attrs(*left))
    assert repr(made_by_config(3, "q", [1], 9, 8)) == "Twin(port=3, label=Q, cache=[1], size=8)"
    assert made_by_config() != made_by_attrs()  # another class: as attrs answers for two classes
    assert made_by_config().__eq__(made_by_attrs()) is NotImplemented


def test_a_config_class_is_an_attrs_class_like_any_other():
    _, made_by_config = _twins()
    value = made_by_config(size="12")
    assert value.size == 12  # converter
    with pytest.raises(PropertyError, match="port"):
        made_by_config(port=0x10000)  # validator
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        value.port = 1  # type: ignore[misc]
    assert [field.name for field in attrs.fields(made_by_config)] == ["port", "label", "cache", "secret", "size"]
    assert attrs.evolve(value, port=2) == made_by_config(port=2, size=12)
    assert not hasattr(value, "__dict__")  # slotted, as @attrs.frozen makes it
    assert {value: 1}[made_by_config(size=12)] == 1


def test_every_built_in_config_class_uses_the_shared_methods(device_registry):
    """@config on vmcore's own devices: their Config classes compile no eq, hash or repr of their own."""
    from vmcore.device import _config_eq, _config_hash, _config_repr

    for name in device_registry.names():
        cls = device_registry.get(name).cls.Config
        assert (cls.__eq__, cls.__hash__, cls.__repr__) == (_config_eq, _config_hash, _config_repr), name
        try:
            default = build_config(cls, {})
        except PropertyError:  # a property without a default (a chipset's RAM slot): nothing more to see
            continue
        assert default == build_config(cls, {}), name
        assert repr(default).startswith(f"{cls.__name__}("), name


# --- conversion from profile text --------------------------------------------------------------


@pytest.mark.parametrize(("raw", "value"), [("0x10", 16), ("4K", 4096), ("010", 10), ("1_000", 1000), (7, 7)])
def test_int_property_accepts_hex_decimal_and_unit_text(raw, value):
    assert build_config(WidgetConfig, {"base": raw}).base == value


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("false", False), ("yes", True), ("no", False), ("on", True), ("off", False),
     ("True", True), ("NO", False), ("1", True), ("0", False), (True, True), (False, False)],
)
def test_bool_property_accepts_true_false_yes_no_on_off(raw, value):
    assert build_config(WidgetConfig, {"enabled": raw}).enabled is value


def test_bool_property_rejects_other_text():
    with pytest.raises(PropertyError) as excinfo:
        build_config(WidgetConfig, {"enabled": "maybe"})
    assert excinfo.value.key == "enabled"
    assert "expected true or false, got 'maybe'" in excinfo.value.message


def test_int_property_rejects_a_bool():
    # YAML 1.1's `no` arrives as False; it is not the number 0.
    with pytest.raises(PropertyError) as excinfo:
        build_config(WidgetConfig, {"base": False})
    assert excinfo.value.key == "base"


def test_literal_property_accepts_one_of_its_choices():
    assert build_config(WidgetConfig, {"mode": "slow"}).mode == "slow"


def test_literal_property_error_lists_the_choices():
    with pytest.raises(PropertyError) as excinfo:
        build_config(WidgetConfig, {"mode": "turbo"})
    assert excinfo.value.key == "mode"
    assert excinfo.value.message == "expected one of fast, slow, got 'turbo'"


def test_str_property_takes_text_and_stringifies_scalars():
    assert build_config(WidgetConfig, {"label": "uart0"}).label == "uart0"
    assert build_config(WidgetConfig, {"label": 42}).label == "42"


@pytest.mark.parametrize(("raw", "kind"), [({"a": 1}, "mapping"), ([1, 2], "list")])
def test_str_property_rejects_mappings_and_lists(raw, kind):
    with pytest.raises(PropertyError, match=f"expected text, got a {kind}"):
        build_config(WidgetConfig, {"label": raw})


@pytest.mark.parametrize(("raw", "value"), [("even", Parity.EVEN), ("EVEN", Parity.EVEN), ("none", Parity.NONE)])
def test_enum_property_accepts_value_or_member_name(raw, value):
    assert build_config(WidgetConfig, {"parity": raw}).parity is value


def test_optional_property_takes_none_or_the_inner_type():
    assert build_config(WidgetConfig, {"timeout": None}).timeout is None
    assert build_config(WidgetConfig, {"timeout": "1M"}).timeout == 1 << 20


def test_float_property_converts_text():
    assert convert_value(float, "2.5") == 2.5
    with pytest.raises(ValueError, match="expected a number"):
        convert_value(float, "fast")


def test_unset_properties_keep_their_defaults():
    config = build_config(WidgetConfig, {})
    assert config == WidgetConfig()
    assert config.base == 0x1000 and config.mode == "fast" and config.enabled is True


def test_hyphenated_key_names_the_underscored_property():
    assert build_config(WidgetConfig, {"queue-size": "0x40"}).queue_size == 0x40


# --- errors name the key --------------------------------------------------------------------------


def test_unknown_property_suggests_the_nearest_and_lists_the_known_ones():
    with pytest.raises(PropertyError) as excinfo:
        build_config(WidgetConfig, {"lable": "x"})
    assert excinfo.value.key == "lable"
    assert "unknown property (did you mean 'label'?)" in excinfo.value.message
    assert "known properties: base, ram, enabled, mode, label" in excinfo.value.message


def test_unknown_property_with_nothing_near_gives_no_suggestion():
    with pytest.raises(PropertyError) as excinfo:
        build_config(WidgetConfig, {"zzzzzz": 1})
    assert "did you mean" not in excinfo.value.message


def test_validator_error_carries_the_key():
    with pytest.raises(PropertyError) as excinfo:
        build_config(WidgetConfig, {"label": "w", "base": "0x10000"})
    assert excinfo.value.key == "base"
    assert excinfo.value.message == "must be in 0x0..0xffff, got 0x10000"


def test_validator_error_names_the_failing_key_not_one_whose_name_it_contains():
    # "queue_size must be ..." mentions "queue" as a prefix; the key is still queue_size.
    with pytest.raises(PropertyError) as excinfo:
        build_config(WidgetConfig, {"queue": "2", "queue_size": "0x10000"})
    assert excinfo.value.key == "queue_size"


def test_a_custom_validator_whose_message_names_no_property_still_gets_its_key():
    def even(_instance, _attribute, value):  # type: ignore[no-untyped-def]
        if value % 2:
            raise ValueError(f"must be even, got {value}")

    @attrs.frozen
    class Config:
        lanes: int = prop(2, validator=even)
        width: int = prop(8, validator=in_range(1, 64))

    with pytest.raises(PropertyError) as excinfo:
        build_config(Config, {"width": 16, "lanes": 3})
    assert (excinfo.value.key, excinfo.value.message) == ("lanes", "must be even, got 3")


def test_attrs_builtin_validator_error_carries_the_key():
    @attrs.frozen
    class Config:
        speed: int = prop(1, validator=attrs.validators.in_([1, 2, 4]))
        level: int = prop(0)

    with pytest.raises(PropertyError) as excinfo:
        build_config(Config, {"level": 1, "speed": 3})
    assert excinfo.value.key == "speed"


# --- introspection --------------------------------------------------------------------------------


def test_properties_lists_every_field_with_type_default_doc_and_choices():
    info = {p.name: p for p in properties(WidgetConfig)}
    assert list(info) == ["base", "ram", "enabled", "mode", "label", "parity", "timeout", "queue", "queue_size"]
    assert info["base"] == PropertyInfo("base", "int", 0x1000, "Base address of the register window.", None,
                                        bounds=(0, 0xFFFF))
    assert info["enabled"] == PropertyInfo("enabled", "bool", True, "Whether the widget answers at all.", None)
    assert info["label"].type == "str"
    assert info["mode"].choices == ("fast", "slow")
    assert info["mode"].default == "fast"
    assert info["mode"].type == "choice"
    assert info["parity"].choices == ("none", "even")
    assert info["parity"].type == "Parity"


def test_properties_carry_the_in_range_bounds_shown_in_the_propertys_notation():
    @attrs.frozen
    class Config:
        port: int = prop(0x60, "Port.", hex=True, validator=in_range(0, 0xFFFC))
        irq: int = prop(1, "IRQ.", validator=[attrs.validators.instance_of(int), in_range(0, 15)])
        size: int = prop(1, "Size.")

    info = {p.name: p for p in properties(Config)}
    assert (info["port"].bounds, info["port"].bounds_text()) == ((0, 0xFFFC), "0x0..0xfffc")
    assert (info["irq"].bounds, info["irq"].bounds_text()) == ((0, 15), "0..15")  # found inside attrs' and_
    assert (info["size"].bounds, info["size"].bounds_text()) == (None, "")


def test_properties_of_a_factory_default_show_the_built_value():
    @attrs.frozen
    class Config:
        ports: tuple = prop(attrs.Factory(lambda: (1, 2)), "Ports.")

    assert properties(Config)[0].default == (1, 2)


# --- the registry --------------------------------------------------------------------------------


def test_registry_finds_the_built_in_devices_through_entry_points(device_registry):
    assert "debugcon" in device_registry
    assert "debug-exit" in device_registry
    assert device_registry.get("debugcon").module == "vmcore_devices.debugcon"
    assert device_registry.get("debug-exit").module == "vmcore_devices.debug_exit"
    assert device_registry.get("debugcon").plugin == "debugcon"
    assert {"debugcon", "debug-exit"} <= set(device_registry.names())


def test_registered_type_exposes_its_doc_properties_and_config(device_registry):
    debugcon = device_registry.get("debugcon")
    assert debugcon.doc.startswith("Write-only debug console")
    assert "port" in [p.name for p in debugcon.properties]
    assert debugcon.config({"port": "0xE9"}).port == 0xE9


def test_registry_iterates_in_name_order(device_registry):
    names = [t.name for t in device_registry]
    assert names == sorted(names)


def test_unknown_device_type_suggests_the_nearest_name(device_registry):
    with pytest.raises(DeviceTypeError) as excinfo:
        device_registry.get("debugcom")
    message = str(excinfo.value)
    assert "unknown device type 'debugcom' (did you mean 'debugcon'?)" in message
    assert "debug-exit" in message


def _device_class(type_name, module, with_config=True):
    namespace = {"type_name": type_name, "__module__": module}
    if with_config:
        namespace["Config"] = attrs.frozen(type("Config", (), {"__annotations__": {"x": int}, "x": 0}))
    return type("Thing", (Device,), namespace)


def _plugin(name, *classes):
    module = types.ModuleType(name)

    @hookimpl
    def vmcore_device_types():
        return list(classes)

    module.vmcore_device_types = vmcore_device_types
    return module


def test_registry_takes_device_types_from_a_third_party_plugin():
    plugin = _plugin("acme_plugin", _device_class("acme-widget", "acme.widget"))
    registry = DeviceRegistry.from_plugins(make_plugin_manager(load_entry_points=False, plugins=[plugin]))
    assert registry.names() == ["acme-widget"]
    assert registry.get("acme-widget").module == "acme.widget"
    assert registry.get("acme-widget").plugin == "acme_plugin"


def test_same_type_name_from_two_plugins_is_rejected_naming_both_modules():
    first = _plugin("acme_plugin", _device_class("uart", "acme.uart"))
    second = _plugin("other_plugin", _device_class("uart", "other.serial"))
    with pytest.raises(DeviceTypeError) as excinfo:
        DeviceRegistry.from_plugins(make_plugin_manager(load_entry_points=False, plugins=[first, second]))
    message = str(excinfo.value)
    assert "device type 'uart' is provided twice" in message
    assert "acme.uart" in message and "other.serial" in message
    assert "acme_plugin" in message and "other_plugin" in message


def test_third_party_type_clashing_with_a_built_in_is_rejected():
    clash = _plugin("acme_plugin", _device_class("debugcon", "acme.console"))
    with pytest.raises(DeviceTypeError) as excinfo:
        DeviceRegistry.default(plugins=[clash])
    assert "vmcore_devices.debugcon" in str(excinfo.value)
    assert "acme.console" in str(excinfo.value)


# --- lazy loading: an entry point named after its type is imported when that type is asked for ---

_PLUGIN_SOURCE = """
import attrs
from vmcore.device import Device
from vmcore.hookspecs import hookimpl

def _type(name):
    Config = attrs.frozen(type("Config", (), {"__annotations__": {"x": int}, "x": 0}))
    return type("Thing", (Device,), {"type_name": name, "Config": Config, "__module__": __name__})

@hookimpl
def vmcore_device_types():
    return [_type(name) for name in TYPES]
"""


@pytest.fixture
def entry_points(tmp_path, monkeypatch):
    """Install plugin modules (name -> type names they provide) behind entry points of those
    names, each in a distribution of its own (a .dist-info folder first on sys.path), in place of
    the installed ones; returns a function that does it."""
    import sys

    import vmcore.plugins

    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(vmcore.plugins, "ENTRY_POINT_GROUP", "vmcore-test-lazy")

    def install(plugins: dict[str, list[str]]) -> None:
        for ep_name, types_ in plugins.items():
            module = f"lazy_plugin_{ep_name.replace('-', '_')}"
            (tmp_path / f"{module}.py").write_text(f"TYPES = {types_!r}\n" + _PLUGIN_SOURCE)
            monkeypatch.delitem(sys.modules, module, raising=False)
            info = tmp_path / f"{module}-1.0.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
            (info / "entry_points.txt").write_text(f"[console_scripts]\n{ep_name} = nowhere:main\n\n"
                                                   f"[vmcore-test-lazy]\n{ep_name} = {module}\n")

    return install


def test_registry_imports_only_the_entry_point_named_after_the_type_asked_for(entry_points):
    import sys

    entry_points({"t-one": ["t-one"], "t-two": ["t-two"]})
    registry = DeviceRegistry.default()
    assert registry.get("t-one").module == "lazy_plugin_t_one"
    assert "lazy_plugin_t_one" in sys.modules and "lazy_plugin_t_two" not in sys.modules
    assert registry.names() == ["t-one", "t-two"]  # the whole list imports the rest
    assert "lazy_plugin_t_two" in sys.modules


def test_a_type_under_an_entry_point_of_another_name_is_found_by_loading_them_all(entry_points):
    entry_points({"t-one": ["t-one"], "acme": ["acme-widget", "acme-gadget"]})
    registry = DeviceRegistry.default()
    assert registry.get("acme-gadget").plugin == "acme"
    assert registry.get("t-one").plugin == "t-one"


def test_a_type_provided_twice_is_rejected_once_both_providers_are_loaded(entry_points):
    entry_points({"t-one": ["t-one"], "acme": ["t-one"]})
    registry = DeviceRegistry.default()
    with pytest.raises(DeviceTypeError, match="device type 't-one' is provided twice"):
        registry.names()


def test_a_plugin_given_directly_is_checked_against_the_entry_point_named_after_its_type(entry_points):
    entry_points({"t-one": ["t-one"]})
    with pytest.raises(DeviceTypeError, match="'t-one' is provided twice: by lazy_plugin_t_one"):
        DeviceRegistry.default(plugins=[_plugin("mine", _device_class("t-one", "mine.one"))])


def test_an_entry_point_that_does_not_provide_its_name_leaves_the_name_unknown(entry_points):
    entry_points({"t-one": ["something-else"]})
    registry = DeviceRegistry.default()
    with pytest.raises(DeviceTypeError, match="unknown device type 't-one'; known types: something-else"):
        registry.get("t-one")
    assert "t-one" not in registry and "something-else" in registry


@pytest.mark.parametrize("group", ["vmcore", "pytest11", "console_scripts"])
def test_the_entry_point_scan_finds_what_importlib_metadata_finds(group):
    import importlib.metadata

    from vmcore.plugins import entry_points as scan

    standard = [(ep.name, ep.value) for ep in importlib.metadata.entry_points(group=group)]
    assert standard  # each group has installed entry points here (vmcore's own, pytest's plugins, pip's scripts)
    assert [(ep.name, ep.value) for ep in scan(group)] == standard


def _distribution(folder, name, entries, suffix="dist-info"):
    info = folder / f"{name}-1.0.{suffix}"
    info.mkdir(parents=True)
    (info / "entry_points.txt").write_text("# a comment\n[vmcore-test-scan]\n"
                                           + "".join(f"{k} = {v}\n" for k, v in entries.items()))


def test_the_first_copy_of_a_distribution_on_sys_path_hides_the_later_ones(tmp_path, monkeypatch):
    import importlib.metadata

    from vmcore.plugins import entry_points as scan

    _distribution(tmp_path / "early", "Acme.Widgets", {"w": "early_module:make"})
    _distribution(tmp_path / "late", "acme_widgets", {"w": "late_module", "extra": "late_module"})
    _distribution(tmp_path / "late", "other", {"o": "other_module:a.b [extra]"}, suffix="egg-info")
    monkeypatch.syspath_prepend(str(tmp_path / "late"))
    monkeypatch.syspath_prepend(str(tmp_path / "early"))
    found = [(ep.name, ep.value) for ep in scan("vmcore-test-scan")]
    assert found == [("w", "early_module:make"), ("o", "other_module:a.b [extra]")]
    assert found == [(ep.name, ep.value) for ep in importlib.metadata.entry_points(group="vmcore-test-scan")]


def test_a_zip_on_sys_path_is_read_through_importlib_metadata(tmp_path, monkeypatch):
    import zipfile

    from vmcore.plugins import entry_points as scan

    archive = tmp_path / "plugins.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("zipped-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: zipped\nVersion: 1.0\n")
        zf.writestr("zipped-1.0.dist-info/entry_points.txt", "[vmcore-test-scan]\nz = zipped_module\n")
        zf.writestr("zipped_module.py", "VALUE = 42\n")
    monkeypatch.syspath_prepend(str(archive))
    (ep,) = scan("vmcore-test-scan")
    assert (ep.name, ep.value) == ("z", "zipped_module")
    monkeypatch.delitem(sys.modules, "zipped_module", raising=False)
    assert ep.load().VALUE == 42


def test_an_entry_point_loads_the_attribute_it_names(tmp_path, monkeypatch):
    from vmcore.plugins import EntryPoint

    (tmp_path / "ep_target.py").write_text("class Outer:\n    class Inner:\n        pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "ep_target", raising=False)
    inner = EntryPoint("x", "ep_target : Outer.Inner [extra]").load()
    assert inner.__qualname__ == "Outer.Inner"
    assert EntryPoint("x", "ep_target").load() is sys.modules["ep_target"]


def test_device_class_without_config_is_rejected():
    plugin = _plugin("acme_plugin", _device_class("bare", "acme.bare", with_config=False))
    with pytest.raises(DeviceTypeError, match="plugin acme_plugin: device type 'bare' needs an attrs Config class"):
        DeviceRegistry.from_plugins(make_plugin_manager(load_entry_points=False, plugins=[plugin]))


def test_device_class_with_a_plain_config_class_is_rejected():
    cls = type("Thing", (Device,), {"type_name": "plain", "Config": type("Config", (), {})})
    plugin = _plugin("acme_plugin", cls)
    with pytest.raises(DeviceTypeError, match="needs an attrs Config class"):
        DeviceRegistry.from_plugins(make_plugin_manager(load_entry_points=False, plugins=[plugin]))


def test_device_class_without_type_name_is_rejected():
    cls = type("Nameless", (Device,), {"Config": WidgetConfig})
    plugin = _plugin("acme_plugin", cls)
    with pytest.raises(DeviceTypeError, match="has no type_name"):
        DeviceRegistry.from_plugins(make_plugin_manager(load_entry_points=False, plugins=[plugin]))


def test_the_plugin_managers_quick_lookup_finds_what_pluggys_own_finds() -> None:
    """make_plugin_manager answers a module's unhookable names itself: for every name of every
    built-in device module and of a module holding each kind of hook implementation (a function,
    one under another name, a classmethod's and a staticmethod's, a bound method, an unmarked
    function), its answer is pluggy's."""
    import importlib

    import pluggy

    from vmcore.plugins import entry_points

    class Holder:
        @classmethod
        @hookimpl(specname="vmcore_device_types")
        def as_classmethod(cls) -> list[type]:
            return []

        @hookimpl(specname="vmcore_device_types")
        def bound(self) -> list[type]:
            return []

    odd = types.ModuleType("odd_plugin")
    odd.vmcore_device_types = hookimpl(lambda: [])  # type: ignore[attr-defined]
    odd.renamed = hookimpl(specname="vmcore_device_types")(lambda: [])  # type: ignore[attr-defined]
    odd.from_class = Holder.as_classmethod  # type: ignore[attr-defined]
    odd.static = staticmethod(hookimpl(specname="vmcore_device_types")(lambda: []))  # type: ignore[attr-defined]
    odd.bound = Holder().bound  # type: ignore[attr-defined]
    odd.unmarked = lambda: []  # type: ignore[attr-defined]
    odd.number, odd.Holder = 3, Holder  # type: ignore[attr-defined]
    modules = [importlib.import_module(ep.value) for ep in entry_points("vmcore") if ep.value.startswith("vmcore_devices")]
    ours, theirs = make_plugin_manager(load_entry_points=False), pluggy.PluginManager("vmcore")
    found = 0
    for module in [*modules, odd]:
        for name in dir(module):
            answer = ours.parse_hookimpl_opts(module, name)
            assert answer == theirs.parse_hookimpl_opts(module, name), (module.__name__, name)
            found += answer is not None
    # Each device module's one, and odd's marked ones (pluggy 1.6 passes over a staticmethod object
    # kept in a module: whichever it does, the two agree above).
    assert found >= len(modules) + 4
