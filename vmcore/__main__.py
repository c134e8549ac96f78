"""``python -m vmcore`` and the ``vmcore`` console script: :func:`vmcore.cli.command`, with the
cyclic garbage collector paused until the machine is built.

Importing vmcore and what it rests on (attrs classes, YAML, pluggy), then building a machine
(its device modules, their Config classes, the devices), makes some 30,000 objects that live as
long as the process. While they are made, the collector's young passes walk them again and
again: 14 passes, about 3 ms of a firmware boot's ``vmcore run`` (bench/boot.py), and 4-7 ms
more for the imports alone. So they are made with the collector off, then frozen
(``gc.freeze``: left out of every later pass, as they would never be freed), and the collector
is on again as the guest starts (``vmcore run``: the machine built, its accelerator set up and
its devices started; any other command: once its arguments are read).
"""

from __future__ import annotations

import gc


def main() -> None:
    collecting = gc.isenabled()
    gc.disable()

    def resume() -> None:
        gc.freeze()
        if collecting:
            gc.enable()

    try:
        from .cli import command
    except BaseException:
        resume()
        raise
    command(resume)


if __name__ == "__main__":
    main()
