"""The machine's side of time and IRQ lines: a bounded IRQ log, t=0, and device timers under ``device_errors``.

The timer tests boot a few real-mode bytes on both accelerators in a child process;
this module is also the vmcore plugin those children load, for its ``ticker`` and
``build-alarm`` devices.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Literal, Sequence

import attrs
import pytest

from tests.helpers import REPO, child
from vmcore.accel import RunLimits
from vmcore.bus import Region, Space
from vmcore.device import Device, DeviceContext, in_range, prop
from vmcore.hookspecs import hookimpl
from vmcore.machine import IRQ_LOG_LENGTH, Machine
from vmcore.plugins import DeviceRegistry
from vmcore.profile import Profile

# --- the IRQ log ---------------------------------------------------------------------------------


def test_a_long_run_of_irq_line_changes_keeps_only_the_latest_and_counts_them_all() -> None:
    with Machine.build(Profile.load(REPO / "machines" / "timer-tick.yaml")) as machine:
        line = machine.irq_lines.line(0)  # the PIT's
        for _ in range(100_000):
            line.pulse()
        assert len(machine.irq_log) == IRQ_LOG_LENGTH
        assert [(number, level) for _, number, level in list(machine.irq_log)[-2:]] == [(0, True), (0, False)]
        times = [when for when, _, _ in machine.irq_log]
        assert times == sorted(times)
        assert machine.irq_changes[0] == 200_000


# --- a device whose timer raises -----------------------------------------------------------------


@attrs.frozen
class TickerConfig:
    port: int = prop(0xF4, "I/O port: a write arms the timer, a read gives how often it fired.", hex=True,
                     validator=in_range(0, 0xFFFF))
    error: Literal["runtime", "system-exit"] = prop("runtime", "What the timer callback raises.")
    times: int = prop(2, "How often the timer fires (re-armed from its callback).", validator=in_range(1, 255))


class Ticker(Device):
    """A timer armed by the guest whose callback has a bug: it counts, re-arms, then raises."""

    type_name = "ticker"
    Config = TickerConfig
    DELAY_NS = 100_000

    def __init__(self, config: TickerConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.fired = 0

    def regions(self) -> Sequence[Region]:
        return [Region(Space.PIO, self.config.port, 1, self.read, self.write, name="ticker")]

    def read(self, offset: int, size: int) -> int:
        return self.fired

    def write(self, offset: int, size: int, value: int) -> None:
        self.ctx.clock.call_later(self.DELAY_NS, self.expire)

    def expire(self) -> None:
        self.fired += 1
        if self.fired < self.config.times:
            self.ctx.clock.call_later(self.DELAY_NS, self.expire)
        if self.config.error == "system-exit":
            raise SystemExit(0)
        raise RuntimeError(f"tick {self.fired} is not modelled")


@attrs.frozen
class BuildAlarmConfig:
    irq: int = prop(5, "IRQ line pulsed when the alarm goes off.", validator=in_range(0, 15))
    delay_ns: int = prop(20_000_000, "Machine time from t=0 to the alarm.", validator=in_range(0, 10**10))


class BuildAlarm(Device):
    """Arms its timer while the machine is built, as a device with a power-on timer does; pulses its IRQ once."""

    type_name = "build-alarm"
    Config = BuildAlarmConfig

    def __init__(self, config: BuildAlarmConfig, ctx: DeviceContext) -> None:
        super().__init__(config, ctx)
        self.line = ctx.irq(config.irq)
        self.rang_at: int | None = None  # machine time the alarm went off
        ctx.clock.call_later(config.delay_ns, self.ring)

    def regions(self) -> Sequence[Region]:
        return []

    def ring(self) -> None:
        self.rang_at = self.ctx.clock.now()
        self.line.pulse()


@hookimpl
def vmcore_device_types() -> list[type]:
    return [Ticker, BuildAlarm]


# --- t=0 is the guest's first instruction --------------------------------------------------------


def build_alarm_profile(folder: Path) -> Path:
    """guest/one_irq.bin, which waits for IRQ 5, beside a build-alarm on IRQ 5 (20 ms); needs this plugin."""
    profile = folder / "build-alarm.yaml"
    profile.write_text(
        "name: build-alarm\n"
        f"extends: {REPO / 'machines' / 'base' / 'real-mode.yaml'}\n"
        "irqchip: userspace\n"
        f"memory: {{ram: {{image: {REPO / 'guest' / 'one_irq.bin'}}}}}\n"
        "devices:\n"
        "  pic: {type: i8259}\n"
        "  alarm: {type: build-alarm}\n"
    )
    return profile


def build_alarm_machine(folder: Path) -> Machine:
    registry = DeviceRegistry.default(plugins=[sys.modules[__name__]])
    return Machine.build(Profile.load(build_alarm_profile(folder)), registry)


def test_machine_time_stays_0_from_build_until_the_run_starts_the_guest(tmp_path: Path) -> None:
    with build_alarm_machine(tmp_path) as machine:
        assert machine.clock.now() == 0
        time.sleep(0.01)
        assert machine.clock.now() == 0
        assert machine.clock.next_deadline() == BuildAlarmConfig().delay_ns  # armed at build, counted from t=0


def test_a_device_timer_armed_at_build_fires_its_delay_into_the_run_and_the_guest_takes_its_irq(
        accel: str, tmp_path: Path) -> None:
    with build_alarm_machine(tmp_path) as machine:
        delay = machine.devices["alarm"].config.delay_ns
        time.sleep(2 * delay / 1e9)  # a start-up slower than the alarm's delay: it must not count
        stop = machine.run(accel, RunLimits(timeout=20))
        assert (stop.kind, stop.status) == ("exit", 43), stop.report()  # 43: after the guest's IRQ 5 handler ran
        rang_at = machine.devices["alarm"].rang_at
        assert rang_at is not None and rang_at >= delay


_RUN = """\
import json, sys
import tests.test_machine_clock as plugin
from vmcore.accel import RunLimits
from vmcore.machine import Machine
from vmcore.plugins import DeviceRegistry
from vmcore.profile import Profile

