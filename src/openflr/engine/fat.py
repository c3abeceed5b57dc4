"""FAT12/16/32 as the guest sees it, on top of ``dissect.fat``.

Two things differ from the plain library view:

- The volume label is a directory entry of the root folder on disk, but no file: it is left out
  of listings and of path lookups (a label equal to a folder's name used to hide that folder).
- Short names carry case flags (Windows NT sets them for names like ``readme.txt`` that fit in 8.3
  in lower case); they are applied, so the name is shown the way the guest showed it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from dissect.target.filesystems.fat import FatDirEntry, FatFilesystem, FatFilesystemEntry

log = logging.getLogger(__name__)

__all__ = ["GuestFatFilesystem", "display_name"]

_LOWER_BASE = 0x08
_LOWER_EXT = 0x10


def display_name(entry: Any) -> str:
    """The name of a FAT directory entry as the guest shows it."""
    if entry.ldirents:
        return str(entry.name)
    flags = int(getattr(entry.dirent, "DIR_NTRes", 0) or 0)
    base, dot, ext = str(entry.short_name).partition(".")
    if flags & _LOWER_BASE:
        base = base.lower()
    if flags & _LOWER_EXT:
        ext = ext.lower()
    return f"{base}{dot}{ext}"


def _children(entry: Any) -> Iterator[Any]:
    for child in entry.iterdir():
        if child.is_volume_id() and not child.is_directory():
            continue
        if child.name in (".", ".."):
            continue
        yield child


class GuestFatFilesystem(FatFilesystem):  # type: ignore[misc]
    """A FAT file system with the guest's names and without the volume label entry."""

    def get(self, path: str) -> FatFilesystemEntry:
        return _GuestFatEntry(self, path, self._get_entry(path))

    def _get_entry(self, path: str, entry: Any = None) -> Any:
        current = entry if entry is not None else self.fatfs.root
        for part in path.replace("\\", "/").split("/"):
            if part in ("", "."):
                continue
            if not current.is_directory():
                raise NotADirectoryError(path)
            wanted = part.upper()
            for child in _children(current):
                if wanted in (str(child.name).upper(), str(child.short_name).upper()):
                    current = child
                    break
            else:
                raise FileNotFoundError(path)
        return current


class _GuestFatEntry(FatFilesystemEntry):  # type: ignore[misc]
    def get(self, path: str) -> FatFilesystemEntry:
        full_path = f"{self.path.rstrip('/')}/{path}"
        return _GuestFatEntry(self.fs, full_path, self.fs._get_entry(path, self.entry))

    def scandir(self) -> Iterator[FatDirEntry]:
        if not self.is_dir():
            raise NotADirectoryError(self.path)
        for child in _children(self.entry):
            yield _GuestFatDirEntry(self.fs, self.path, display_name(child), child)


class _GuestFatDirEntry(FatDirEntry):  # type: ignore[misc]
    """A listed FAT entry whose own entry keeps the guest's view when opened or listed."""

    def get(self) -> FatFilesystemEntry:
        return _GuestFatEntry(self.fs, self.path, self.entry)


def open_exfat_file(entry: Any) -> Any:
    """Open an exFAT file (a dissect.target ``ExfatFilesystemEntry``) with its data in place.

    dissect.target (3.21, and 3.25.1, the one pinned) builds the file's run list in sectors but
    reads it in clusters, so every file of more than a few bytes read back empty; here the runs
    are read in sectors. Check again when the pin moves.
    """
    from dissect.util.stream import RunlistStream

    exfat = entry.fs.exfat
    stream = entry.entry[0].stream
    size = int(stream.data_length)
    if stream.flags.not_fragmented:
        runs = exfat.runlist(entry.cluster, True, size) if size else []
    else:
        runs = exfat.runlist(entry.cluster, False)
    return RunlistStream(exfat.filesystem, runs, size, exfat.sector_size)
