"""``python -m vmcore`` and the ``vmcore`` console script: :func:`vmcore.cli.command`, its modules
imported with the cyclic garbage collector paused.

Importing vmcore and what it rests on (attrs classes, YAML, pluggy, unicorn) makes some 20,000
objects that live as long as the process. While they are made, the collector's young passes
walk them again and again: 4-7 ms of a firmware boot's ``vmcore run`` (bench/boot.py). So they
are made with the collector off, then frozen (``gc.freeze``: left out of every later pass, as
they would never be freed), and the collector is on again before anything runs.
"""

from __future__ import annotations

import gc


def main() -> None:
    collecting = gc.isenabled()
    gc.disable()
    try:
        from .cli import command
    finally:
        gc.freeze()
        if collecting:
            gc.enable()
    command()


if __name__ == "__main__":
    main()
