"""Read-only access to restore points: backup -> disks -> volumes -> file systems -> guest paths.

The engine knows nothing of the API. It opens backup files read-only, always, with the dissect
libraries; nothing is mounted by the kernel.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from openflr.engine.backup import open_image_disks, open_vbk_disks
from openflr.engine.errors import BackupError, EngineError
from openflr.engine.guest import GuestEntry, GuestFileSystem, find_volumes

log = logging.getLogger(__name__)

__all__ = [
    "EngineError",
    "GuestEntry",
    "GuestFileSystem",
    "ImageSource",
    "OpenedRestorePoint",
    "VbkSource",
    "open_restore_point",
]


@dataclass(frozen=True)
class VbkSource:
    """One machine inside a Veeam backup file."""

    path: Path
    folder: str


@dataclass(frozen=True)
class ImageSource:
    """Disk image files that together make one machine's disks."""

    paths: tuple[Path, ...]


@dataclass
class OpenedRestorePoint:
    """An opened restore point: its guest files and what could not be opened."""

    files: GuestFileSystem
    skipped: list[str]

    def close(self) -> None:
        """Release the backup files."""
        self.files.close()


def open_restore_point(source: VbkSource | ImageSource) -> OpenedRestorePoint:
    """Open a restore point's disks and find its file systems.

    Raises:
        BackupError: the backup cannot be opened, or holds no file system openflr can read; the
            message names the file and the cause.
    """
    started = time.monotonic()
    accounts: dict[str, str] = {}
    if isinstance(source, VbkSource):
        disks, close, accounts = open_vbk_disks(source.path, source.folder)
    else:
        disks, close = open_image_disks(list(source.paths))

    try:
        volumes, skipped = find_volumes(disks)
    except Exception:
        close()
        raise
    if not volumes:
        close()
        detail = "; ".join(skipped) if skipped else "no partition holds a known file system"
        raise BackupError(f"no readable file system on the disks ({detail})")

    files = GuestFileSystem(volumes, close, accounts)
    log.debug(
        "opened %s in %.3f s: roots %s, skipped %s",
        source,
        time.monotonic() - started,
        list(files.roots),
        skipped,
    )
    return OpenedRestorePoint(files=files, skipped=skipped)
