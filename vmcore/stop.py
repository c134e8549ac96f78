"""Why a machine stopped, and the process status that goes with it.

Guest-chosen statuses (debug-exit) are always odd; the VMM's own are even and
non-zero, so a test harness can tell them apart: 0 is a clean ``hlt``.
"""

from __future__ import annotations

from typing import Any

from .immutable import Factory, Immutable

#: Process exit status for each stop kind the VMM decides (debug-exit sets its own).
STATUS = {
    "halted": 0,
    "paused": 0,  # RunLimits.pause_after: stopped where a snapshot can be saved
    "reset": 0,  # the guest reset the machine (vmcore stops rather than reboot)
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


def code_bits(registers: dict[str, int], segments: dict[str, dict[str, int]]) -> int:
    """16, 32 or 64: how code is decoded with these registers (CR0.PE, EFER.LMA) and CS."""
    cs = segments.get("cs", {})
    if registers.get("efer", 0) & (1 << 10) and cs.get("l", 1):
        return 64
    if registers.get("cr0", 0) & 1 and cs.get("db", 1):
        return 32
    return 16


class StopReason(Immutable):
    """The end of a run: ``kind`` says why, ``status`` is the process exit status."""

    kind: str
    message: str
    status: int = 0
    exits: int = 0
    registers: dict[str, int] | None = None
    segments: dict[str, dict[str, int]] | None = None
    code_address: int | None = None
    code: bytes | None = None
    detail: dict[str, Any] = Factory(dict)
    #: The last bus transactions before the stop, oldest first (when history was kept).
    transactions: tuple[str, ...] = ()
    #: The profile the machine was built from: "name (path)".
    profile: str | None = None

    @classmethod
    def of(cls, kind: str, message: str, **kwargs: Any) -> "StopReason":
        return cls(kind=kind, message=message, status=kwargs.pop("status", STATUS[kind]), **kwargs)

    @property
    def is_fault(self) -> bool:
        return self.kind not in ("halted", "exit", "reset")

    def summary(self) -> str:
        """One line: what stopped the machine."""
        return f"{self.kind}: {self.message}"

    @property
    def code_bits(self) -> int:
        """16, 32 or 64: how the code at RIP is decoded (from CR0.PE, EFER.LMA and CS)."""
        return code_bits(self.registers or {}, self.segments or {})

    def disassembly(self, count: int = 3) -> list[str]:
        """The instructions at RIP (capstone); an undecodable first byte is reported as such."""
        if self.code is None or self.code_address is None:
            return []
        try:
            import capstone
        except ImportError:
            return ["(install capstone to disassemble)"]
        mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[self.code_bits]
        engine = capstone.Cs(capstone.CS_ARCH_X86, mode)
        rip = (self.registers or {}).get("rip", self.code_address)
        lines = []
        for insn in engine.disasm(self.code, rip):
            marker = "=>" if not lines else "  "
            lines.append(f"{marker} {insn.address:#x}: {insn.bytes.hex(' '):<24} {insn.mnemonic} {insn.op_str}".rstrip())
            if len(lines) == count:
                break
        if not lines:
            lines.append(f"=> {rip:#x}: {self.code[:4].hex(' ')}  (not a valid instruction: invalid opcode)")
        return lines

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-ready data (``vmcore run --json-report``)."""
        return {
            "kind": self.kind, "message": self.message, "status": self.status, "exits": self.exits,
            "profile": self.profile, "registers": self.registers, "segments": self.segments,
            "code_address": self.code_address, "code": self.code.hex() if self.code is not None else None,
            "disassembly": self.disassembly(), "transactions": list(self.transactions),
            "detail": {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
                       for k, v in self.detail.items()},
        }

    def report(self) -> str:
        """The summary plus the register dump and code bytes, when there are any."""
        lines = [self.summary()]
        if self.profile:
            lines.append(f"  profile: {self.profile}")
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
            lines.extend(f"  {line}" for line in self.disassembly())
        if self.transactions:
            lines.append(f"  last {len(self.transactions)} bus transactions, oldest first:")
            lines.extend(f"    {txn}" for txn in self.transactions)
        for key, value in self.detail.items():
            if key != "traceback":
                lines.append(f"  {key}: {value}")
        return "\n".join(lines)
