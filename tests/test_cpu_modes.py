"""The CPU follows the guest through every mode, on both accelerators.

guest/mode_switch.S goes real -> protected -> long -> compatibility -> real mode,
as OS loaders and kvm-unit-tests' realmode test do. The software CPU's engine is
made for one mode; the registers must still read right in whatever mode the guest
switched to (64-bit registers after a switch into long mode; segment loads that take
their descriptor in protected mode and selector * 16 in real mode).
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers import REPO, in_process

PROFILE = REPO / "machines" / "mode-switch.yaml"


def test_a_guest_goes_through_every_mode_and_back(accel: str) -> None:
    result = in_process(PROFILE, "devices.console.backend=memory", accel=accel)
    assert (result["kind"], result["console"]) == ("halted", "RPLCB\n"), result["message"]
    registers = result["registers"]
    # What long mode left in R8 and R15 is still there in real mode, as on hardware.
    assert registers["r8"] == 0x8877665544332211
    assert registers["r15"] == 0x0123456789ABCDEF
    assert registers["cr0"] & 0x80000001 == 0  # paging and protection off again
    assert registers["efer"] & 0x500 == 0  # LME and LMA clear
    assert registers["rip"] < 0x10000  # an IP in the program's real-mode code, past the hlt


def test_registers_read_whole_in_long_mode_on_an_engine_started_in_real_mode() -> None:
    # A run cut short in long mode (the 4th exit is the 'L'): the report has the full RIP.
    result = in_process(PROFILE, "devices.console.backend=memory", accel="tcg", max_exits=3)
    assert (result["kind"], result["console"]) == ("max-exits", "RPL")
    registers = result["registers"]
    assert registers["efer"] & 0x500 == 0x500  # in long mode
    assert registers["cr0"] & 0x80000001 == 0x80000001


def test_cpuid_shows_an_apic_only_with_a_lapic_device(accel: str, tmp_path: Path) -> None:
    from tests.tiny_guests import CPUID_APIC, profile_for

    # APIC, x2APIC, TSC-deadline bits of leaf 1, one console byte each: the lapic model has
    # x2APIC mode and the TSC-deadline timer (their MSRs reach it on both accelerators).
    without = in_process(profile_for(CPUID_APIC, tmp_path), accel=accel)
    assert without["console"] == "\0\0\0"
    with_apic = in_process(profile_for(CPUID_APIC, tmp_path, devices="  apic: {type: lapic}\n"), accel=accel)
    assert (with_apic["kind"], with_apic["console"]) == ("halted", "\1\1\1")


def test_cr4_starts_clear_and_cpuid_osxsave_follows_it(accel: str, tmp_path: Path) -> None:
    from tests.tiny_guests import TinyGuest, profile_for

    # CR4's low byte, then CPUID leaf 1's OSXSAVE bit (ECX bit 27), one console byte each:
    # after RESET CR4 is 0, and OSXSAVE mirrors CR4.OSXSAVE (the software CPU's engine
    # starts with CR4.OSXSAVE set of its own).
    guest = TinyGuest("cr4_osxsave", code=bytes([
        0x0F, 0x20, 0xE0,                    # mov eax, cr4
        0xE6, 0xF1,                          # out 0xF1, al
        0x66, 0xB8, 0x01, 0x00, 0x00, 0x00,  # mov eax, 1
        0x0F, 0xA2,                          # cpuid
        0x66, 0x89, 0xC8,                    # mov eax, ecx
        0x66, 0xC1, 0xE8, 0x1B,              # shr eax, 27
        0x24, 0x01, 0xE6, 0xF1,              # and al, 1; out 0xF1, al
        0xF4,                                # hlt
    ]))
    result = in_process(profile_for(guest, tmp_path), accel=accel)
    assert (result["kind"], result["console"]) == ("halted", "\0\0")
