"""Keeping `$TUNELAB_HOME` private: training data, job logs, adapters and the state database are for their owner.

Every entry point (the `tunelab` command, the trainer process) sets the umask to 077 before it writes anything,
so whatever it creates under the home is readable by its owner only: files 0600, directories 0700. `tunelab
serve` also closes a home that was created open (0755 by an earlier version, or by hand).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077


def private_files() -> None:
    """From now on, files and directories this process creates are its owner's only."""
    os.umask(PRIVATE_UMASK)


def private_home(home: Path) -> Path:
    """Create the home (0700) or close an existing one; returns its resolved path."""
    private_files()
    home = home.expanduser()
    home.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(home.stat().st_mode) != 0o700:
        home.chmod(0o700)
    return home
