"""An Intel MultiProcessor Specification (1.4) table: how a PC's interrupts are wired, for an OS booted without firmware.

An OS finds the I/O APIC and the routing of the ISA interrupts to it in ACPI's MADT or in
this older table, which firmware leaves in memory: a 16-byte *floating pointer* ("_MP_",
searched for in the last KiB of base memory, among other places) pointing at the
*configuration table* ("PCMP"): a header with the local APIC's address, then one entry
per processor, bus, I/O APIC, I/O interrupt and local interrupt (MP spec chapter 4). Each
structure carries a checksum that makes its bytes sum to 0 mod 256.

vmcore writes one for a machine booted by its Linux loader when the profile has a local
APIC and an I/O APIC: one processor (the bootstrap one), an ISA bus, the I/O APIC, ISA
IRQs 0-15 to its pins as on a PC (IRQ 0, the PIT, on pin 2; the others on the pin of their
number) and the local APIC's LINT0 as ExtINT (the 8259) and LINT1 as NMI. It goes at
:data:`MP_BASE`, in the last KiB below 640 KiB, which the e820 map reserves.
"""

from __future__ import annotations

import struct

MP_BASE = 0x9_FC00  # the last KiB of base memory: where an OS looks first (MP spec 4.0)
ISA_IRQS = 16

_PROCESSOR, _BUS, _IOAPIC, _IO_INTERRUPT, _LOCAL_INTERRUPT = range(5)
_INT, _NMI, _EXTINT = 0, 1, 3


def _checksummed(data: bytearray, at: int) -> bytes:
    """``data`` with the byte at ``at`` set so that all its bytes sum to 0 mod 256."""
    data[at] = (-sum(data)) & 0xFF
    return bytes(data)


def mp_table(*, lapic_id: int = 0, lapic_base: int = 0xFEE0_0000, ioapic_id: int = 1,
             ioapic_base: int = 0xFEC0_0000, address: int = MP_BASE) -> bytes:
    """The floating pointer followed by the configuration table, to be placed at ``address``."""
    entries = bytearray()
    # The bootstrap processor: enabled (bit 0), BSP (bit 1); CPUID signature family 6, features FPU + APIC.
    entries += struct.pack("<BBBBII8x", _PROCESSOR, lapic_id, 0x14, 0x3, 0x600, (1 << 0) | (1 << 9))
    entries += struct.pack("<BB6s", _BUS, 0, b"ISA   ")
    entries += struct.pack("<BBBBI", _IOAPIC, ioapic_id, 0x11, 0x1, ioapic_base)
    count = 3
    for irq in range(ISA_IRQS):
        if irq == 2:
            continue  # the cascade: no device behind it
        pin = 2 if irq == 0 else irq
        # Flags 0: the bus's own polarity and trigger (ISA: active high, edge).
        entries += struct.pack("<BBHBBBB", _IO_INTERRUPT, _INT, 0, 0, irq, ioapic_id, pin)
        count += 1
    for kind, lint in ((_EXTINT, 0), (_NMI, 1)):
        entries += struct.pack("<BBHBBBB", _LOCAL_INTERRUPT, kind, 0, 0, 0, 0xFF, lint)  # every local APIC
        count += 1
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBx", b"PCMP", 44 + len(entries), 4, 0, b"VMCORE  ",
                                   b"VMCORE PC   ", 0, 0, count, lapic_base, 0, 0))
    table = _checksummed(header + entries, 7)
    # The floating pointer: the table's address, length 1 (16-byte units), spec 1.4, no default config.
    pointer = _checksummed(bytearray(struct.pack("<4sIBBB5x", b"_MP_", address + 16, 1, 4, 0)), 10)
    return pointer + table
