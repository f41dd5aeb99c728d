"""One process at a time in a run directory.

Two trainers writing one run directory would interleave their metrics rows and
overwrite each other's checkpoints, and both would exit 0. A trainer therefore
holds an exclusive ``flock`` on ``RUN_DIR/.lock`` for as long as it runs, with its
process id written inside for the message the next one gets. The kernel drops the
lock when its holder's process ends in any way (SIGKILL included), so a lock file
left behind by a dead process never blocks: only a live holder does.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK = ".lock"


class RunDirBusy(ValueError):
    """Another live process holds the run directory; the message names it and its process id."""


def lock(run_dir: str | Path):
    """Take ``run_dir``'s lock (creating the folder); return the open lock file, which holds
    the lock until it is closed or the process ends. Raise :class:`RunDirBusy` naming the
    holder's process id if another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise RunDirBusy(
            f"{run_dir} is in use by process {holder} (it holds {run_dir / LOCK}); wait for it "
            "to end, stop it, or choose another --run-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
