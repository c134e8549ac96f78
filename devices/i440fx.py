"""Intel 82441FX (i440FX) PCI and memory controller: the host bridge at 00:00.0.

It owns PCI configuration mechanism #1 (PCI Local Bus Specification 3.0, section
3.2.2.3.2): a 32-bit address register at port 0xCF8 and a data window at
0xCFC-0xCFF, and decodes the memory below 1M that firmware shadows:

- PAM0-PAM6 (0x59-0x5F, 82441FX datasheet section 3.2.14): for each of the
  thirteen segments of 0xC0000-0xFFFFF (twelve of 16K, then 64K at 0xF0000), RE
  sends reads and WE writes to DRAM (the ``ram`` slot's bytes at the same address);
  otherwise they go to PCI, where the BIOS ROM's top 128K (the ``bios`` slot) shows at
  0xE0000-0xFFFFF and nothing answers at 0xC0000-0xDFFFF. Reads from DRAM are mapped
  memory (read-only without WE: a guest write goes to PCI, i.e. is dropped); a segment
  with WE but not RE reads the PCI side and writes DRAM through this device's MMIO
  region, which is slow but rare. At reset every segment decodes to PCI, so the CPU's
  first fetches below 1M see the ROM.
- SMRAM (0x72): the 0xA0000-0xBFFFF window shows DRAM while D_OPEN is set, else the
  PCI side (legacy VGA, or nothing). SMM itself is not modelled.

Every change is one update of the guest-physical map (``GuestMemory.overlay``), which
the accelerator follows (KVM slot updates, unicorn remaps) before the guest's next
instruction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, config, prop
from vmcore.memory import GuestMemoryError, MemoryBlock, Overlay
from vmcore.hookspecs import hookimpl
from vmcore.pci import COMMAND, COMMAND_MASTER, COMMAND_MEMORY, STATUS, PciConfig, bus_for

if TYPE_CHECKING:
    from vmcore.fuzz import FuzzScratch

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC

VENDOR_INTEL = 0x8086
DEVICE_82441FX = 0x1237
CLASS_HOST_BRIDGE = 0x0600
REVISION = 0x02

# CONFIG_ADDRESS fields: enable 31, bus 23:16, device 15:11, function 10:8, register 7:2.
ENABLE = 1 << 31
ADDRESS_BITS = ENABLE | 0x00FFFFFC  # 30:24 reserved and 1:0 read as 0

# 82441FX datasheet, section 3.2: PAM0 (0x59) holds only the 0xF0000 BIOS segment in
# bits 5:4; PAM1-PAM6 hold two 16K segments each (bits 1:0 and 5:4, RE and WE).
PAM0 = 0x59
PAM6 = 0x5F
PAM0_WRITABLE = 0x30
PAM_WRITABLE = 0x33
# SMRAM control (0x72): D_OPEN 6, D_CLS 5, D_LCK 4, G_SMRAME 3, C_BASE_SEG 2:0 fixed at 010
# (the 0xA0000 segment). Once D_LCK is set, D_OPEN is cleared and it, D_LCK and G_SMRAME
# are read-only until reset.
SMRAM = 0x72
SMRAM_D_OPEN = 1 << 6
SMRAM_D_CLS = 1 << 5
SMRAM_D_LCK = 1 << 4
SMRAM_G_SMRAME = 1 << 3
SMRAM_DEFAULT = 0x02
SMRAM_WRITABLE = SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME
PAM_RE, PAM_WE = 0x1, 0x2  # per nibble

# The shadowed area: (base, size, PAM register, nibble shift) per segment.
SEGMENTS = tuple(
    [(0xC0000 + 0x4000 * i, 0x4000, PAM0 + 1 + i // 2, 4 * (i % 2)) for i in range(12)]
    + [(0xF0000, 0x10000, PAM0, 4)]
)
SHADOW_BASE, SHADOW_END = 0xC0000, 0x100000
BIOS_ALIAS_BASE, BIOS_ALIAS_SIZE = 0xE0000, 0x20000  # where PCI shows the ROM's top 128K
SMRAM_BASE, SMRAM_SIZE = 0xA0000, 0x20000

# Datasheet defaults: PCICMD memory access and bus master on, PCISTS DEVSEL medium, fast back-to-back.
COMMAND_DEFAULT = COMMAND_MEMORY | COMMAND_MASTER
STATUS_DEFAULT = 0x0280


@config
class I440fxConfig:
    """Ports and slot are fixed by the PC architecture; the properties name the memory it decodes."""

    ram: str = prop("ram", "Memory slot holding DRAM below 1M (it must cover 0xA0000-0xFFFFF); "
                    "empty: no shadowing, the area is left as the profile maps it.")
    bios: str = prop("bios", "ROM slot whose top 128K (or all, if smaller) PCI shows at "
                     "0xE0000-0xFFFFF (the ROM at the top of 4G, typically); empty: none.")
    assign_bars: bool = prop(False, "Give every PCI function's BARs an address and enable decoding before "
                             "the guest starts, as firmware would (for a kernel booted without firmware).")


class I440fx(Device):
    """The i440FX host bridge function and the 0xCF8/0xCFC configuration ports."""

    type_name = "i440fx"
    Config = I440fxConfig
    class State:
        """What a snapshot keeps (vmcore.snapshot): configuration space (PAM, SMRAM) and the
        CONFIG_ADDRESS latch; the memory map follows PAM and SMRAM again when loaded."""

        pci_config: PciConfig
        address: int
        byte_select: int

    def state_loaded(self) -> None:
        self._decode()

    @classmethod
    def fuzz_props(cls, scratch: FuzzScratch) -> dict[str, str]:
        # The fake bus has 1 MiB of RAM named "ram" and no firmware ROM for the PCI side.
        return {"bios": ""}

    def __init__(self, config: I440fxConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.pci = bus_for(ctx)
        self.pci_config = PciConfig()
        self.bars: list = []
        self.address = 0
        self.byte_select = 0
        self.memory = ctx.memory
        self.log = ctx.log
        self.ram: MemoryBlock | None = None
        self.bios: MemoryBlock | None = None
        self.bios_offset = 0
        self._segments: list[Overlay] = []
        self._smram: Overlay | None = None
        self._dropped: set[int] = set()  # segments whose dropped writes were logged
        if config.ram:
            self._shadow_setup(config)
        self.reset()
        self.pci.attach(self, 0, 0, name=ctx.name)

    def _shadow_setup(self, config: I440fxConfig) -> None:
        memory = self.memory
        try:
            ram = memory.home(config.ram)
            bios = memory.block(config.bios) if config.bios else None
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]}; set the i440fx's ram and bios properties") from None
        if ram.readonly or not (ram.base <= SMRAM_BASE and SHADOW_END <= ram.end):
            raise ValueError(f"ram slot {config.ram!r} must be RAM covering {SMRAM_BASE:#x}..{SHADOW_END - 1:#x}")
        self.ram = ram.block
        self.ram_offset = ram.offset - ram.base  # block offset = address + ram_offset
        if bios is not None:
            if bios.size % 0x4000:
                raise ValueError(f"bios slot {config.bios!r} must be a multiple of 16K")
            self.bios = bios
            # A ROM smaller than 128K sits at the top of the window, as QEMU's isa-bios alias does.
            self.bios_offset = bios.size - BIOS_ALIAS_SIZE
        try:
            self._segments = [memory.overlay(f"pam-{base:x}", base, size) for base, size, _reg, _shift in SEGMENTS]
            self._smram = memory.overlay("smram", SMRAM_BASE, SMRAM_SIZE)
        except GuestMemoryError as exc:
            raise ValueError(str(exc)) from None

    def start(self) -> None:
        if self.config.assign_bars:
            self.pci.assign()

    def regions(self) -> Sequence[Region]:
        regions = [
            Region(Space.PIO, CONFIG_ADDRESS, 4, self.read_address, self.write_address, sizes=(1, 2, 4),
                   name="config-address"),
            Region(Space.PIO, CONFIG_DATA, 4, self.read_data, self.write_data, sizes=(1, 2, 4), name="config-data"),
        ]
        if self._segments:
            # Accesses to the shadowed area that memory does not take: writes to segments
            # without WE, and both directions where WE is set without RE.
            regions.append(Region(Space.MMIO, SHADOW_BASE, SHADOW_END - SHADOW_BASE, self.read_shadow,
                                  self.write_shadow, sizes=(1, 2, 4, 8), name="pam"))
        return regions

    def reset(self) -> None:
        config = self.pci_config
        config.data[:] = bytes(len(config.data))
        config.set_ids(VENDOR_INTEL, DEVICE_82441FX)
        config.set_class(CLASS_HOST_BRIDGE)
        config.set_revision(REVISION)
        config.set_word(COMMAND, COMMAND_DEFAULT)
        config.set_word(STATUS, STATUS_DEFAULT)
        config.set_mask(PAM0, 1, writable=PAM0_WRITABLE)
        for register in range(PAM0 + 1, PAM6 + 1):
            config.set_mask(register, 1, writable=PAM_WRITABLE)
        config.set_byte(SMRAM, SMRAM_DEFAULT)
        config.set_mask(SMRAM, 1, writable=SMRAM_WRITABLE)
        self.address = 0
        self.byte_select = 0
        self._decode()

    # --- config space side effects --------------------------------------------------------

    def pci_config_written(self, offset: int, size: int) -> None:
        if offset <= SMRAM < offset + size and self.pci_config.byte(SMRAM) & SMRAM_D_LCK:
            config = self.pci_config
            config.set_byte(SMRAM, config.byte(SMRAM) & ~SMRAM_D_OPEN)
            config.set_mask(SMRAM, 1, writable=SMRAM_D_CLS)
        if offset <= SMRAM and PAM0 < offset + size:
            self._decode()

    def pam(self) -> bytes:
        """PAM0-PAM6 as the guest last wrote them."""
        return bytes(self.pci_config.data[PAM0:PAM6 + 1])

    # --- memory decoding -------------------------------------------------------------------

    def segment_access(self, address: int) -> int:
        """The PAM RE/WE bits (PAM_RE | PAM_WE) of the segment holding ``address``."""
        for base, size, register, shift in SEGMENTS:
            if base <= address < base + size:
                return (self.pci_config.byte(register) >> shift) & (PAM_RE | PAM_WE)
        raise ValueError(f"{address:#x} is not in the shadowed area")

    def _decode(self) -> None:
        """Lay the overlays out as PAM and SMRAM say; the memory map changes once for all of them."""
        if not self._segments or self.ram is None:
            return
        changes = []
        with self.memory.transaction():
            for overlay, (base, _size, register, shift) in zip(self._segments, SEGMENTS):
                access = (self.pci_config.byte(register) >> shift) & (PAM_RE | PAM_WE)
                before = overlay.target
                if access & PAM_RE:
                    overlay.show(self.ram, base + self.ram_offset, readonly=not access & PAM_WE)
                elif base >= BIOS_ALIAS_BASE and self.bios is not None and not access & PAM_WE:
                    offset = self.bios_offset + base - BIOS_ALIAS_BASE
                    if offset >= 0:
                        overlay.show(self.bios, offset, readonly=True)
                    else:
                        overlay.hide()
                else:
                    overlay.hide()  # the PCI side has no memory here, or writes must reach DRAM: our region
                if overlay.target != before:
                    changes.append(f"{base:#x}-{base + _size - 1:#x} {_ACCESS_NAMES[access]}")
            assert self._smram is not None
            if self.pci_config.byte(SMRAM) & SMRAM_D_OPEN:
                self._smram.show(self.ram, SMRAM_BASE + self.ram_offset)
            else:
                self._smram.hide()
        if changes:
            self.log.info("PAM: %s", ", ".join(changes))

    def _pci_byte_view(self, address: int) -> int:
        """What PCI answers for a read at ``address`` in the shadowed area (no DRAM): ROM or all ones."""
        if self.bios is not None and address >= BIOS_ALIAS_BASE:
            offset = self.bios_offset + address - BIOS_ALIAS_BASE
            if offset >= 0:
                return self.bios.view[offset]
        return 0xFF

    def read_shadow(self, offset: int, size: int) -> int:
        address = SHADOW_BASE + offset
        if self.segment_access(address) & PAM_RE and self.ram is not None:
            # Mapped memory answers these; here only if an accelerator asks anyway (an access
            # straddling two segments, say).
            start = address + self.ram_offset
            return int.from_bytes(self.ram.view[start : start + size], "little")
        data = bytes(self._pci_byte_view(address + i) for i in range(size))
        return int.from_bytes(data, "little")

    def write_shadow(self, offset: int, size: int, value: int) -> None:
        address = SHADOW_BASE + offset
        for i in range(size):
            here = address + i
            if self.segment_access(here) & PAM_WE and self.ram is not None:
                self.ram.view[here + self.ram_offset] = (value >> (8 * i)) & 0xFF
                continue
            segment = next(base for base, size_, _r, _s in SEGMENTS if base <= here < base + size_)
            if segment not in self._dropped:
                self._dropped.add(segment)
                self.log.info("write to %#x dropped: PAM sends writes in %#x.. to PCI (read-only)", here, segment)

    # --- mechanism #1 -------------------------------------------------------------------------

    def read_address(self, offset: int, size: int) -> int:
        # Only a dword access at 0xCF8 is CONFIG_ADDRESS; narrower ones belong to the ISA side
        # (0xCF9 is the PIIX3 reset control register, not modelled here).
        if offset != 0 or size != 4:
            return (1 << (8 * size)) - 1
        return self.address

    def write_address(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.address = value & ADDRESS_BITS
            # Bits 1:0 read back as 0, yet select the byte the data port starts at, as in
            # QEMU (register | port offset): kvm-unit-tests reads the device ID by writing
            # register 2 here and reading a word at 0xCFC.
            self.byte_select = value & 0x3

    def _target(self) -> tuple[int, int, int, int] | None:
        address = self.address
        if not address & ENABLE:
            return None
        return (address >> 16) & 0xFF, (address >> 11) & 0x1F, (address >> 8) & 0x7, address & 0xFC | self.byte_select

    def read_data(self, offset: int, size: int) -> int:
        target = self._target()
        if target is None:
            return (1 << (8 * size)) - 1
        bus, device, function, register = target
        return self.pci.config_read(bus, device, function, register | offset, size)

    def write_data(self, offset: int, size: int, value: int) -> None:
        target = self._target()
        if target is None:
            return
        bus, device, function, register = target
        self.pci.config_write(bus, device, function, register | offset, size, value)


_ACCESS_NAMES = {0: "PCI (ROM)", PAM_RE: "DRAM read-only", PAM_WE: "DRAM write-only",
                 PAM_RE | PAM_WE: "DRAM read/write"}


@hookimpl
def vmcore_device_types() -> list[type]:
    return [I440fx]
