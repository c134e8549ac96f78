"""Imported as a plugin by a child run: the software CPU then runs as it does where the engine's
SVM intercept controls are not found (another unicorn build): no instruction is trapped, and a
CR4 no processor could hold stops the machine instead of raising #GP.
"""

from vmcore.accel import unicorn_layout

_stated = unicorn_layout.stated_cpu_layout


def _without_svm(lib):  # type: ignore[no-untyped-def]
    layout = _stated(lib)
    return None if layout is None else layout.evolve(svm=None)


unicorn_layout.stated_cpu_layout = _without_svm  # vmcore's engine build: what it states, less SVM
unicorn_layout._probe_svm = lambda *_args: None  # a stock engine: the experiment finds nothing
unicorn_layout.cpu_layout.cache_clear()
