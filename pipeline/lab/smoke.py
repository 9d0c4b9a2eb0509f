"""``python3 -m pipeline lab``: boot one triple in the lab and say how it went.

Boots the triple as a diskless machine (pipeline/lab/namespace.py), waits for
the multi-user target, prints the boot status the guest reports and its
active paths, and powers it off.  The command line (pipeline/cli.py) parses
the arguments and calls :func:`boot_once`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pipeline.lab.guest import probe_accel
from pipeline.lab.namespace import Lab
from pipeline.naming import Triple


def boot_once(triple: Triple, *, links_down: tuple[int, ...] = (), timeout: float = 300,
              keep: Path | None = None) -> int:
    """Boot ``triple`` once; 0 if it reached the multi-user target, else 1.

    ``links_down`` are the paths (0, 1) cut from power-on; ``keep`` is a
    folder for the logs and the LUN copy (default: a temporary one, removed).
    A PipelineError (a missing tool, a failed set-up) goes to the caller.
    """
    with Lab(triple, keep) as lab:
        print(f"lab: namespace {lab.ns}, work {lab.work}, accel "
              f"{probe_accel(triple.kernel, lab.work)}", flush=True)
        guest = lab.boot(links_down=links_down)
        try:
            seconds = guest.wait_ready(timeout)
        except TimeoutError:
            print(guest.console_text()[-3000:])
            print("lab: the guest did not reach the multi-user target", file=sys.stderr)
            return 1
        print(f"lab: multi-user target after {seconds:.1f}s")
        status = re.findall(r"^.*open-iscsi-boot:.*$", guest.console_text(), re.M)
        print("\n".join(status[-3:]))
        print(guest.check("iscsi-boot-status || true"))
        print(f"lab: active paths {guest.paths()}")
        took = guest.poweroff()
        print("lab: poweroff " + (f"took {took:.1f}s" if took is not None else "timed out"))
    return 0
