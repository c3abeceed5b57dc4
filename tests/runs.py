"""A check that the runs a guest file maps to hold exactly the bytes its stream reads.

Downloads over plain HTTP send the bytes of :class:`~openflr.engine.extents.FileRun` runs from
the image files with ``sendfile``; this reads every run back by hand (``pread`` for a file run,
zeros for a zero run, the stream for the rest) and compares it with a plain read of the file,
for the whole file and for ranges that start and end at odd offsets.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from openflr.catalog import Catalog
from openflr.engine import open_restore_point
from openflr.engine.errors import BackupError, EngineError
from openflr.engine.extents import FileRun, Run, StreamRun, ZeroRun
from openflr.engine.guest import GuestFileStream, GuestFileSystem


def run_bytes(stream: GuestFileStream, runs: list[Run]) -> bytes:
    """The bytes the runs hold, read without the zero-copy path."""
    parts = []
    for run in runs:
        if isinstance(run, FileRun):
            parts.append(os.pread(run.file.fileno(), run.length, run.offset))
        elif isinstance(run, ZeroRun):
            parts.append(bytes(run.length))
        else:
            assert isinstance(run, StreamRun)
            parts.append(stream.read_run(run, 0, run.length))
    return b"".join(parts)


def _files(files: GuestFileSystem, folder: str, limit: int) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    folders = [folder]
    while folders and len(found) < limit:
        try:
            entries = files.list_folder(folders.pop())
        except EngineError:
            continue
        for entry in entries:
            if entry.kind == "dir":
                folders.append(entry.path)
            elif entry.kind == "file":
                found.append((entry.path, entry.size))
    return found[:limit]


@dataclass
class Mapped:
    """What a restore point's whole-file maps held: the kinds of run (``FileRun``, ``ZeroRun``,
    ``StreamRun``) in all, and per guest file its kinds and the image files (inode numbers) its
    file runs lie in."""

    kinds: Counter[str] = field(default_factory=Counter)
    files: dict[str, Counter[str]] = field(default_factory=dict)
    images: dict[str, set[int]] = field(default_factory=dict)


def check_points(repository: Path, per_root: int = 40) -> dict[str, Mapped]:
    """Compare runs with reads for files of every restore point of ``repository``.

    Returns what the whole-file maps held per machine name, so that callers can tell the
    zero-copy path was taken, and for which files.
    """
    seen: dict[str, Mapped] = {}
    rng = random.Random(0x5E4D)
    for point in Catalog([repository]).all():
        try:
            opened = open_restore_point(point.source)
        except BackupError:
            continue  # a point made to fail to open; its own tests cover it
        mapped = seen.setdefault(point.machine, Mapped())
        try:
            files = opened.files
            for root in files.roots:
                for path, size in _files(files, root, per_root):
                    try:
                        stream = files.open(path)
                    except EngineError:
                        continue  # a file made unreadable; its own tests cover it
                    with stream:
                        whole = stream.read(size)
                        runs = stream.runs(0, size)
                        kinds = Counter(type(run).__name__ for run in runs)
                        mapped.kinds.update(kinds)
                        mapped.files[path] = kinds
                        mapped.images[path] = {
                            os.fstat(run.file.fileno()).st_ino
                            for run in runs
                            if isinstance(run, FileRun)
                        }
                        assert run_bytes(stream, runs) == whole, path
                        for _ in range(3):
                            first = rng.randrange(size + 1)
                            length = rng.randrange(size - first + 1)
                            got = run_bytes(stream, stream.runs(first, length))
                            assert got == whole[first : first + length], (path, first, length)
        finally:
            opened.close()
    return seen
