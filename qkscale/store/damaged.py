"""Damaged parts of a store are set aside (never deleted) before they are made again.

``STORE/damaged/`` keeps them, each under its path in the store with the time it was set aside,
for a look later; readers never look there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from qkscale.store import layout

DAMAGED = "damaged"


def set_aside(root: Path, path: Path) -> Path:
    """Move ``path`` (a file or folder inside store ``root``) to ``root/damaged/``; returns where it went."""
    relative = path.relative_to(root)
    target = root / DAMAGED / relative.parent / f"{relative.name}.{time.strftime('%Y%m%dT%H%M%S')}.{os.getpid()}"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.rename(path, target)
    return target


def uncommitted_shard_folders(root: Path, n_shards: int) -> list[int]:
    """Shards whose folder is in place without ``shard.json``: committed-looking, yet never finished."""
    return [
        s
        for s in range(n_shards)
        if layout.shard_dir(root, s).is_dir() and not (layout.shard_dir(root, s) / layout.SHARD_INFO).is_file()
    ]
