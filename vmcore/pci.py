"""PCI: configuration space, BARs, and the bus that places BARs on the port-IO and MMIO buses.

What a PCI device plugin writes is a **PCI function**: any object with

- ``pci_config``: a :class:`PciConfig`, its 256-byte configuration space;
- ``bars``: a list of :class:`Bar` (empty for a function without BARs); call
  :meth:`Bar.install` on the config for each, or pass them to :meth:`PciConfig.add_bars`;
- ``bar_region(bar_index, base) -> Region`` (or a list of Regions): the region(s) that
  serve BAR ``bar_index`` when the guest has placed it at ``base``. Handlers get offsets
  from ``base``, as any region's do, so the device never sees where the BAR is. Only
  needed when ``bars`` is not empty;
- optionally ``pci_config_written(offset, size)``: called after every guest write to the
  config space has gone through the masks (for registers with side effects).

A device attaches its function in its constructor with
``PciBus.attach(function, device_number, function_number, name=ctx.name)``, on the
``ctx.pci`` the machine or the fake bus hands it (see :func:`bus_for`), and returns no
region for its BARs from ``regions()``: the PCI bus claims and releases those itself.

BARs follow the guest (PCI Local Bus Specification 3.0, section 6.2.5): a BAR is mapped
while the command register enables its kind of decoding (bit 0 I/O space, bit 1 memory
space) and its address is usable (not zero, inside the space); it is claimed on the pio or
mmio bus with owner ``"<name>:bar<n>"``, moved when the guest writes another address, and
released when decoding is turned off. A placement that overlaps another claim is logged and
left unmapped (real hardware would decode both; the guest sees all ones instead), never an
exception into the guest; the next write to that function's command register or BARs tries
again.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence

from .bus import Bus, BusError, Direction, Region, Space, Transaction
from .immutable import Immutable

log = logging.getLogger("vmcore.pci")

CONFIG_SIZE = 256

# Type 0 header offsets (PCI Local Bus Specification 3.0, section 6.1).
VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION_ID = 0x08
PROG_IF = 0x09
CLASS_CODE = 0x0A  # sub-class at 0x0A, base class at 0x0B
CACHE_LINE_SIZE = 0x0C
LATENCY_TIMER = 0x0D
HEADER_TYPE = 0x0E
BAR0 = 0x10
BAR_END = 0x28  # one past BAR5
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D

# Command register bits (section 6.2.2).
COMMAND_IO = 1 << 0
COMMAND_MEMORY = 1 << 1
COMMAND_MASTER = 1 << 2
COMMAND_PARITY = 1 << 6
COMMAND_SERR = 1 << 8
COMMAND_INTX_DISABLE = 1 << 10
#: What the guest may change in the command register of a plain function.
COMMAND_WRITABLE = COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | COMMAND_PARITY | COMMAND_SERR | COMMAND_INTX_DISABLE

# Status register bits (section 6.2.3): the error bits are "set by hardware, cleared by
# writing 1" (write-1-to-clear); the others are read-only.
STATUS_INTERRUPT = 1 << 3
STATUS_CAPABILITIES = 1 << 4
STATUS_MASTER_PARITY_ERROR = 1 << 8
STATUS_SIGNALED_TARGET_ABORT = 1 << 11
STATUS_RECEIVED_TARGET_ABORT = 1 << 12
STATUS_RECEIVED_MASTER_ABORT = 1 << 13
STATUS_SIGNALED_SYSTEM_ERROR = 1 << 14
STATUS_DETECTED_PARITY_ERROR = 1 << 15
STATUS_W1C = (STATUS_MASTER_PARITY_ERROR | STATUS_SIGNALED_TARGET_ABORT | STATUS_RECEIVED_TARGET_ABORT
              | STATUS_RECEIVED_MASTER_ABORT | STATUS_SIGNALED_SYSTEM_ERROR | STATUS_DETECTED_PARITY_ERROR)

HEADER_MULTIFUNCTION = 0x80

MAX_DEVICES = 32
MAX_FUNCTIONS = 8


class PciError(ValueError):
    """A function that cannot be attached (taken slot, bad numbers, bad BAR).

    A ValueError, so a device's constructor raising it is reported against the profile.
    """


class PciConfig:
    """A function's 256-byte configuration space with per-bit write and write-1-to-clear masks.

    The device sets registers with the ``set_*`` helpers and the raw ``set_byte``/
    ``set_word``/``set_long`` (no masks: the device is the hardware); the guest goes
    through :meth:`read` and :meth:`write`, where a bit changes only if its ``wmask``
    bit is set, and a 1 written to a ``w1cmask`` bit clears it. Every other bit is
    read-only. The defaults make the command register's decode, master, parity, SERR
    and INTx-disable bits writable, the status error bits write-1-to-clear, and the
    cache line size, latency timer and interrupt line registers writable.
    """

    __slots__ = ("data", "wmask", "w1cmask")

    def __init__(self) -> None:
        self.data = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1cmask = bytearray(CONFIG_SIZE)
        self.set_mask(COMMAND, 2, writable=COMMAND_WRITABLE)
        self.set_mask(STATUS, 2, w1c=STATUS_W1C)
        self.set_mask(CACHE_LINE_SIZE, 1, writable=0xFF)
        self.set_mask(LATENCY_TIMER, 1, writable=0xFF)
        self.set_mask(INTERRUPT_LINE, 1, writable=0xFF)

    # --- the guest's view ------------------------------------------------------------------

    def save_state(self) -> dict[str, bytes]:
        """The configuration space and what is writable in it, for a snapshot (vmcore.snapshot): a
        device's State can hold its PciConfig. Whoever decodes it (BARs, the device's own side
        effects) follows the loaded bytes in the device's ``state_loaded``."""
        return {"data": bytes(self.data), "wmask": bytes(self.wmask), "w1cmask": bytes(self.w1cmask)}

    def load_state(self, state: dict[str, bytes]) -> None:
        for name in ("data", "wmask", "w1cmask"):
            value = state[name]
            if not isinstance(value, bytes) or len(value) != CONFIG_SIZE:
                raise ValueError(f"the saved {name} is not {CONFIG_SIZE} bytes")
            getattr(self, name)[:] = value

    def read(self, offset: int, size: int) -> int:
        """``size`` bytes at ``offset``, little-endian; bytes past the end read 0xFF."""
        value = 0
        for k in range(size):
            at = offset + k
            value |= (self.data[at] if 0 <= at < CONFIG_SIZE else 0xFF) << (8 * k)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write through the masks; bytes past the end are dropped."""
        data, wmask, w1c = self.data, self.wmask, self.w1cmask
        for k in range(size):
            at = offset + k
            if not 0 <= at < CONFIG_SIZE:
                continue
            byte = (value >> (8 * k)) & 0xFF
            keep = data[at] & ~wmask[at]
            data[at] = (keep | (byte & wmask[at])) & ~(byte & w1c[at]) & 0xFF

    # --- the device's view ------------------------------------------------------------------

    def byte(self, offset: int) -> int:
        return self.data[offset]

    def word(self, offset: int) -> int:
        return int.from_bytes(self.data[offset:offset + 2], "little")

    def long(self, offset: int) -> int:
        return int.from_bytes(self.data[offset:offset + 4], "little")

    def set_byte(self, offset: int, value: int) -> None:
        self.data[offset] = value & 0xFF

    def set_word(self, offset: int, value: int) -> None:
        self.data[offset:offset + 2] = (value & 0xFFFF).to_bytes(2, "little")

    def set_long(self, offset: int, value: int) -> None:
        self.data[offset:offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")

    def set_mask(self, offset: int, size: int, *, writable: int | None = None, w1c: int | None = None) -> None:
        """Set the writable and/or write-1-to-clear bits of ``size`` bytes at ``offset``."""
        for k in range(size):
            if writable is not None:
                self.wmask[offset + k] = (writable >> (8 * k)) & 0xFF
            if w1c is not None:
                self.w1cmask[offset + k] = (w1c >> (8 * k)) & 0xFF

    def set_ids(self, vendor: int, device: int) -> None:
        self.set_word(VENDOR_ID, vendor)
        self.set_word(DEVICE_ID, device)

    def set_subsystem(self, vendor: int, device: int) -> None:
        self.set_word(SUBSYSTEM_VENDOR_ID, vendor)
        self.set_word(SUBSYSTEM_ID, device)

    def set_class(self, class_code: int, prog_if: int = 0) -> None:
        """``class_code`` is base class and sub-class, e.g. 0x0600 for a host bridge."""
        self.set_word(CLASS_CODE, class_code)
        self.set_byte(PROG_IF, prog_if)

    def set_revision(self, revision: int) -> None:
        self.set_byte(REVISION_ID, revision)

    def set_header_type(self, header_type: int) -> None:
        """0x00 for a plain function, with 0x80 (multi-function) on function 0 of a multi-function device."""
        self.set_byte(HEADER_TYPE, header_type)

    def set_interrupt_pin(self, pin: int) -> None:
        """0 none, 1-4 INTA#-INTD#; read-only to the guest (the line register is the writable one)."""
        if not 0 <= pin <= 4:
            raise PciError(f"interrupt pin must be 0 (none) or 1-4 (INTA#-INTD#), got {pin}")
        self.set_byte(INTERRUPT_PIN, pin)

    def add_bars(self, bars: Sequence["Bar"]) -> None:
        for bar in bars:
            bar.install(self)

    @property
    def command(self) -> int:
        return self.word(COMMAND)

    @property
    def status(self) -> int:
        return self.word(STATUS)

    @property
    def interrupt_line(self) -> int:
        return self.data[INTERRUPT_LINE]

    @property
    def interrupt_pin(self) -> int:
        return self.data[INTERRUPT_PIN]


