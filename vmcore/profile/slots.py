"""The ``memory`` section: slots, the images that fill them, and the bounds on guest memory."""

from __future__ import annotations

import os
from pathlib import Path

from ..units import format_size, parse_int
from .errors import ProfileError, Where
from .host_paths import host_path, not_a_file
from .specs import SlotSpec
from .values import choice, int_value, scalar_node, unknown_keys
from .yaml_tree import Mapping, Node

SLOT_KINDS = ("ram", "rom")
PHYS_BITS = 52  # x86-64 architectural maximum guest-physical address width
#: Total guest memory a profile may ask for unless VMCORE_MAX_GUEST_MEMORY says otherwise.
DEFAULT_MAX_GUEST_MEMORY = 64 << 30
MAX_GUEST_MEMORY_ENV = "VMCORE_MAX_GUEST_MEMORY"


def validate_slot(name: str, node: Node, key_where: Where) -> SlotSpec:
    key = f"memory.{name}"
    if not isinstance(node, Mapping):
        raise ProfileError(key_where, key, "expected a slot: base, size, kind (ram or rom), optional image and offset")
    unknown_keys(node, ("base", "size", "kind", "image", "offset", "missing"), key)
    if "size" not in node:
        raise ProfileError(key_where, f"{key}.size", "missing; every slot needs a size like 4K, 1M or 1G")
    base = int_value(node["base"], f"{key}.base", "an address like 0 or 0x100000") if "base" in node else 0
    size = int_value(node["size"], f"{key}.size", "a size like 4K, 1M or 1G")
    if size <= 0 or size % 4096:
        raise ProfileError(node["size"].where, f"{key}.size", f"must be a positive multiple of 4K (the page size), got {size:#x}")
    if base % 4096:
        raise ProfileError(node["base"].where, f"{key}.base", f"must be 4K-aligned, got {base:#x}")
    if base >= 1 << PHYS_BITS:
        raise ProfileError(node["base"].where, f"{key}.base",
                           f"{base:#x} is past the {PHYS_BITS}-bit guest-physical space (top {(1 << PHYS_BITS) - 1:#x})")
    if base + size > 1 << PHYS_BITS:
        raise ProfileError(node["size"].where, f"{key}.size",
                           f"the slot runs past the {PHYS_BITS}-bit guest-physical space")
    kind = choice(node["kind"], f"{key}.kind", SLOT_KINDS) if "kind" in node else "ram"
    image = None
    if "image" in node:
        image_node = scalar_node(node["image"], f"{key}.image", "the path of an image file")
        if not image_node.value.strip():
            raise ProfileError(image_node.where, f"{key}.image", "expected the path of an image file, got ''")
        folder = Path(image_node.where.file).parent if image_node.where.line else Path.cwd()
        image = host_path(folder, image_node.value)
        problem = not_a_file(image)
        if problem:
            # ``missing``: the profile's own advice for an absent image (e.g. the package to install).
            hint = ""
            if "missing" in node:
                hint = "; " + scalar_node(node["missing"], f"{key}.missing", "advice text").value
            raise ProfileError(image_node.where, f"{key}.image",
                               f"image file {image_node.value} {problem} (looked at {image}){hint}")
    offset = int_value(node["offset"], f"{key}.offset", "an offset into the slot like 0 or 0x1000") if "offset" in node else 0
    if offset and image is None:
        raise ProfileError(node["offset"].where, f"{key}.offset", "an offset needs an image to place")
    if offset >= size:
        raise ProfileError(node["offset"].where, f"{key}.offset",
                           f"{offset:#x} is past the end of the {size:#x}-byte slot")
    if image is not None:
        # What the file says now; SlotSpec.read_image bounds the read itself (a /proc file says 0).
        length = image.stat().st_size
        if offset + length > size:
            raise ProfileError(
                node["image"].where, f"{key}.image",
                f"image is {length} bytes; at offset {offset:#x} it does not fit in the {size:#x}-byte slot",
            )
    return SlotSpec(name=name, base=base, size=size, kind=kind, image=image, offset=offset, where=key_where,
                    image_where=node["image"].where if image is not None else None)


def max_guest_memory() -> int:
    """The most guest memory one profile may ask for: $VMCORE_MAX_GUEST_MEMORY, else 64G."""
    text = os.environ.get(MAX_GUEST_MEMORY_ENV)
    if text is None or not text.strip():
        return DEFAULT_MAX_GUEST_MEMORY
    where = Where(f"<environment: {MAX_GUEST_MEMORY_ENV}={text}>")
    try:
        limit = parse_int(text)
    except ValueError:
        raise ProfileError(where, MAX_GUEST_MEMORY_ENV, f"expected a size like 64G or 512M, got {text!r}") from None
    if limit <= 0:
        raise ProfileError(where, MAX_GUEST_MEMORY_ENV, f"must be positive, got {text!r}")
    return limit


def _size_text(size: int) -> str:
    text = format_size(size)
    return text if not text.isdigit() else f"{text} bytes"


def check_total_memory(slots: tuple[SlotSpec, ...]) -> None:
    """Every slot is an anonymous host mapping: refuse totals the host should not be asked for."""
    limit = max_guest_memory()
    total = sum(slot.size for slot in slots)
    if total <= limit:
        return
    before = 0
    for slot in slots:  # in file order: the slot that crosses the limit is the one to name
        if before + slot.size > limit:
            raise ProfileError(
                slot.where, f"memory.{slot.name}",
                f"the slots add up to {_size_text(total)}, more than the {_size_text(limit)} of guest memory "
                f"a profile may have; this slot ({_size_text(slot.size)}) takes the total from "
                f"{_size_text(before)} to {_size_text(before + slot.size)} "
                f"(set {MAX_GUEST_MEMORY_ENV} to change the limit)",
            )
        before += slot.size


def check_slot_overlaps(slots: tuple[SlotSpec, ...]) -> None:
    ordered = sorted(slots, key=lambda s: s.base)
    for a, b in zip(ordered, ordered[1:]):
        if b.base < a.base + a.size:
            raise ProfileError(
                b.where, f"memory.{b.name}",
                f"{b.base:#x}..{b.base + b.size - 1:#x} overlaps slot {a.name!r} "
                f"({a.base:#x}..{a.base + a.size - 1:#x}, {a.where})",
            )
