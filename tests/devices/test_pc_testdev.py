"""devices/pc_testdev.py: QEMU's pc-testdev on the fake bus (what kvm-unit-tests expects of it)."""

from vmcore.fuzz import assert_survives_fuzzing

SCRATCH, FLUSH, IRQ, IOMEM = 0xE0, 0xE4, 0x2000, 0xFF00_0000


def test_the_scratch_register_keeps_byte_lanes_at_every_width_and_port(fake_bus):
    fake_bus.attach("pc-testdev")
    fake_bus.outl(SCRATCH, 0x11223344)
    assert fake_bus.inl(SCRATCH) == 0x11223344
    assert fake_bus.inw(SCRATCH + 2) == 0x1122 and fake_bus.inb(SCRATCH + 1) == 0x33
    fake_bus.outb(SCRATCH + 3, 0xAA)
    fake_bus.outw(SCRATCH, 0xBEEF)
    assert fake_bus.inl(SCRATCH) == 0xAA22BEEF


def test_irq_ports_set_line_levels(fake_bus):
    fake_bus.attach("pc-testdev")
    fake_bus.outb(IRQ + 5, 1)
    assert fake_bus.irq_level(5)
    fake_bus.outb(IRQ + 5, 0)
    assert not fake_bus.irq_level(5)
    fake_bus.outb(IRQ + 23, 7)
    assert fake_bus.irq_level(23)


def test_iomem_is_64k_of_scratch_memory_at_any_width(fake_bus):
    device = fake_bus.attach("pc-testdev")
    fake_bus.writel(IOMEM + 0x100, 0xDEADBEEF)
    fake_bus.writeb(IOMEM + 0xFFFF, 0x5A)
    assert fake_bus.readw(IOMEM + 0x102) == 0xDEAD
    assert fake_bus.readb(IOMEM + 0xFFFF) == 0x5A
    assert device.iomem[0x100:0x104] == bytes.fromhex("efbeadde")


def test_flush_page_accepts_writes(fake_bus):
    device = fake_bus.attach("pc-testdev")
    fake_bus.outl(FLUSH, 0x1000)
    assert device.regs["SCRATCH"] == 0 and fake_bus.inl(FLUSH) == 0  # nothing else changed; write-only


def test_survives_fuzzing():
    assert_survives_fuzzing("pc-testdev", runs=10, steps=300)
