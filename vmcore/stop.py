"""Why a machine stopped, and the process status that goes with it.

Guest-chosen statuses (debug-exit) are always odd; the VMM's own are even and
non-zero, so a test harness can tell them apart: 0 is a clean ``hlt``.
"""

from __future__ import annotations

from typing import Any

import attrs

#: Process exit status for each stop kind the VMM decides (debug-exit sets its own).
STATUS = {
    "halted": 0,
    "config-error": 2,
    "shutdown": 4,  # triple fault
    "internal-error": 4,
    "fail-entry": 4,
    "system-event": 4,
    "unknown-exit": 4,
    "timeout": 6,
    "max-exits": 6,
    "host-error": 8,  # /dev/kvm missing, ioctl failed
    "device-error": 10,
    "interrupted": 130,
}


@attrs.frozen
class StopReason:
    """The end of a run: ``kind`` says why, ``status`` is the process exit status."""

    kind: str
    message: str
    status: int = 0
    exits: int = 0
    registers: dict[str, int] | None = None
    segments: dict[str, dict[str, int]] | None = None
    code_address: int | None = None
    code: bytes | None = None
    detail: dict[str, Any] = attrs.Factory(dict)

    @classmethod
    def of(cls, kind: str, message: str, **kwargs: Any) -> "StopReason":
        return cls(kind=kind, message=message, status=kwargs.pop("status", STATUS[kind]), **kwargs)

    @property
    def is_fault(self) -> bool:
        return self.kind not in ("halted", "exit")

    def summary(self) -> str:
        """One line: what stopped the machine."""
        return f"{self.kind}: {self.message}"

    def report(self) -> str:
        """The summary plus the register dump and code bytes, when there are any."""
        lines = [self.summary()]
        regs = self.registers
        if regs:
            names = [n for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                                 "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                                 "rip", "rflags") if n in regs]
            for i in range(0, len(names), 4):
                lines.append("  " + "  ".join(f"{n:>6}={regs[n]:016x}" for n in names[i : i + 4]))
            extra = [n for n in ("cr0", "cr2", "cr3", "cr4", "efer") if n in regs]
            if extra:
                lines.append("  " + "  ".join(f"{n:>6}={regs[n]:016x}" for n in extra))
        for name, seg in (self.segments or {}).items():
            lines.append(
                f"  {name:>3} sel={seg['selector']:04x} base={seg['base']:016x} "
                f"limit={seg['limit']:08x} type={seg.get('type', 0):x} l={seg.get('l', 0)} db={seg.get('db', 0)}"
            )
        if self.code is not None and self.code_address is not None:
            lines.append(f"  code at {self.code_address:#x}: {self.code.hex(' ')}")
        for key, value in self.detail.items():
            if key != "traceback":
                lines.append(f"  {key}: {value}")
        return "\n".join(lines)
