"""The catalog: restore points found in the repositories, with ids that survive rescans.

A repository is a folder. Restore points come from:

- Veeam backup files (``.vbk``, ``.vib``, ``.vrb``) anywhere below it, named by their own metadata;
- disk-image folders ``<repository>/<machine>/<2026-11-30T220000Z>/`` holding disk images.

The catalog is derived from the files alone, so it is kept in memory and rebuilt by a rescan.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from openflr.engine import ImageSource, VbkSource
from openflr.engine.backup import DISK_IMAGE_SUFFIXES, read_vbk_objects
from openflr.engine.errors import BackupError

log = logging.getLogger(__name__)

__all__ = [
    "Backup",
    "BackupFile",
    "Catalog",
    "Computer",
    "PointInTime",
    "RestorePoint",
    "derived_id",
    "parse_restore_point_id",
]

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
    kind: str = "agent"
    backup_key: str = ""
    file_key: str = ""

    @property
    def name(self) -> str:
        """The API name: ``<machine>@<yyyy-MM-dd HH:mm:ss>`` in UTC."""
        return f"{self.machine}@{self.created.strftime('%Y-%m-%d %H:%M:%S')}"


def derived_id(kind: str, key: str) -> str:
    """A stable GUID for a catalog object of a kind (``backup``, ``file``, ...) and its key."""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{kind}\n{key}"))


@dataclass(frozen=True)
class Backup:
    """A backup (a job's chain, or one machine's image folders) and its restore points."""

    id: str
    name: str
    kind: str
    point_ids: tuple[str, ...]


@dataclass(frozen=True)
class BackupFile:
    """A backup file (or disk-image folder) and the restore points stored in it."""

    id: str
    name: str
    path: str
    backup_id: str
    created: datetime
    size: int
    point_ids: tuple[str, ...]


@dataclass(frozen=True)
class PointInTime:
    """A restore point of a backup at one time: the machines' restore points taken together."""

    id: str
    backup_id: str
    created: datetime
    point_type: str
    algorithm: str
    point_ids: tuple[str, ...]

    @property
    def name(self) -> str:
        """The API name, .NET's short form: ``Oct  6 2016  1:59PM``."""
        hour = self.created.hour % 12 or 12
        suffix = "AM" if self.created.hour < 12 else "PM"
        return (
            f"{self.created:%b} {self.created.day:>2} {self.created.year} "
            f"{hour:>2}:{self.created:%M}{suffix}"
        )


@dataclass(frozen=True)
class Computer:
    """A protected machine found in the repositories."""

    id: str
    name: str
    point_ids: tuple[str, ...]


@dataclass
class _Index:
    """Everything derived from the restore points, built once per scan."""

    points: dict[str, RestorePoint]
    backups: dict[str, Backup]
    files: dict[str, BackupFile]
    moments: dict[str, PointInTime]
    computers: dict[str, Computer]
    moment_of: dict[str, str]

    def restricted(self, keep: Callable[[RestorePoint], bool]) -> _Index:
        """The index of only the restore points ``keep`` accepts."""
        return _Index.build({i: p for i, p in self.points.items() if keep(p)})

    @classmethod
    def build(cls, points: dict[str, RestorePoint]) -> _Index:
        ordered = sorted(points.values(), key=lambda p: (p.created, p.machine, p.id))
        by_backup: dict[str, list[RestorePoint]] = {}
        by_file: dict[str, list[RestorePoint]] = {}
        by_moment: dict[tuple[str, datetime], list[RestorePoint]] = {}
        by_computer: dict[str, list[RestorePoint]] = {}
        for point in ordered:
            by_backup.setdefault(point.backup_key, []).append(point)
            by_file.setdefault(point.file_key, []).append(point)
            by_moment.setdefault((point.backup_key, point.created), []).append(point)
            if point.kind == "agent":
                by_computer.setdefault(point.machine.lower(), []).append(point)

        backups = {}
        for key, members in by_backup.items():
            backup = Backup(
                derived_id("backup", key),
                members[0].backup_name,
                members[0].kind,
                tuple(p.id for p in members),
            )
            backups[backup.id] = backup
        files = {}
        for key, members in by_file.items():
            first = members[0]
            item = BackupFile(
                id=derived_id("file", key),
                name=first.file_name,
                path=key,
                backup_id=derived_id("backup", first.backup_key),
                created=first.created,
                size=_size_of(first),
                point_ids=tuple(p.id for p in members),
            )
            files[item.id] = item
        moments = {}
        moment_of = {}
        for (key, created), members in by_moment.items():
            moment = PointInTime(
                id=derived_id("point", f"{key}\n{created.isoformat()}"),
                backup_id=derived_id("backup", key),
                created=created,
                point_type=members[0].point_type,
                algorithm=members[0].algorithm,
                point_ids=tuple(p.id for p in members),
            )
            moments[moment.id] = moment
            moment_of.update({p.id: moment.id for p in members})
        computers = {}
        for key, members in by_computer.items():
            computer = Computer(
                derived_id("computer", key), members[0].machine, tuple(p.id for p in members)
            )
            computers[computer.id] = computer
        return cls(points, backups, files, moments, computers, moment_of)


