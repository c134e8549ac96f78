"""The stuck-guest detector: a guest that keeps reading one device register and getting one answer.

The most common way a new device model fails is a driver spinning on a status bit the
model never sets. :class:`PollWatch` follows the run's device reads (the run core feeds
it every read, PIO and MMIO alike): when the same register gives the same value read
after read for longer than ``after`` seconds of machine time, the run core says so, once,
in one line (:func:`describe`): the device and register, the value, how long and how
often, and, from the guest's code around the loop (disassembled with capstone), which
bits the guest tests and what it waits for.

The loop is found from RIP: the first jump back at or before RIP is the loop's back edge
and its target the loop's start; the last ``test``/``and``/``cmp`` with an immediate in the
loop and the conditional jump that decides (the back edge, or a jump out of the loop) say
what ends the loop. Loops of other shapes are named by their address only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .memory import GuestMemory

#: The detector looks at the clock once per this many equal reads (a power of two).
CHECK_EVERY = 256
#: How far around RIP the loop is looked for, in bytes (within RIP's page).
WINDOW = 64


class PollWatch:
    """The current run of equal reads: one register (``space``, ``address``, ``size``) giving ``value``.

    The run core updates the fields itself (the hot path makes no call here); every
    CHECK_EVERY equal reads it calls :meth:`overdue`.
    """

    __slots__ = ("after_ns", "clock", "space", "address", "size", "value", "count", "since", "reported", "pending")

    def __init__(self, after: float, clock: Any) -> None:
        self.after_ns = int(after * 1e9)
        self.clock = clock
        self.space = ""
        self.address = self.size = self.value = -1
        self.count = 0
        self.since: int | None = None  # machine time of the CHECK_EVERY-th equal read
        self.reported = False  # said once per run
        self.pending = False  # overdue: the run core reports at its next chance

    def overdue(self) -> bool:
        """Called every CHECK_EVERY equal reads: True once the run of them has lasted ``after``."""
        now = self.clock.now()
        if self.since is None or self.count == CHECK_EVERY:
            self.since = now
            return False
        if self.reported or now - self.since < self.after_ns:
            return False
        self.pending = True
        return True


def describe(watch: PollWatch, owner: str | None, register: str, snapshot: Any, memory: GuestMemory | None) -> str:
    """The one line said about a guest stuck polling (``register``: the region's name and offset)."""
    from .stop import code_bits

    seconds = (watch.clock.now() - (watch.since or 0)) / 1e9
    device = owner if owner is not None else "nobody (unclaimed)"
    line = (f"the guest seems stuck: it keeps reading {watch.space} {watch.address:#x} ({device}"
            f"{' ' + register if register else ''}) and gets {watch.value:#0{2 + 2 * watch.size}x}, "
            f"{watch.count} times over {seconds:.1f} s of machine time")
    registers, segments, physical, _code = snapshot
    if physical is None or memory is None:
        return line
    loop = _loop_test(memory, physical, registers.get("rip", 0), code_bits(registers, segments), watch.value)
    return f"{line}; {loop}" if loop else line


def _loop_test(memory: GuestMemory, physical: int, rip: int, bits: int, value: int) -> str | None:
    """What the polling loop around RIP tests and waits for, in words; None where it is not found."""
    try:
        import capstone
    except ImportError:
        return None
    page = physical & ~0xFFF
    start, end = max(page, physical - WINDOW), min(page + 0x1000, physical + WINDOW)
    slot = memory.slot_at(start)
    if slot is None or end > slot.end:
        return None
    code = memory.read(start, end - start)
    ip_at = rip - (physical - start)  # the IP of the window's first byte
    mode = {16: capstone.CS_MODE_16, 32: capstone.CS_MODE_32, 64: capstone.CS_MODE_64}[bits]
    engine = capstone.Cs(capstone.CS_ARCH_X86, mode)
    back = None  # the loop's back edge: the first jump at or after RIP to at or before RIP
    for insn in engine.disasm(code[physical - start:], rip):
        target = _target(insn)
        if insn.mnemonic.startswith("j") and target is not None and ip_at <= target <= rip:
            back = insn
            break
    if back is None:
        return f"its loop around {rip:#x} is not one vmcore can read"
    head = _target(back)
    assert head is not None
    body = list(engine.disasm(code[head - ip_at:back.address + back.size - ip_at], head))
    tests = [insn for insn in body if insn.mnemonic in ("test", "and", "cmp") and _immediate(insn) is not None]
    if not tests:
        return f"its loop at {head:#x} tests nothing vmcore can read"
    test = tests[-1]
    mask = _immediate(test)
    assert mask is not None
    # The jump that decides after the test: the back edge (the loop goes on while it is taken)
    # or a jump out of the loop (the loop goes on while it is not).
    decider = next((insn for insn in body if insn.address > test.address and insn.mnemonic in _CONDITIONS), None)
    if decider is None:
        return f"its loop at {head:#x} tests {mask:#x} ({test.mnemonic} {test.op_str})"
    stays_while = _CONDITIONS[decider.mnemonic]
    if decider.address != back.address:
        stays_while = not stays_while  # taken: out of the loop
    what = f"its loop at {head:#x} ({test.mnemonic} {test.op_str}; {decider.mnemonic}) "
    if test.mnemonic == "cmp":
        return what + (f"waits for the value to be {mask:#x}" if not stays_while
                       else f"waits for the value to change from {mask:#x}")
    names = ", ".join(str(bit) for bit in range(mask.bit_length()) if mask >> bit & 1)
    plural = "s" if mask & (mask - 1) else ""
    if stays_while:  # equal: the loop goes on while (value & mask) == 0
        return what + f"waits for bit{plural} {names} ({mask:#x}) to be set; {value:#x} has {'them' if plural else 'it'} clear"
    return what + f"waits for bit{plural} {names} ({mask:#x}) to clear; {value:#x} has {'them' if plural else 'it'} set"


#: Conditional jumps after a test: True where the jump is taken when the result is zero/equal.
_CONDITIONS = {"je": True, "jz": True, "jne": False, "jnz": False}


def _target(insn: Any) -> int | None:
    try:
        return int(insn.op_str, 0)
    except ValueError:
        return None


def _immediate(insn: Any) -> int | None:
    """The immediate operand of a two-operand instruction (its last), or None."""
    last = insn.op_str.rsplit(",", 1)[-1].strip()
    try:
        return int(last, 0) if "," in insn.op_str else None
    except ValueError:
        return None