def _check_bar(bar: "Bar") -> None:
    kind, size = bar.kind, bar.size
    last = 4 if kind == "mem64" else 5
    if not 0 <= bar.index <= last:
        raise PciError(f"BAR index must be 0..{last} for a {kind} BAR, got {bar.index}")
    if size <= 0 or size & (size - 1):
        raise PciError(f"BAR{bar.index} size must be a power of two, got {size:#x}")
    # I/O BARs decode at least 4 bytes and at most 256 (section 6.2.5.1); memory at least 16.
    if kind == "io" and not 4 <= size <= 256:
        raise PciError(f"I/O BAR{bar.index} size must be 4..256 bytes, got {size:#x}")
    if kind != "io" and size < 16:
        raise PciError(f"memory BAR{bar.index} size must be at least 16 bytes, got {size:#x}")
    if kind == "mem32" and size > 1 << 31:
        raise PciError(f"32-bit memory BAR{bar.index} cannot be larger than 2 GiB, got {size:#x}")
    if kind == "io" and bar.prefetchable:
        raise PciError(f"I/O BAR{bar.index} cannot be prefetchable")


class Bar(Immutable):
    """A base address register: what the function decodes, not where (that is the guest's).

    ``kind`` is ``io`` (port space), ``mem32`` or ``mem64`` (which also takes register
    ``index + 1``). The register's low bits say the type and are read-only; the address
    bits below ``size`` are read-only zero, so the guest's sizing write of all ones
    reads back ``~(size - 1)`` with the type bits (section 6.2.5.1).
    """

    index: int
    kind: Literal["io", "mem32", "mem64"]
    size: int
    prefetchable: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("io", "mem32", "mem64"):
            raise PciError(f"BAR kind must be io, mem32 or mem64, got {self.kind!r}")
        _check_bar(self)

    @property
    def offset(self) -> int:
        """Where the register is in config space."""
        return BAR0 + 4 * self.index

    @property
    def space(self) -> Space:
        return Space.PIO if self.kind == "io" else Space.MMIO

    @property
    def type_bits(self) -> int:
        if self.kind == "io":
            return 0x1
        return (0x4 if self.kind == "mem64" else 0x0) | (0x8 if self.prefetchable else 0)

    @property
    def limit(self) -> int:
        """One past the highest address the BAR can decode."""
        return {"io": 1 << 16, "mem32": 1 << 32, "mem64": 1 << 64}[self.kind]

    def install(self, config: PciConfig) -> None:
        """Put the type bits and the address mask into ``config``."""
        mask = ~(self.size - 1)
        config.set_long(self.offset, self.type_bits)
        config.set_mask(self.offset, 4, writable=mask & 0xFFFFFFFF & ~(0x3 if self.kind == "io" else 0xF))
        if self.kind == "mem64":
            config.set_long(self.offset + 4, 0)
            config.set_mask(self.offset + 4, 4, writable=(mask >> 32) & 0xFFFFFFFF)

    def address(self, config: PciConfig) -> int:
        """The base address the guest has programmed."""
        low = config.long(self.offset)
        if self.kind == "io":
            return low & 0xFFFFFFFC
        base = low & 0xFFFFFFF0
        if self.kind == "mem64":
            base |= config.long(self.offset + 4) << 32
        return base


