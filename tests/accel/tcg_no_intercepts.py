"""Imported as a plugin by a child run: the software CPU then runs as it does where the engine's
SVM intercept controls are not found (another unicorn build): no instruction is trapped, and a
CR4 no processor could hold stops the machine instead of raising #GP.
"""

from vmcore.accel import unicorn_layout

unicorn_layout._probe_svm = lambda *_args: None
unicorn_layout.cpu_layout.cache_clear()
