"""Progress bars that behave in terminals and in CI logs.

tqdm in a terminal; when stderr is not a TTY (CI, nohup, files) the bar is updated at most every
`PADISTILL_PROGRESS_SECONDS` (default 30 s) so logs stay readable. `PADISTILL_PROGRESS=0` turns bars off.
"""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def progress_bar(iterable=None, desc: str = "", total: int | None = None, initial: int = 0,
                 disable: bool = False, unit: str = "it", leave: bool = True):
    if os.environ.get("PADISTILL_PROGRESS", "1") == "0":
        disable = True
    tty = sys.stderr.isatty()
    mininterval = 0.5 if tty else float(os.environ.get("PADISTILL_PROGRESS_SECONDS", "30"))
    return tqdm(iterable, desc=desc, total=total, initial=initial, disable=disable, unit=unit,
                mininterval=mininterval, dynamic_ncols=tty, leave=leave, file=sys.stderr)
