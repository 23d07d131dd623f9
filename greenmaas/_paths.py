"""Small helpers for the files greenmaas keeps for a user (key file, device claims)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["mkdir_private"]


def mkdir_private(path: Path) -> None:
    """Create directory ``path`` 0700 (readable by this user only) unless it exists."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
    else:
        os.chmod(path, 0o700)  # ours, just made: the umask may have taken owner bits
