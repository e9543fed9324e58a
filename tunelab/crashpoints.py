"""Named crash points: places where a test may kill this process with SIGKILL, to prove nothing is lost.

    TUNELAB_CRASH_AT=trainer:checkpoint.after_optimizer:2 tunelab serve

names the process (`server` or `trainer`), the point and which hit of it kills (1-based). The kill happens once
per home: a marker file in `$TUNELAB_HOME` keeps the restarted process (and the next attempt of a job) alive.
`TUNELAB_CRASH_REPEAT=1` kills at every matching hit instead, for a job that crashes on every attempt.
Unset, a crash point is one comparison with None.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _parse(spec: str | None) -> tuple[str, str, int] | None:
    if not spec:
        return None
    role, point, hit = spec.split(":")
    return role, point, int(hit)


_target = _parse(os.environ.get("TUNELAB_CRASH_AT"))
_hits: dict[str, int] = {}
role = "server"  # the training process sets "trainer"


def crash_point(name: str) -> None:
    """Kill this process here with SIGKILL if TUNELAB_CRASH_AT names this point, this process and this hit."""
    if _target is None:
        return
    target_role, point, hit = _target
    if name != point or role != target_role:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != hit and not (os.environ.get("TUNELAB_CRASH_REPEAT") and _hits[name] >= hit):
        return
    if not os.environ.get("TUNELAB_CRASH_REPEAT"):
        marker = Path(os.environ.get("TUNELAB_HOME", ".")).expanduser() / ".crashed"
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
