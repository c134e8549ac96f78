"""Imported as a plugin by a child run: the software CPU then runs as it does where no kick can
be installed (another unicorn build): in counted slices, here of one instruction each.

tests/accel/test_accel_tcg.py uses it to put a slice's end right after instructions whose
last byte is 0xF4 (hlt's opcode), which the run loop must not take for a hlt, and to run
guests on that fallback path.
"""

from vmcore.accel import unicorn

unicorn.hook_bounds_offset = lambda: None  # no _Kicker: the fallback
unicorn._SLICE = 1
