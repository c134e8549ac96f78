"""The hostile guest, part 2: containment of device faults and the fault reports.

Each guest is a few real-mode bytes (commented with their assembly) booted by
``vmcore run`` in a child process with ``--json-report -``, on both accelerators.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, child, kvm_unavailable

FAULTY_PLUGIN = "tests.test_faults"


# --- a device that raises on reads of its second register ----------------------------------

import attrs  # noqa: E402

from vmcore.bus import Region, Space  # noqa: E402
from vmcore.device import Device  # noqa: E402
from vmcore.hookspecs import hookimpl  # noqa: E402


@attrs.frozen
class FlakyConfig:
    port: int = 0xF2


class Flaky(Device):
    """Register 0 reads 0x41; register 1 raises (a model bug)."""

    type_name = "flaky"
    Config = FlakyConfig

    def regions(self):  # type: ignore[no-untyped-def]
        return [Region(Space.PIO, self.config.port, 2, self.read, None, sizes=(1,))]

    def read(self, offset: int, size: int) -> int:
        if offset == 1:
            raise KeyError("register 1 is not modelled")
        return 0x41


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Flaky]


_RUN = """\
import json, sys
sys.argv = ["vmcore", *sys.argv[1:]]
import vmcore.plugins as plugins
import tests.test_faults as plugin
real = plugins.DeviceRegistry.default.__func__
plugins.DeviceRegistry.default = classmethod(lambda cls, plugins=(): real(cls, [plugin, *plugins]))
from vmcore.cli import main
sys.exit(main())
"""


def boot(code: bytes, tmp_path: Path, accel: str, *extra: str, profile_extra: str = "") -> tuple[dict[str, Any], Any]:
    image = tmp_path / "guest.bin"
    image.write_bytes(code)
    profile = tmp_path / "guest.yaml"
    profile.write_text(
        "name: faulty-guest\n"
        "cpu: {mode: real}\n"
        f"memory: {{ram: {{size: 4K, image: {image}}}}}\n"
        "devices:\n  console: {type: debugcon}\n  flaky: {type: flaky, port: 0xF2}\n"
        f"limits: {{timeout: 20}}\n{profile_extra}"
    )
    report = tmp_path / "report.json"
    run = child([sys.executable, "-c", _RUN, "run", str(profile), "--accel", accel,
                 "--json-report", str(report), *extra])
    return json.loads(report.read_text()), run


# in al,0xF2 ; out 0xF1,al ; in al,0xF3 ; out 0xF1,al ; hlt
READS_BOTH = bytes.fromhex("e4f2" "e6f1" "e4f3" "e6f1" "f4")


def test_a_raising_device_stops_the_machine_with_a_report(accel: str, tmp_path: Path) -> None:
    report, run = boot(READS_BOTH, tmp_path, accel)
    assert run.status == 10
    assert run.stdout == b"A"  # the first read worked; nothing after the fault ran
    assert report["kind"] == "device-error"
    assert report["detail"]["device"] == "flaky"
    assert report["detail"]["transaction"] == "pio read 0xf3/1"
    # The history: every access before the fault, in order, named after its device.
    assert report["transactions"] == ["pio  read  0x000000f2/1 <- 0x41 flaky", "pio  write 0x000000f1/1 -> 0x41 console"]
    assert "register 1 is not modelled" in report["message"]
    assert "KeyError" in report["detail"]["traceback"] and "in read" in report["detail"]["traceback"]
    assert report["registers"]["rip"] in (0x4, 0x6)  # at or just after the faulting `in`
    assert report["profile"].startswith("faulty-guest (")
    assert "device 'flaky' raised KeyError" in run.stderr


def test_under_continue_a_raising_device_reads_all_ones_and_is_logged_once(accel: str, tmp_path: Path) -> None:
    code = READS_BOTH[:-1] + bytes.fromhex("e4f3" "e6f1" "f4")  # ... and the bad read once more
    report, run = boot(code, tmp_path, accel, profile_extra="device_errors: continue\n")
    assert run.status == 0 and report["kind"] == "halted"
    assert run.stdout == b"A\xff\xff"
    assert report["transactions"][-2:] == ["pio  read  0x000000f3/1 <- 0xff flaky", "pio  write 0x000000f1/1 -> 0xff console"]
    assert run.stderr.count("device 'flaky' raised KeyError") == 1
    assert "continuing (reads give all ones)" in run.stderr and "Traceback" in run.stderr


def test_triple_fault_report_disassembles_the_faulting_instruction(accel: str, tmp_path: Path) -> None:
    # lidt [zero] ; out 0xF1 ('x') ; ud2  -> #UD with an empty IVT: triple fault
    code = bytes.fromhex("0f011e1000" "b078" "e6f1" "0f0b" "f4" "00") + bytes(6)
    report, run = boot(code, tmp_path, accel)
    assert run.status == 4 and report["kind"] == "shutdown"
    assert report["registers"]["rip"] == 0x9
    assert report["disassembly"][0].startswith("=> 0x9: 0f 0b")
    assert "ud2" in report["disassembly"][0]
    assert report["transactions"] == ["pio  write 0x000000f1/1 -> 0x78 console"]
    assert "ud2" in run.stderr and "last 1 bus transactions" in run.stderr


def test_an_undecodable_instruction_is_reported_as_an_invalid_opcode(accel: str, tmp_path: Path) -> None:
    # lidt [zero] ; 0f 04 (no such instruction)
    code = bytes.fromhex("0f011e0600" "0f04") + bytes(8)
    report, run = boot(code, tmp_path, accel)
    assert run.status == 4
    assert report["kind"] in ("shutdown", "internal-error")  # KVM's emulator may give up instead
    assert report["disassembly"] == ["=> 0x5: 0f 04 00 00  (not a valid instruction: invalid opcode)"]


def test_a_hang_past_the_time_limit_reports_where_the_guest_spins(accel: str, tmp_path: Path) -> None:
    # out 0xF1 ('s') ; jmp $
    report, run = boot(bytes.fromhex("b073" "e6f1" "ebfe"), tmp_path, accel, "--timeout", "1")
    assert run.status == 6 and report["kind"] == "timeout"
    assert report["registers"]["rip"] == 0x4
    assert report["disassembly"][0].startswith("=> 0x4: eb fe") and "jmp" in report["disassembly"][0]
    assert report["transactions"][-1].endswith("-> 0x73 console")


def test_a_hang_past_the_exit_limit_is_reported_too(accel: str, tmp_path: Path) -> None:
    # l: out 0xF1 ; jmp l
    report, run = boot(bytes.fromhex("e6f1" "ebfc"), tmp_path, accel, "--max-exits", "5", "--history", "3")
    assert run.status == 6 and report["kind"] == "max-exits"
    assert len(report["transactions"]) == 3
    assert report["registers"] is not None


def test_history_zero_keeps_no_transactions(accel: str, tmp_path: Path) -> None:
    code = bytes.fromhex("0f011e0800" "b078" "e6f1" "0f0b") + bytes(8)
    report, _ = boot(code, tmp_path, accel, "--history", "0")
    assert report["transactions"] == []


def test_json_report_to_stdout(tmp_path: Path) -> None:
    image = tmp_path / "g.bin"
    image.write_bytes(bytes.fromhex("0f011e0500") + bytes(8))  # lidt [zero] then 00 00 ... (add [bx+si],al)
    run = child([sys.executable, "-m", "vmcore", "run", "hello", "--accel", "tcg", "--json-report", "-"])
    data = json.loads(run.stdout.decode().split("Hello\n", 1)[1])
    assert data["kind"] == "halted" and data["accelerator"] == "tcg" and data["status"] == 0
    assert data["profile"].startswith("hello (")


def test_internal_error_report_on_kvm_names_the_suberror() -> None:
    reason = kvm_unavailable()
    if reason is not None:
        pytest.skip(f"needs /dev/kvm: {reason}")
    run = child([sys.executable, "-m", "vmcore", "run", "internal-error", "--json-report", "-"])
    data = json.loads(run.stdout.decode().split("ie\n", 1)[1])
    assert run.status == 4 and data["kind"] == "internal-error"
    assert data["detail"]["suberror"] == 1 and data["registers"]["rip"] == 0x10
    assert REPO.name in data["profile"] or "internal-error" in data["profile"]


def test_an_mmio_loop_is_stopped_by_the_exit_limit_on_both_accelerators(accel: str, tmp_path: Path) -> None:
    # l: mov [0x2000],al (no slot there: MMIO, unclaimed) ; jmp l
    report, run = boot(bytes.fromhex("a20020" "ebfb"), tmp_path, accel, "--max-exits", "5", "--timeout", "20")
    assert run.status == 6 and report["kind"] == "max-exits"
    assert report["exits"] == 5
    assert report["transactions"][-1].startswith("mmio write 0x00002000/1")