class PciFunction(Protocol):
    """What :meth:`PciBus.attach` takes (see the module documentation)."""

    pci_config: PciConfig
    bars: list[Bar]

    def bar_region(self, bar_index: int, base: int) -> Region | Sequence[Region]: ...


class _Slot:
    """A function attached to the bus, under its device's name, and where its BARs are mapped."""

    __slots__ = ("function", "name", "mapped")

    def __init__(self, function: Any, name: str) -> None:
        self.function = function
        self.name = name
        #: bar index -> (base, [(bus, region claimed)])
        self.mapped: dict[int, tuple[int, list[tuple[Bus, Region]]]] = {}


class PciBus:
    """PCI bus 0: functions by device and function number, config access, BAR placement.

    ``pio`` and ``mmio`` are the buses BARs are claimed on; either may be None (its BARs
    then never map, which is what a bus from :func:`bus_for` without a machine does).
    """

    def __init__(self, pio: Bus | None = None, mmio: Bus | None = None) -> None:
        self.pio = pio
        self.mmio = mmio
        self._slots: dict[tuple[int, int], _Slot] = {}
        #: Called with a ``Space.PCI`` Transaction for every config access (tracing), or None.
        self.tracer: Callable[[Transaction], None] | None = None

    def attach(self, function: Any, device_number: int, function_number: int = 0, name: str | None = None) -> None:
        """Put ``function`` at ``00:device_number.function_number``; a taken slot names both."""
        if not 0 <= device_number < MAX_DEVICES or not 0 <= function_number < MAX_FUNCTIONS:
            raise PciError(f"PCI device must be 0..31 and function 0..7, got {device_number}.{function_number}")
        name = name or type(function).__name__
        where = f"00:{device_number:02x}.{function_number}"
        taken = self._slots.get((device_number, function_number))
        if taken is not None:
            raise PciError(f"PCI {where} is already taken by {taken.name}; cannot attach {name} there")
        if function.bars and getattr(function, "bar_region", None) is None:
            raise PciError(f"{name}: a function with BARs needs a bar_region(bar_index, base) method")
        slot = self._slots[(device_number, function_number)] = _Slot(function, name)
        self._update(slot)

    def detach(self, name: str) -> list[tuple[tuple[int, int], Any]]:
        """Take the functions attached under ``name`` off the bus, their BARs unmapped; returns
        what :meth:`reattach` puts back (a hot reload frees the slot for the new instance)."""
        held = [(key, slot) for key, slot in self._slots.items() if slot.name == name]
        for key, slot in held:
            self._unmap(slot)
            del self._slots[key]
        return held

    def reattach(self, held: list[tuple[tuple[int, int], Any]]) -> None:
        """Put back what :meth:`detach` took, its BARs placed again as its configuration says; a
        function attached there since is taken off first."""
        for key, slot in held:
            replaced = self._slots.pop(key, None)
            if replaced is not None:
                self._unmap(replaced)
            self._slots[key] = slot
            self._update(slot)

    @staticmethod
    def _unmap(slot: _Slot) -> None:
        """Every BAR of ``slot`` off its bus."""
        for _base, claimed in slot.mapped.values():
            for bus, region in claimed:
                bus.unclaim(region)
        slot.mapped.clear()

    def owners(self) -> set[str]:
        """The names the functions on the bus were attached under (their devices')."""
        return {slot.name for slot in self._slots.values() if slot.name}

    def function(self, device_number: int, function_number: int = 0) -> Any | None:
        """The function at ``00:dd.f``, or None."""
        slot = self._slots.get((device_number, function_number))
        return None if slot is None else slot.function

    def functions(self) -> Iterator[tuple[tuple[int, int], Any]]:
        """((device, function), function) for every attached function, in slot order."""
        for key in sorted(self._slots):
            yield key, self._slots[key].function

    def mapping(self, function: Any, bar_index: int) -> int | None:
        """Where BAR ``bar_index`` of ``function`` is mapped now, or None."""
        for slot in self._slots.values():
            if slot.function is function:
                placed = slot.mapped.get(bar_index)
                return None if placed is None else placed[0]
        return None

    def bar_regions(self) -> list[Region]:
        """The regions every mapped BAR has claimed, in slot and BAR order."""
        return [region for key in sorted(self._slots) for _base, claimed in
                (self._slots[key].mapped[index] for index in sorted(self._slots[key].mapped))
                for _bus, region in claimed]

    # --- configuration access ------------------------------------------------------------

    def config_read(self, bus: int, device: int, function: int, offset: int, size: int) -> int:
        """A config read; an absent function (or any bus but 0) reads all ones (master abort)."""
        slot = self._slots.get((device, function)) if bus == 0 else None
        value = (1 << (8 * size)) - 1 if slot is None else slot.function.pci_config.read(offset, size)
        if self.tracer is not None:
            self.tracer(Transaction(Space.PCI, bus << 16 | device << 11 | function << 8 | offset, size,
                                    Direction.READ, value, slot.name if slot is not None else None))
        return value

    def config_write(self, bus: int, device: int, function: int, offset: int, size: int, value: int) -> None:
        """A config write through the function's masks; to an absent function it is dropped."""
        slot = self._slots.get((device, function)) if bus == 0 else None
        if self.tracer is not None:
            self.tracer(Transaction(Space.PCI, bus << 16 | device << 11 | function << 8 | offset, size,
                                    Direction.WRITE, value, slot.name if slot is not None else None))
        if slot is None:
            return
        slot.function.pci_config.write(offset, size, value)
        written = getattr(slot.function, "pci_config_written", None)
        if written is not None:
            written(offset, size)
        end = offset + size
        if offset < COMMAND + 2 and end > COMMAND or offset < BAR_END and end > BAR0:
            self._update(slot)

    def update(self, function: Any) -> None:
        """Place ``function``'s BARs again (after the device changed its own config, e.g. on reset)."""
        for slot in self._slots.values():
            if slot.function is function:
                self._update(slot)

    def assign(self, memory_window: tuple[int, int] = (0xE000_0000, 0xFEC0_0000),
               io_window: tuple[int, int] = (0xC000, 0x10000)) -> None:
        """Give every BAR an address and turn decoding on, as PC firmware does before it boots.

        For machines that load a kernel without firmware (kvm-unit-tests reads the BARs it
        finds, as SeaBIOS left them). BARs are laid out largest first, each aligned to its
        size, memory ones in ``memory_window`` (below the I/O APIC), I/O ones in
        ``io_window``; a BAR that does not fit is left at 0 and logged.
        """
        cursors = {"io": io_window[0], "mem": memory_window[0]}
        ends = {"io": io_window[1], "mem": memory_window[1]}
        wanted = [(bar.size, key, bar) for key in sorted(self._slots) for bar in self._slots[key].function.bars]
        for size, key, bar in sorted(wanted, key=lambda item: (-item[0], item[1], item[2].index)):
            slot = self._slots[key]
            config = slot.function.pci_config
            kind = "io" if bar.kind == "io" else "mem"
            base = (cursors[kind] + size - 1) & ~(size - 1)
            if base + size > ends[kind]:
                log.warning("%s: no room for BAR%d (%#x bytes) in the %s window", slot.name, bar.index, size, kind)
                continue
            cursors[kind] = base + size
            type_bits = config.long(bar.offset) & (0x3 if kind == "io" else 0xF)
            config.set_long(bar.offset, type_bits | base & 0xFFFFFFFF)
            if bar.kind == "mem64":
                config.set_long(bar.offset + 4, base >> 32)
            config.set_word(COMMAND, config.word(COMMAND) | (COMMAND_IO if kind == "io" else COMMAND_MEMORY))
        for slot in self._slots.values():
            self._update(slot)

    # --- BAR placement ---------------------------------------------------------------------

    def _update(self, slot: _Slot) -> None:
        config = slot.function.pci_config
        command = config.word(COMMAND)
        for bar in slot.function.bars:
            enabled = command & (COMMAND_IO if bar.kind == "io" else COMMAND_MEMORY)
            base = bar.address(config)
            # Address 0 means "not assigned" to firmware and OSes alike.
            wanted = base if enabled and base != 0 and base + bar.size <= bar.limit else None
            placed = slot.mapped.get(bar.index)
            if placed is not None:
                if placed[0] == wanted:
                    continue
                for bus, region in placed[1]:
                    bus.unclaim(region)
                del slot.mapped[bar.index]
            if wanted is not None:
                self._place(slot, bar, wanted)

    def _place(self, slot: _Slot, bar: Bar, base: int) -> None:
        bus = self.pio if bar.space is Space.PIO else self.mmio
        if bus is None:
            return
        made = slot.function.bar_region(bar.index, base)
        regions = [made] if isinstance(made, Region) else list(made)
        owner = f"{slot.name}:bar{bar.index}"
        claimed: list[tuple[Bus, Region]] = []
        try:
            for region in regions:
                if region.space is not bar.space:
                    raise BusError(f"{owner}: bar_region gave a {region.space.value} region for a {bar.kind} BAR")
                bus.claim(region, owner)
                claimed.append((bus, region))
        except BusError as exc:
            for done_bus, region in claimed:
                done_bus.unclaim(region)
            log.warning("%s: BAR%d at %#x left unmapped: %s", slot.name, bar.index, base, exc)
            return
        slot.mapped[bar.index] = (base, claimed)


def bus_for(ctx: Any) -> PciBus:
    """The PCI bus a device attaches to: ``ctx.pci``, or a private one where there is none.

    A builder that predates PCI (or a test building its own DeviceContext) gives no bus;
    the private one keeps config space working, and its BARs never map.
    """
    pci = getattr(ctx, "pci", None)
    return pci if pci is not None else PciBus()
