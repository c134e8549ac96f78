"""Imported as a plugin by a child run: the software CPU then ends a slice after every instruction.

tests/accel/test_accel_tcg.py uses it to put a slice's end right after instructions whose
last byte is 0xF4 (hlt's opcode), which the run loop must not take for a hlt.
"""

from vmcore.accel import unicorn

unicorn._SLICE = 1
