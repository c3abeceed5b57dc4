"""The catalog: restore points found in the repositories, with ids that survive rescans.

A repository is a folder. Restore points come from:

- Veeam backup files (``.vbk``, ``.vib``, ``.vrb``) anywhere below it, named by their own metadata;
- disk-image folders ``<repository>/<machine>/<2026-11-30T220000Z>/`` holding disk images.

The catalog is derived from the files alone, so it is kept in memory and rebuilt by a rescan.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from openflr.engine import ImageSource, VbkSource
from openflr.engine.backup import DISK_IMAGE_SUFFIXES, read_vbk_objects
from openflr.engine.errors import BackupError

log = logging.getLogger(__name__)

__all__ = ["Catalog", "RestorePoint", "parse_restore_point_id"]

# Ids are derived from the backup file's path inside its repository and the point inside it.
_ID_NAMESPACE = uuid.UUID("5d1c6a53-8f4e-4c55-9d33-0b7a9d6e2f10")

_VEEAM_SUFFIXES = (".vbk", ".vib", ".vrb")
_POINT_FOLDER = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2})(\d{2})(\d{2})Z$")
# Extent and delta files that belong to another image's descriptor, not disks of their own.
_VMDK_PART = re.compile(r"-(flat|delta|sesparse|s\d{3}|f\d{3})\.vmdk$", re.I)


@dataclass(frozen=True)
class RestorePoint:
    """A point in time of one machine that files can be restored from."""

    id: str
    machine: str
    created: datetime
    source: VbkSource | ImageSource
    backup_name: str
    file_name: str
    algorithm: str = "Full"
    point_type: str = "Full"
    unsupported: str | None = None

    @property
    def name(self) -> str:
        """The API name: ``<machine>@<yyyy-MM-dd HH:mm:ss>`` in UTC."""
        return f"{self.machine}@{self.created.strftime('%Y-%m-%d %H:%M:%S')}"


def parse_restore_point_id(text: str) -> str | None:
    """Return the canonical id of a restore point id as clients send it, or None.

    Accepts a bare GUID in any case, with or without braces, and the URN form
    ``urn:veeam:AgentRestorePoint:<guid>``.
    """
    text = text.strip()
    if text.lower().startswith("urn:veeam:"):
        text = text.rsplit(":", 1)[-1]
    try:
        return str(uuid.UUID(text.strip("{}")))
    except ValueError:
        return None


class Catalog:
    """Restore points of a set of repositories.

    Args:
        repositories: The repository folders.
        max_age: Seconds after which a lookup rescans the repositories.
    """

    def __init__(self, repositories: list[Path], max_age: float = 60.0) -> None:
        self.repositories = [p.resolve() for p in repositories]
        self.max_age = max_age
        self._lock = threading.Lock()
        self._points: dict[str, RestorePoint] = {}
        self._scanned_at = 0.0

    def all(self) -> list[RestorePoint]:
        """Return every restore point, oldest first, then by machine name."""
        self._refresh()
        return sorted(self._points.values(), key=lambda p: (p.created, p.machine, p.id))

    def get(self, point_id: str) -> RestorePoint | None:
        """Return a restore point by id (any form :func:`parse_restore_point_id` accepts)."""
        canonical = parse_restore_point_id(point_id)
        if canonical is None:
            return None
        self._refresh()
        point = self._points.get(canonical)
        if point is None and time.monotonic() - self._scanned_at > 2.0:
            self.rescan()  # a new backup may have arrived since the last scan
            point = self._points.get(canonical)
        return point

    def rescan(self) -> None:
        """Read the repositories again."""
        points: dict[str, RestorePoint] = {}
        for repository in self.repositories:
            if not repository.is_dir():
                log.warning("repository %s is not a folder; skipped", repository)
                continue
            for point in _scan_repository(repository):
                if point.id in points:
                    log.warning("restore point %s found twice; keeping the first", point.name)
                    continue
                points[point.id] = point
        with self._lock:
            self._points = points
            self._scanned_at = time.monotonic()
        log.info(
            "catalog scanned: %d restore points in %d repositories",
            len(points),
            len(self.repositories),
        )

    def _refresh(self) -> None:
        if time.monotonic() - self._scanned_at > self.max_age or not self._scanned_at:
            self.rescan()


def _scan_repository(repository: Path) -> list[RestorePoint]:
    points: list[RestorePoint] = []
    for path in sorted(repository.rglob("*")):
        if path.is_file() and path.suffix.lower() in _VEEAM_SUFFIXES:
            points.extend(_veeam_points(repository, path))
        elif path.is_dir() and _POINT_FOLDER.match(path.name):
            point = _image_point(repository, path)
            if point is not None:
                points.append(point)
    return points


def _point_id(*facts: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, "\n".join(facts)))


def _veeam_points(repository: Path, path: Path) -> list[RestorePoint]:
    relative = path.relative_to(repository).as_posix()
    try:
        objects = read_vbk_objects(path)
    except BackupError as exc:
        # Listed all the same, so that the failure is seen when someone tries to restore.
        log.warning("%s: %s", path, exc)
        created = datetime.fromtimestamp(path.stat().st_mtime, UTC).replace(microsecond=0)
        return [
            RestorePoint(
                id=_point_id(relative),
                machine=path.stem,
                created=created,
                source=VbkSource(path, ""),
                backup_name=path.stem,
                file_name=path.name,
                unsupported=str(exc),
            )
        ]

    return [
        RestorePoint(
            id=_point_id(relative, obj.folder),
            machine=obj.machine,
            created=obj.created,
            source=VbkSource(path, obj.folder),
            backup_name=obj.job_name or obj.machine,
            file_name=path.name,
            algorithm=obj.algorithm,
            point_type=obj.point_type,
            unsupported=obj.unsupported,
        )
        for obj in objects
    ]


def _image_point(repository: Path, folder: Path) -> RestorePoint | None:
    match = _POINT_FOLDER.match(folder.name)
    assert match is not None
    try:
        year, month, day, hour, minute, second = (int(g) for g in match.groups())
        created = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        log.warning("%s: folder name is no valid time; skipped", folder)
        return None

    images = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in DISK_IMAGE_SUFFIXES and not _VMDK_PART.search(p.name)
    )
    images = _drop_backing_files(images)
    if not images:
        return None

    machine = folder.parent.name
    relative = folder.relative_to(repository).as_posix()
    return RestorePoint(
        id=_point_id(relative),
        machine=machine,
        created=created,
        source=ImageSource(tuple(images)),
        backup_name=machine,
        file_name=images[0].name,
    )


def _drop_backing_files(images: list[Path]) -> list[Path]:
    """Leave out QCOW2 images that are the backing file of another image in the folder."""
    backing: set[str] = set()
    for image in images:
        if image.suffix.lower() != ".qcow2":
            continue
        try:
            with image.open("rb") as fh:
                header = fh.read(512)
                if header[:4] != b"QFI\xfb":
                    continue
                offset = int.from_bytes(header[8:16], "big")
                size = int.from_bytes(header[16:20], "big")
                if offset and 0 < size < 4096:
                    fh.seek(offset)
                    backing.add(Path(fh.read(size).decode("utf-8", "replace")).name)
        except OSError:
            continue
    return [p for p in images if p.name not in backing]
