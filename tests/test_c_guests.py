"""The C guests of issue 4 (guest/c/) booted from machines/ on both accelerators.

Interrupt-driven guests need the vCPU to return from protected-mode interrupt
handlers. On a KVM that emulates every guest instruction (this project's PVM
hosts) ``iret`` in protected mode is not emulated and ends the guest with
KVM_EXIT_INTERNAL_ERROR; a probe finds that out and those KVM runs are skipped
with the reason. On hardware-assisted KVM they run.
"""

from __future__ import annotations

import functools
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import REPO, child, kvm_unavailable, serial_echo, vmcore
from vmcore.accel import RunLimits
from vmcore.diff import differential
from vmcore.machine import Machine
from vmcore.profile import Profile

MACHINES = REPO / "machines"


@functools.cache
def protected_mode_interrupts_on_kvm() -> str | None:
    """None when KVM here can run a protected-mode ``int``/``iret`` round trip, else why not."""
    reason = kvm_unavailable()
    if reason is not None:
        return f"needs /dev/kvm: {reason}"
    image = bytearray(0x3000)
    # 0x1000: lidt [0x1200]; int 0x30; mov al,'k'; out 0xf1,al; hlt
    code = b"\x0f\x01\x1d" + struct.pack("<I", 0x1200) + b"\xcd\x30\xb0\x6b\xe6\xf1\xf4"
    image[0x1000 : 0x1000 + len(code)] = code
    image[0x1100:0x1101] = b"\xcf"  # the handler: iret
    image[0x1200:0x1206] = struct.pack("<HI", 0x30 * 8 + 7, 0x2000)
    image[0x2000 + 0x30 * 8 : 0x2000 + 0x31 * 8] = struct.pack("<HHBBH", 0x1100, 0x08, 0, 0x8E, 0)
    with tempfile.NamedTemporaryFile(prefix="vmcore-pm-iret-", suffix=".bin", delete=False) as out_file:
        out_file.write(bytes(image))
    probe = Path(out_file.name)
    script = (
        "import sys\nfrom vmcore.machine import Machine\nfrom vmcore.profile import Profile\n"
        "from vmcore.accel import RunLimits\n"
        f"p = Profile.from_yaml({profile_text(probe)!r})\n"
        "with Machine.build(p) as m:\n"
        "    stop = m.run('kvm', RunLimits(timeout=10))\n"
        "    print(stop.kind, bytes(m.devices['console'].output).decode(), stop.code.hex() if stop.code else '')\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=REPO)
    finally:
        probe.unlink()
    words = out.stdout.split()
    if words[:2] == ["halted", "k"]:
        return None
    return ("this host's KVM does not emulate protected-mode interrupt delivery and iret "
            f"(probe stopped with {' '.join(words) or out.stderr.strip()}); hardware-assisted KVM runs them natively")


def profile_text(probe: Path) -> str:
    return (f"cpu: {{mode: protected, entry: 0x1000, registers: {{rsp: 0x8000}}}}\n"
            f"memory: {{ram: {{size: 64K, image: {probe}}}}}\n"
            "devices: {console: {type: debugcon, backend: memory}}\n")


@pytest.fixture(params=[pytest.param("kvm", marks=pytest.mark.kvm), "tcg"])
def irq_accel(request: pytest.FixtureRequest) -> str:
    """An accelerator that can run interrupt-driven protected-mode guests here."""
    if request.param == "kvm":
        reason = protected_mode_interrupts_on_kvm()
        if reason is not None:
            pytest.skip(reason)
    return str(request.param)


def test_timer_tick_counts_fifty_pit_interrupts(irq_accel: str) -> None:
    run = vmcore("run", "timer-tick", "--accel", irq_accel)
    assert run.stdout == b"ticks: 50\n", run.stderr
    assert run.status == 33  # debug-exit 0x10


def test_timer_tick_takes_about_fifty_ms_of_machine_time(irq_accel: str) -> None:
    # 50 ticks at 1000 Hz: well over 40 ms even with a fast guest (the PIT, not the CPU, paces it).
    run = vmcore("run", "timer-tick", "--accel", irq_accel)
    assert run.status == 33 and run.seconds >= 0.045


def test_cmos_clock_reads_the_profile_start_time(accel: str) -> None:
    run = vmcore("run", "cmos-clock", "--accel", accel)
    assert run.status == 37, run.stderr  # debug-exit 0x12
    text = run.stdout.decode()
    assert text.startswith("2026-01-02 03:04:0"), text
    assert int(text.strip()[-2:]) <= 9  # seconds after 03:04:05 that the boot took


def test_cmos_clock_follows_a_start_time_set_on_the_command_line(accel: str) -> None:
    run = vmcore("run", "cmos-clock", "--accel", accel, "--set", "devices.rtc.start=1999-12-31T23:59:30")
    assert run.status == 37, run.stderr
    assert run.stdout.decode().startswith("1999-12-31 23:59:3")


def test_multiboot_kernel_reads_command_line_and_memory_map(accel: str) -> None:
    run = vmcore("run", "multiboot", "--accel", accel)
    text = run.stdout.decode()
    assert run.status == 15, run.stderr  # status=7 from the command line: (7 << 1) | 1
    assert "cmdline: status=7 hello\n" in text
    assert "mmap: base=0x0 len=0x400000 type=1\n" in text


def test_multiboot_exit_status_is_chosen_by_the_command_line(accel: str) -> None:
    run = vmcore("run", "multiboot", "--accel", accel, "--set", "loader.cmdline=status=21")
    assert run.status == 43


def test_multiboot_kernel_is_identical_on_both_accelerators() -> None:
    reason = kvm_unavailable()
    if reason is not None:
        pytest.skip(f"needs /dev/kvm: {reason}")
    result = differential(MACHINES / "multiboot.yaml", limits=RunLimits(timeout=30))
    assert result.identical, result.report()


def test_serial_echo_over_the_socket_backend(irq_accel: str, tmp_path: Path) -> None:
    received, status = serial_echo(irq_accel, tmp_path, [(b"", b"echo ready\n"), (b"hi there q", b"hi there qbye\n")])
    assert received == b"echo ready\nhi there qbye\n"
    assert status == 35  # debug-exit 0x11


def test_kernel_irqchip_runs_a_guest_on_kvm_and_routes_lines_to_it() -> None:
    reason = kvm_unavailable()
    if reason is not None:
        pytest.skip(f"needs /dev/kvm: {reason}")
    run = vmcore("-v", "run", "exit-status", "--set", "irqchip=kernel", "--set", "kernel_pit=true")
    assert run.status == 85, run.stderr
    script = (
        "from vmcore.machine import Machine\nfrom vmcore.profile import Profile\n"
        "from vmcore.accel import RunLimits\n"
        "m = Machine.build(Profile.load('machines/exit-status.yaml', ['irqchip=kernel']))\n"
        "stop = m.run('kvm', RunLimits(timeout=10))\n"
        "route = m.irq_lines.route\n"
        "seen = []\n"
        "m.irq_lines.route = lambda n, level: (seen.append((n, level)), route(n, level))\n"
        "m.irq_lines.line(5).pulse()  # reaches KVM_IRQ_LINE through the route\n"
        "print(stop.kind, m.accelerator.kernel_irqchip, route == m.accelerator.set_irq_line, seen)\n"
    )
    out = child([sys.executable, "-c", script])
    # After the guest's "bye":
    assert out.stdout.decode().splitlines()[-1] == "exit True True [(5, True), (5, False)]"


def test_kernel_irqchip_on_the_software_cpu_is_a_host_error() -> None:
    run = vmcore("run", "exit-status", "--accel", "tcg", "--set", "irqchip=kernel")
    assert run.status == 8
    assert "irqchip: kernel needs KVM" in run.stderr


def test_a_userspace_controller_profile_builds_with_lines_routed_to_the_pic() -> None:
    with Machine.build(Profile.load(MACHINES / "timer-tick.yaml")) as machine:
        assert type(machine.controller).__name__ == "I8259"


def test_real_mode_pit_ticks_through_the_userspace_pic(accel: str) -> None:
    # Real-mode interrupts run on every KVM: this is the KVM_INTERRUPT injection path here.
    run = vmcore("-v", "run", "rm-timer", "--accel", accel)
    assert run.stdout == b"rm ticks: 10\n", run.stderr
    assert run.status == 39


def test_real_mode_pit_ticks_are_identical_on_both_accelerators() -> None:
    reason = kvm_unavailable()
    if reason is not None:
        pytest.skip(f"needs /dev/kvm: {reason}")
    result = differential(MACHINES / "rm-timer.yaml", limits=RunLimits(timeout=30))
    assert result.identical, result.report()
    assert result.a.stop.status == 39


def test_interrupt_pending_while_if_clear_is_taken_after_sti_without_hlt(accel: str) -> None:
    run = vmcore("run", "irq-window", "--accel", accel, "--timeout", "20")
    assert run.stdout == b"window ok\n", run.stderr
    assert run.status == 41
