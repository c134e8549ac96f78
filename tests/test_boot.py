"""Tier 3: the guest programs boot on KVM and on the software CPU (tcg) and stop the way guest/README.md says.

Every boot test runs once per accelerator (the ``accel`` fixture): the ``kvm`` run
is marked ``kvm`` and skipped with the reason where /dev/kvm cannot be opened; the
``tcg`` run (unicorn) needs nothing and is never skipped. Where the accelerators
legitimately differ (how an exit is counted, the internal-error message) the test
says so per accelerator.

Each boot runs in a child process with a timeout (tests/helpers.py), so a hung guest
fails its test instead of hanging the suite.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers import DATA, NO_KVM, REPO, child, in_process, skip_without_kvm, vmcore


@pytest.fixture
def needs_kvm() -> None:
    skip_without_kvm()


# --- the bundled guests -------------------------------------------------------------------


def test_hello_prints_hello_and_halts(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "hello")
    assert run.stdout == b"Hello\n"
    assert run.status == 0
    assert run.stderr == ""


def test_hello_counts_one_io_exit_per_byte(accel: str) -> None:
    run = vmcore("-v", "run", "--accel", accel, "hello")
    assert run.status == 0
    assert f"halted: the guest executed hlt (accelerator {accel}, 6 exits, status 0)" in run.stderr


def test_string_io_rep_outsb_and_insb(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "string-io")
    assert run.stdout == b"rep outsb works\ninsb ok\n"
    assert run.status == 0


# The devices see the same 32 transactions on both, and each counts as one exit on both:
# KVM hands the 8 bytes of `rep insb` over in one KVM_EXIT_IO of count 8 (each `rep outsb`
# byte is its own exit on this host, see guest/README.md), which the run core takes as
# 8 accesses, as unicorn's `in` hook makes them.
STRING_IO_EXITS = {"kvm": 16 + 8 + 8, "tcg": 16 + 8 + 8}


def test_string_io_exit_count_per_accelerator(accel: str) -> None:
    run = vmcore("-v", "run", "--accel", accel, "--trace", "string-io")
    assert run.status == 0
    transactions = [line.split() for line in run.stderr.splitlines() if line.startswith("pio")]
    assert [t[1] for t in transactions] == ["write"] * 16 + ["read"] * 8 + ["write"] * 8
    assert f"(accelerator {accel}, {STRING_IO_EXITS[accel]} exits, status 0)" in run.stderr


def test_exit_status_is_odd_status_from_debug_exit(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "exit-status")
    assert run.stdout == b"bye\n"
    assert run.status == 85  # (42 << 1) | 1


def test_triple_fault_is_a_shutdown_with_a_register_dump(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "triple-fault")
    assert run.stdout == b"fault\n"
    assert run.status == 4
    assert "vmcore: shutdown: triple fault" in run.stderr
    assert "rip=" in run.stderr and "cr0=" in run.stderr
    assert " cs sel=" in run.stderr
    assert "code at 0x" in run.stderr


def test_internal_error_is_reported_with_its_reason(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "internal-error")
    assert run.stdout == b"ie\n"
    assert run.status == 4
    assert "rip=" in run.stderr
    if accel == "kvm":
        assert "vmcore: internal-error: KVM internal error" in run.stderr
        assert "suberror:" in run.stderr
    else:
        # TCG fetches from the page with no slot and fails there: no emulator to give up.
        assert "vmcore: internal-error: instruction fetch from 0x100000, which is not RAM or ROM" in run.stderr


def test_protected_mode_guest(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "protected")
    assert run.stdout == b"protected mode\n"
    assert run.status == 0


def test_long_mode_guest(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "long")
    assert run.stdout == b"long mode\n64\n"
    assert run.status == 0


def test_rom_write_is_dropped_with_one_warning(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "rom-write")
    assert run.stdout == b"rom ok\n"
    assert run.status == 0
    warnings = [line for line in run.stderr.splitlines() if "ROM slot" in line]
    assert len(warnings) == 1
    assert "guest write to ROM slot 'rom'" in warnings[0] and "dropped" in warnings[0]


def test_real_mode_int_and_divide_error_go_through_the_ivt(accel: str) -> None:
    run = vmcore("-v", "run", "--accel", accel, "int-ivt")
    assert run.stdout == b"int21\nde\nivt ok\n"
    assert run.status == 0
    assert f"halted: the guest executed hlt (accelerator {accel}, 16 exits, status 0)" in run.stderr


# --- choosing the accelerator ---------------------------------------------------------------


def test_auto_falls_back_to_tcg_without_kvm_and_says_why() -> None:
    run = vmcore("-v", "run", "hello", env=NO_KVM)  # hello.yaml says accel: auto
    assert run.stdout == b"Hello\n"
    assert run.status == 0
    fallback = [line for line in run.stderr.splitlines() if "using tcg" in line]
    assert len(fallback) == 1
    assert "/nonexistent does not exist" in fallback[0]  # why: KvmUnavailable's reason
    assert "(accelerator tcg, 6 exits, status 0)" in run.stderr


def test_accel_kvm_without_kvm_is_a_host_error_in_one_line() -> None:
    run = vmcore("run", "--accel", "kvm", "hello", env=NO_KVM)
    assert run.status == 8
    assert run.stdout == b""
    lines = run.stderr.splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("vmcore: host-error: ") and "/nonexistent" in lines[0]


# --- run options ----------------------------------------------------------------------------


def test_trace_names_the_console_for_every_byte(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "hello", "--trace")
    assert run.stdout == b"Hello\n"
    assert run.status == 0
    lines = [line for line in run.stderr.splitlines() if line.startswith("pio")]
    assert len(lines) == 6
    for line, byte in zip(lines, b"Hello\n"):
        assert line.split() == ["pio", "write", "0x000000f1/1", "->", f"{byte:#04x}", "console"]


def test_trace_file_gets_the_transactions(accel: str, tmp_path: Path) -> None:
    out = tmp_path / "trace.txt"
    run = vmcore("run", "--accel", accel, "hello", "--trace-file", str(out))
    assert run.status == 0 and run.stdout == b"Hello\n"
    assert run.stderr == ""
    lines = out.read_text().splitlines()
    assert len(lines) == 6 and all(line.endswith(" console") for line in lines)


def test_trace_shows_irq_lines_and_the_interrupts_taken_with_their_devices(accel: str) -> None:
    """rm-timer's guest counts ten PIT ticks: each is the pit's line 0 rising, then the CPU taking
    the vector the pic answers (0x08: the BIOS's IRQ 0), in that order, between the bus lines."""
    run = vmcore("run", "--accel", accel, "rm-timer", "--trace")
    assert run.stdout == b"rm ticks: 10\n", run.stderr[-2000:]
    lines = run.stderr.splitlines()
    taken = [i for i, line in enumerate(lines) if line.startswith("intr ")]
    assert len(taken) >= 10
    assert all(lines[i] == "intr vector 0x08 <- pic" for i in taken)
    for i in taken:
        last_line_change = max(j for j in range(i) if lines[j].startswith("irq "))
        assert lines[last_line_change].startswith("irq  line 0 -> ") and lines[last_line_change].endswith(" pit")
    assert "irq  line 0 -> 1 pit" in lines and any(line.startswith("pio ") for line in lines)


def test_irq_tracer_gets_events_in_machine_time_order() -> None:
    from vmcore.irq import IrqEvent
    from vmcore.machine import Machine
    from vmcore.profile import Profile

    events: list[IrqEvent] = []
    with Machine.build(Profile.load(REPO / "machines" / "rm-timer.yaml")) as machine:
        machine.set_irq_tracer(events.append)
        stop = machine.run("tcg")
        assert "acknowledge" not in vars(machine.controller)  # the run's tracing undone
    assert stop.kind == "exit"
    assert [event.time for event in events] == sorted(event.time for event in events)
    lines = [event for event in events if event.kind == "line"]
    taken = [event for event in events if event.kind == "vector"]
    assert {event.devices for event in lines} == {("pit",)} and {event.number for event in lines} == {0}
    assert len(taken) >= 10 and {(event.value, event.devices) for event in taken} == {(0x08, ("pic",))}


def test_trace_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    # Fails before any accelerator is chosen: runs on any host.
    run = vmcore("run", "hello", "--trace-file", str(tmp_path / "no" / "such" / "dir" / "t.txt"))
    assert run.status == 2
    assert run.stdout == b""
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and str(tmp_path / "no") in lines[0]


def test_max_exits_stops_the_run(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "hello", "--max-exits", "3")
    assert run.status == 6
    assert run.stdout == b"Hel"
    assert "vmcore: max-exits: reached the limit of 3 exits" in run.stderr


@pytest.fixture
def spin_image(tmp_path: Path) -> Path:
    image = tmp_path / "spin.bin"
    image.write_bytes(b"\xeb\xfe")  # jmp $
    return image


def test_timeout_stops_a_guest_that_never_exits(accel: str, spin_image: Path) -> None:
    run = vmcore("run", "--accel", accel, str(DATA / "spin.yaml"), "--set", f"memory.ram.image={spin_image}",
                 "--timeout", "1")
    assert run.status == 6
    assert "vmcore: timeout: no stop after 1 s" in run.stderr
    assert run.seconds < 6, f"took {run.seconds:.1f} s"


def test_profile_timeout_applies_without_the_option(accel: str, spin_image: Path) -> None:
    run = vmcore("run", "--accel", accel, str(DATA / "spin.yaml"), "--set", f"memory.ram.image={spin_image}",
                 "--set", "limits.timeout=0.5")
    assert run.status == 6
    assert "timeout: no stop after 0.5 s" in run.stderr


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_timeout_option_must_be_a_positive_number(spin_image: Path, value: str) -> None:
    # --timeout 0 used to disable the timer, so a spinning guest ran for ever. Rejected
    # before any accelerator is chosen: runs on any host.
    run = vmcore("run", str(DATA / "spin.yaml"), "--set", f"memory.ram.image={spin_image}",
                 f"--timeout={value}", timeout=15)
    assert run.status == 2
    assert run.stdout == b""
    assert "--timeout" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("value", ["0", "-1"])
def test_max_exits_option_must_be_positive(value: str) -> None:
    run = vmcore("run", "hello", f"--max-exits={value}")
    assert run.status == 2
    assert run.stdout == b""
    assert "--max-exits" in run.stderr


def test_moving_the_console_leaves_the_guests_port_unclaimed(accel: str) -> None:
    run = vmcore("run", "--accel", accel, "hello", "--set", "devices.console.port=0xE9")
    assert run.stdout == b""
    assert run.status == 0
    assert "unclaimed pio write at 0xf1 (size 1)" in run.stderr
    assert run.stderr.count("unclaimed") == 1  # once per address, not once per byte


# --- a third-party device on the MMIO bus, and a device that raises -------------------------


def test_mmio_scratch_device_round_trips(accel: str) -> None:
    result = in_process(DATA / "mmio.yaml", accel=accel)
    assert result["accel"] == accel
    assert (result["kind"], result["status"]) == ("halted", 0)
    assert result["console"] == "mmio ok\n"
    mmio = [t for t in result["trace"] if t[0] == "mmio"]
    assert mmio == [
        ["mmio", "write", 0x10000000, 4, 0x11223344, "scratch"],
        ["mmio", "read", 0x10000000, 4, 0x11223344, "scratch"],
        ["mmio", "write", 0x10000008, 1, 0xAB, "scratch"],
        ["mmio", "read", 0x10000008, 1, 0xAB, "scratch"],
    ]
    assert result["scratch"] == "44332211" + "00" * 4 + "ab" + "00" * 7


@pytest.mark.parametrize(("error", "exc_name"), [("runtime", "RuntimeError"), ("value", "ValueError"),
                                                 ("os", "OSError")])
def test_device_raising_in_write_is_a_device_error(accel: str, error: str, exc_name: str) -> None:
    result = in_process(DATA / "faulty.yaml", f"devices.boom.error={error}", accel=accel)
    assert result["accel"] == accel
    assert result["kind"] == "device-error"
    assert result["status"] == 10
    assert result["message"] == (f"device 'boom' raised {exc_name}: model bug on byte 0x48 "
                                 "during a pio write of 1 byte at 0xf1 (value 0x48)")
    assert "in write" in result["traceback"]


_BROKEN_KVM_RUN = """\
import errno
from vmcore.accel.kvm import KvmAccelerator
from vmcore.machine import Machine
from vmcore.profile import Profile

def kvm_run_fails():
    raise OSError(errno.EFAULT, "Bad address")

with Machine.build(Profile.load("machines/hello.yaml")) as machine:
    accel = KvmAccelerator.open()
    accel.vcpu._run = kvm_run_fails  # what the ioctl raises when the kernel returns EFAULT
    stop = machine.run(accel)
print(stop.kind, stop.status, stop.message, sep="|")
"""


@pytest.mark.kvm
def test_failing_kvm_run_is_a_host_error_not_a_device_error(needs_kvm: None) -> None:
    run = child([sys.executable, "-c", _BROKEN_KVM_RUN])
    assert run.status == 0, run.stderr
    assert run.stdout.decode().strip() == "host-error|8|KVM_RUN failed: Bad address"
