"""Backup containers: Veeam backup files and plain disk images, opened read-only as disks.

References:
    - Veeam backup file layout as read by ``dissect.archive.vbk``: one folder per backed-up object,
      holding ``summary.xml`` (backup, point and object records) and one item per disk.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from lxml import etree

from openflr.engine.containers import open_disk_image
from openflr.engine.errors import BackupError, UnsupportedBackup
from openflr.engine.owners import read_guest_members

log = logging.getLogger(__name__)

__all__ = [
    "DISK_IMAGE_SUFFIXES",
    "Disk",
    "VbkObject",
    "open_image_disks",
    "open_vbk_disks",
    "read_vbk_objects",
]

DISK_IMAGE_SUFFIXES = (".raw", ".img", ".vhd", ".vhdx", ".vmdk", ".qcow2")

# Files inside a VBK object folder that hold metadata, not disks.
# GuestMembers.xml lists a machine's accounts: kilobytes; a bigger one is not read.
_MAX_MEMBERS = 16 << 20
_VBK_METADATA = re.compile(r"^(summary\.xml|.*\.xml|digest_.*|.*\.vmx|.*\.vmcx|.*\.nvram)$", re.I)


@dataclass
class Disk:
    """One disk of a restore point: a readable, seekable stream and a name for messages."""

    name: str
    stream: BinaryIO
    size: int


@dataclass
class VbkObject:
    """One backed-up machine inside a Veeam backup file, as its ``summary.xml`` tells it."""

    folder: str
    machine: str
    created: datetime
    job_name: str
    point_id: str
    algorithm: str
    point_type: str
    disk_names: list[str] = field(default_factory=list)
    unsupported: str | None = None
    backup_id: str = ""
    is_vm: bool = False


def _parse_veeam_time(text: str | None) -> datetime | None:
    """Parse ``MM/DD/YYYY HH:MM:SS`` as Veeam writes it into ``summary.xml``."""
    if not text:
        return None
    try:
        return datetime.strptime(text.strip(), "%m/%d/%Y %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _open_vbk(path: Path) -> Any:
    from dissect.archive.vbk import VBK

    fh = path.open("rb")
    try:
        return VBK(fh)
    except Exception as exc:
        fh.close()
        reason = str(exc) or type(exc).__name__
        raise BackupError(f"{path.name}: not a readable Veeam backup file ({reason})") from exc


def read_vbk_objects(path: Path) -> list[VbkObject]:
    """Read the machines and restore point facts stored in a Veeam backup file.

    Args:
        path: A ``.vbk`` (full) or ``.vib``/``.vrb`` (incremental) backup file.

    Raises:
        BackupError: the file is no Veeam backup file or its metadata cannot be read.
    """
    vbk = _open_vbk(path)
    try:
        return [_read_object(path, folder) for folder in vbk.get("/").iterdir() if folder.is_dir()]
    except BackupError:
        raise
    except Exception as exc:
        raise BackupError(f"{path.name}: damaged Veeam backup metadata ({exc})") from exc
    finally:
        vbk.fh.close()


def _read_object(path: Path, folder: Any) -> VbkObject:
    items = folder.listdir()
    summary = items.get("summary.xml")
    if summary is None:
        raise BackupError(f"{path.name}: folder {folder.name!r} has no summary.xml")

    root = etree.fromstring(summary.open().read(), etree.XMLParser(resolve_entities=False))
    backup = root.find(".//Backup")
    point = root.find(".//Point")
    obj = root.find(".//Object")
    if point is None or obj is None:
        raise BackupError(f"{path.name}: summary.xml has no Point or Object record")

    created = _parse_veeam_time(point.get("CreationTimeUtc"))
    if created is None:
        raise BackupError(f"{path.name}: summary.xml has no readable CreationTimeUtc")

    incremental = path.suffix.lower() in (".vib", ".vrb")
    disks = [
        name for name, item in items.items() if not item.is_dir() and not _VBK_METADATA.match(name)
    ]
    unsupported = None
    if incremental:
        # TODO: read the backup chain (full .vbk plus earlier increments) so increments mount.
        unsupported = (
            f"{path.name} is an incremental backup file: restoring from it needs its whole backup "
            "chain (the full .vbk and the earlier increments), which openflr cannot read yet"
        )
    else:
        for name in disks:
            if type(items[name]).__name__ != "IntFibItem":
                unsupported = f"{path.name}: disk {name} is stored in a form openflr cannot read"

    return VbkObject(
        folder=folder.name,
        machine=obj.get("DisplayName") or obj.get("Name") or path.stem,
        created=created,
        job_name=(backup.get("JobName") if backup is not None else None) or "",
        point_id=(point.get("Id") or "").strip("{}"),
        algorithm="Incremental" if incremental else "Full",
        point_type="Increment" if incremental else "Full",
        disk_names=sorted(disks),
        unsupported=unsupported,
        backup_id=((backup.get("Id") if backup is not None else None) or "").strip("{}"),
        # A VM backup keeps the VM's configuration beside its disks; an agent backup does not.
        is_vm=any(re.search(r"\.(vmx|vmcx)$", name, re.I) for name in items) or "Config" in items,
    )


def open_vbk_disks(
    path: Path, folder: str
) -> tuple[list[Disk], Callable[[], None], dict[str, str]]:
    """Open the disks of one machine inside a Veeam backup file.

    Returns:
        The disks, a function that closes the backup file, and the guest's accounts
        (``DOMAIN\\name`` by SID) that Veeam recorded in ``GuestMembers.xml``, if any.
    """
    vbk = _open_vbk(path)
    try:
        for obj in read_vbk_objects(path):
            if obj.folder == folder and obj.unsupported:
                raise UnsupportedBackup(obj.unsupported)
        items = vbk.get("/").listdir()[folder].listdir()
        accounts: dict[str, str] = {}
        members = items.get("GuestMembers.xml")
        if members is not None and not members.is_dir() and members.size <= _MAX_MEMBERS:
            accounts = read_guest_members(members.open().read())
        disks = []
        for name in sorted(items):
            item = items[name]
            if item.is_dir() or _VBK_METADATA.match(name):
                continue
            disks.append(Disk(name=name, stream=item.open(), size=item.size))
    except Exception:
        vbk.fh.close()
        raise
    if not disks:
        vbk.fh.close()
        raise BackupError(f"{path.name}: no disk found for {folder!r}")
    return disks, vbk.fh.close, accounts


def _close_files(root: object, depth: int = 8) -> None:
    """Close every OS-level file reachable from ``root`` through attributes and containers."""
    seen: set[int] = set()
    pending: list[tuple[object, int]] = [(root, 0)]
    while pending:
        item, level = pending.pop()
        if id(item) in seen or level > depth:
            continue
        seen.add(id(item))
        if isinstance(item, (io.BufferedReader, io.FileIO)):
            item.close()
            continue
        if isinstance(item, (list, tuple, set)):
            pending.extend((child, level + 1) for child in item)
        elif isinstance(item, dict):
            pending.extend((child, level + 1) for child in item.values())
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            pending.extend((child, level + 1) for child in vars(item).values())


def open_image_disks(paths: list[Path]) -> tuple[list[Disk], Callable[[], None]]:
    """Open disk image files (raw, VHD, VHDX, VMDK, QCOW2) as disks.

    Raises:
        BackupError: an image, or a file it needs (a VMDK extent or parent, a QCOW2 backing
            file), is missing or in a format that cannot be read; the message names the file.
    """
    disks: list[Disk] = []
    opened: list[Any] = []

    def close() -> None:
        for item in opened:
            try:
                item.close()
            except Exception:  # closing is best effort; the data is only ever read
                log.debug("closing %r failed", item, exc_info=True)
            # Several dissect containers leave their image files open on close(); find the
            # files they hold (a chain of parents included) and close them, or every unmount
            # leaks descriptors.
            _close_files(item)

    try:
        for path in paths:
            stream, size, holder = open_disk_image(path)
            opened.append(holder)
            disks.append(Disk(name=path.name, stream=stream, size=size))
    except Exception:
        close()
        raise
    return disks, close
