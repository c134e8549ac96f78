"""Imported as a plugin by a child run: another thread kicks the software CPU without pause.

tests/accel/test_kick_storm.py compares such runs with quiet ones: a kick (the Waker's
timers, host input, the time limit) may stop the guest anywhere, and where it stops must
change nothing the devices or the registers see.
"""

import threading
import time

from vmcore.accel import unicorn

_begin = unicorn.UnicornAccelerator.begin
_end = unicorn.UnicornAccelerator.end
KICKS = [0]


def begin(self, core):  # type: ignore[no-untyped-def]
    enter = _begin(self, core)
    self._storm_stop = threading.Event()

    def storm() -> None:
        while not self._storm_stop.is_set():
            self.kick()
            KICKS[0] += 1
            time.sleep(0.00002)

    self._storm = threading.Thread(target=storm, daemon=True)
    self._storm.start()
    return enter


def end(self):  # type: ignore[no-untyped-def]
    self._storm_stop.set()
    self._storm.join()
    _end(self)


unicorn.UnicornAccelerator.begin = begin
unicorn.UnicornAccelerator.end = end

