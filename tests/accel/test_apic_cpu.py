"""The local APIC model as the CPU reaches it, on both accelerators (guest/apic_base.S,
guest/x2apic.S, guest/tsc_deadline.S).

IA32_APIC_BASE is trapped (the software CPU's MSR intercepts; KVM's user-space MSR exits
through a filter) and answered by the lapic device (vmcore.irq.ModelSpecificRegisters); CR8
is its TPR (the software CPU's CR8 intercepts; kvm_run.cr8 before and after each KVM_RUN).
"""

from __future__ import annotations

from tests.helpers import REPO, vmcore

PROFILE = REPO / "machines" / "apic-base.yaml"


def test_apic_base_and_cr8_reach_the_lapic_model(accel: str) -> None:
    run = vmcore("run", str(PROFILE), "--accel", accel)
    # E: EN read; 5: CR8 -> TPR 0x50; c: CPUID's APIC bit clear once disabled; F: the page reads
    # ones; V: the version register back after enabling; 0: CR8 back at power-up.
    assert run.stdout == b"E5cFV0\n", run.stderr
    assert run.status == 67


def test_an_apic_base_write_the_apic_refuses_is_a_gp(tmp_path) -> None:
    from tests.accel.test_accel_tcg import run_tcg
    from tests.accel.test_intercepts import IVT, SETUP
    from tests.tiny_guests import TinyGuest

    guest = TinyGuest("apic_base_extd", code=SETUP + bytes([
        0x66, 0xB9, 0x1B, 0x00, 0x00, 0x00,   # mov ecx, IA32_APIC_BASE
        0x0F, 0x32,                           # rdmsr
        0x66, 0x25, 0xFF, 0xF7, 0xFF, 0xFF,   # and eax, ~EN
        0x66, 0x0D, 0x00, 0x04, 0x00, 0x00,   # or eax, EXTD: x2APIC mode of a disabled APIC
        0x0F, 0x30,                           # wrmsr: #GP
        0xF4]), data=IVT)
    result = run_tcg(guest, tmp_path, devices="  apic: {type: lapic}\n")
    assert (result["kind"], result["console"]) == ("halted", "G"), result["message"]


def test_x2apic_mode_reaches_the_lapic_model(accel: str) -> None:
    """guest/x2apic.S: EXTD taken; version, ID, TPR and SELF IPI as MSRs; the page not decoded.
    On KVM the x2APIC MSRs come back as user-space MSR exits (KVM without its own APIC fails them)."""
    run = vmcore("run", str(REPO / "machines" / "x2apic.yaml"), "--accel", accel)
    assert run.stdout == b"XVIF8S\n", run.stderr
    assert run.status == 69


def test_the_tsc_deadline_timer_fires_when_the_guests_tsc_passes_the_deadline(accel: str) -> None:
    """guest/tsc_deadline.S: the LVT timer in TSC-deadline mode, IA32_TSC_DEADLINE trapped and
    answered by the lapic model, which turns the deadline into machine time through the
    accelerator's TSC (KVM_GET_MSRS and KVM_GET_TSC_KHZ; the host's TSC on the software CPU).
    Each check's interrupt is seen as its vector's IRR bit, polled with interrupts off."""
    run = vmcore("run", str(REPO / "machines" / "tsc-deadline.yaml"), "--accel", accel)
    # C: CPUID has it; M: mode 10b; R: the MSR reads back; T: the interrupt comes; Z: the MSR
    # reads 0 after; P: a past deadline fires at once; D: 0 disarms; O: leaving the mode
    # disarms; I: one-shot mode ignores the MSR.
    assert run.stdout == b"CMRTZPDOI\n", run.stderr
    assert run.status == 71


def test_tsc_deadline_is_a_gp_where_the_cpu_model_has_not_got_it(tmp_path) -> None:
    """The lapic model has the register, but a CPU model without the feature refuses the MSR."""
    from tests.accel.test_intercepts import IVT, SETUP
    from tests.helpers import in_process
    from tests.tiny_guests import TinyGuest, profile_for

    guest = TinyGuest("tsc_deadline_gp", code=SETUP + bytes([
        0x66, 0xB9, 0xE0, 0x06, 0x00, 0x00,   # mov ecx, IA32_TSC_DEADLINE
        0x0F, 0x32,                           # rdmsr: #GP without the feature, else 0
        0xF4]), data=IVT)
    profile = profile_for(guest, tmp_path, devices="  apic: {type: lapic}\n")
    without = in_process(profile, "cpu.features=-tsc-deadline", accel="tcg")
    assert (without["kind"], without["console"]) == ("halted", "G"), without["message"]
    with_it = in_process(profile, "cpu.features=+tsc-deadline", accel="tcg")
    assert (with_it["kind"], with_it["console"]) == ("halted", ""), with_it["message"]