def _size_of(point: RestorePoint) -> int:
    paths = [point.source.path] if isinstance(point.source, VbkSource) else point.source.paths
    total = 0
    for path in paths:
        try:
            total += path.stat().st_size
        except OSError:
            continue
    return total


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
        self._index = _Index.build({})
        self._scanned_at = 0.0

    def all(self) -> list[RestorePoint]:
        """Return every restore point, oldest first, then by machine name."""
        self._refresh()
        return sorted(self._index.points.values(), key=lambda p: (p.created, p.machine, p.id))

    def get(self, point_id: str) -> RestorePoint | None:
        """Return a restore point by id (any form :func:`parse_restore_point_id` accepts)."""
        canonical = parse_restore_point_id(point_id)
        if canonical is None:
            return None
        self._refresh()
        point = self._index.points.get(canonical)
        if point is None and time.monotonic() - self._scanned_at > 2.0:
            self.rescan()  # a new backup may have arrived since the last scan
            point = self._index.points.get(canonical)
        return point

    def peek(self, point_id: str) -> RestorePoint | None:
        """Return a restore point from the last scan without reading the repositories.

        None when :meth:`get` may have to read them: the scan is old, or the id is not in it.
        """
        if not self._scanned_at or time.monotonic() - self._scanned_at > self.max_age:
            return None
        canonical = parse_restore_point_id(point_id)
        return self._index.points.get(canonical) if canonical is not None else None

    def index(self) -> _Index:
        """Backups, backup files, points in time and computers, as of the last scan."""
        self._refresh()
        return self._index

    def find(self, collection: str, item_id: str) -> object | None:
        """Look an item up in one of the index's collections by any id form clients send."""
        canonical = parse_restore_point_id(item_id)
        if canonical is None:
            return None
        found: object | None = getattr(self.index(), collection).get(canonical)
        return found

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
        index = _Index.build(points)
        with self._lock:
            self._index = index
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
                backup_key=f"file:{relative}",
                file_key=relative,
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
            kind="vm" if obj.is_vm else "agent",
            backup_key=f"veeam:{obj.backup_id}" if obj.backup_id else f"file:{relative}",
            file_key=relative,
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
        kind=_machine_kind(folder.parent),
        backup_key=f"images:{folder.parent.relative_to(repository).as_posix()}",
        file_key=relative,
    )


def _machine_kind(machine_folder: Path) -> str:
    """``vm`` when ``<machine>/machine.json`` says ``{"type": "vm"}``, else ``agent``."""
    marker = machine_folder / "machine.json"
    if not marker.is_file():
        return "agent"
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable (%s); taking the machine as an agent", marker, exc)
        return "agent"
    kind = str(data.get("type", "agent")).lower() if isinstance(data, dict) else "agent"
    return "vm" if kind == "vm" else "agent"


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