with Machine.build(Profile.load(sys.argv[1]), DeviceRegistry.default(plugins=[plugin])) as machine:
    stop = machine.run(sys.argv[2])
    print("RESULT " + json.dumps({
        "stop": stop.to_json(), "console": machine.devices["console"].output.decode("latin-1"),
        "timer_faults": [[*key, count] for key, count in machine.timer_faults.items()]}))
"""

# out 0xF4,al (arm) ; wait: in al,0xF4 ; cmp al,2 ; jb wait ; out 0xF1,al ; hlt
WAITS_FOR_TWO_TICKS = bytes.fromhex("e6f4" "e4f4" "3c02" "72fa" "e6f1" "f4")


def boot(tmp_path: Path, accel: str, policy: str, error: str = "runtime") -> tuple[dict[str, Any], str]:
    """Run the waiting guest with a ticker under ``device_errors: policy``: the result and stderr."""
    image = tmp_path / "guest.bin"
    image.write_bytes(WAITS_FOR_TWO_TICKS)
    profile = tmp_path / "ticker.yaml"
    profile.write_text(
        "name: ticker\n"
        "cpu: {mode: real}\n"
        f"memory: {{ram: {{size: 4K, image: {image}}}}}\n"
        "devices:\n"
        "  console: {type: debugcon, backend: memory}\n"
        f"  ticker: {{type: ticker, error: {error}}}\n"
        f"device_errors: {policy}\n"
        "limits: {timeout: 20}\n"
    )
    run = child([sys.executable, "-c", _RUN, str(profile), accel])
    assert run.status == 0, run.stderr
    [line] = [line for line in run.stdout.decode().splitlines() if line.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):]), run.stderr


@pytest.mark.parametrize("error", ["runtime", "system-exit"])
def test_under_stop_a_raising_timer_ends_the_run_with_a_report_naming_the_device(
        accel: str, tmp_path: Path, error: str) -> None:
    result, stderr = boot(tmp_path, accel, "stop", error)
    stop = result["stop"]
    assert stop["kind"] == "device-error"
    assert stop["detail"]["device"] == "ticker"
    assert stop["detail"]["transaction"] == "timer callback"
    raised = "SystemExit: 0" if error == "system-exit" else "RuntimeError: tick 1 is not modelled"
    assert stop["message"] == f"device 'ticker' raised {raised} during a timer callback"
    assert "in expire" in stop["detail"]["traceback"]
    assert result["console"] == ""  # the guest never saw a second tick
    assert result["timer_faults"] == []


def test_under_continue_a_raising_timer_is_logged_once_counted_and_the_guest_runs_on(
        accel: str, tmp_path: Path) -> None:
    result, stderr = boot(tmp_path, accel, "continue")
    assert result["stop"]["kind"] == "halted"
    assert result["console"] == "\x02"  # both ticks happened
    assert result["timer_faults"] == [["ticker", "RuntimeError", 2]]
    assert stderr.count("device 'ticker' raised RuntimeError") == 1
    assert "during a timer callback; continuing" in stderr and "in expire" in stderr
