"""The guest's file namespace: volumes found on the disks, arranged the way the guest saw them.

Windows volumes become drive letters (``C:``, ``D:``); Linux file systems become one tree at
``/``, assembled from the guest's ``/etc/fstab``; a volume that fits neither becomes a root of its
own (``Volume2:``). Guest paths use forward slashes: ``C:/Users/notes.txt``, ``/home/user/a.txt``.
"""

from __future__ import annotations

import logging
import stat as stat_module
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal

from openflr.engine.backup import Disk
from openflr.engine.errors import (
    GuestFileUnreadable,
    GuestPathInvalid,
    GuestPathNotFound,
    IsAFolder,
    NotAFolder,
)
from openflr.engine.fat import GuestFatFilesystem

log = logging.getLogger(__name__)

__all__ = ["GuestEntry", "GuestFileStream", "GuestFileSystem", "Volume", "find_volumes"]

EntryKind = Literal["file", "dir", "symlink"]

# NTFS metadata files at the root of every volume: not guest files, and unreadable as such.
_NTFS_METAFILES = frozenset(
    {
        "$AttrDef", "$BadClus", "$Bitmap", "$Boot", "$Extend", "$LogFile", "$MFT", "$MFTMirr",
        "$Secure", "$UpCase", "$Volume",
    }
)  # fmt: skip

_WINDOWS_FS = frozenset({"ntfs", "fat", "exfat"})
_LINUX_FS = frozenset({"ext", "xfs", "btrfs"})

# GPT partition types that hold no guest files a user restores.
_EFI_SYSTEM = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"

# Listings kept per opened restore point, counted in entries.
_LISTING_CACHE_ENTRIES = 200_000


@dataclass(frozen=True)
class GuestEntry:
    """A file, folder or symbolic link seen in the guest."""

    path: str
    name: str
    kind: EntryKind
    size: int
    mtime: float | None


@dataclass
class Volume:
    """A file system found on a disk of the restore point."""

    name: str
    fs: Any
    fs_type: str
    uuid: str | None = None
    label: str | None = None
    is_efi: bool = False


@dataclass
class _Listing:
    """A folder's cached listing, with its entries by exact name for lookups of one child."""

    entries: list[GuestEntry]
    by_name: dict[str, GuestEntry]
    # ext inode numbers by name: ext finds a name by reading the whole folder, about 45 ms in a
    # 10,000-file folder, so opening a listed file by its inode number skips that walk.
    inodes: dict[str, int]


@dataclass
class _Root:
    """One FSRoot: a drive letter or the Linux tree, with the file systems mounted under it."""

    name: str
    mounts: dict[tuple[str, ...], Volume] = field(default_factory=dict)


def find_volumes(disks: list[Disk]) -> tuple[list[Volume], list[str]]:
    """Find the file systems on the disks.

    Returns:
        The volumes that open, and one message per volume that was skipped and why.
    """
    from dissect.target import filesystem, volume

    volumes: list[Volume] = []
    skipped: list[str] = []
    for disk in disks:
        try:
            parts = list(volume.open(disk.stream).volumes)
        except Exception:
            log.debug("%s: no volume system; trying the whole disk as a file system", disk.name)
            parts = []

        if not parts:
            candidates: list[tuple[str, Any, Any]] = [(disk.name, disk.stream, None)]
        else:
            candidates = [(f"{disk.name} partition {i + 1}", p, p) for i, p in enumerate(parts)]

        for name, stream, part in candidates:
            try:
                fs = filesystem.open(stream)
                if getattr(fs, "__type__", None) == "fat":
                    fs = GuestFatFilesystem(stream)
            except Exception as exc:
                reason = _why_unopenable(stream, exc)
                if reason is not None:
                    skipped.append(f"{name}: {reason}")
                log.debug("%s: no file system (%s)", name, exc)
                continue
            volumes.append(_describe(name, fs, part))
    return volumes, skipped


def _why_unopenable(stream: Any, exc: Exception) -> str | None:
    """Say why a volume cannot be opened, or None for volumes that hold no file system at all."""
    try:
        stream.seek(0)
        head = stream.read(4096)
    except Exception:
        return f"unreadable ({exc})"
    if head[3:11] == b"-FVE-FS-":
        return "BitLocker-encrypted volume; openflr cannot decrypt it"
    if head[:6] == b"LUKS\xba\xbe":
        return "LUKS-encrypted volume; openflr cannot decrypt it"
    if head[3:11] == b"ReFS\x00\x00\x00\x00":
        return "ReFS volume; openflr cannot read ReFS"
    if not head.strip(b"\x00"):
        return None
    # TODO: assemble LVM volume groups and open BitLocker/LUKS with configured keys; until then
    # these volumes are skipped and named in the mount task's message.
    if b"LABELONE" in head[:2048]:
        return "LVM physical volume; openflr cannot assemble LVM volume groups yet"
    return None


def _describe(name: str, fs: Any, part: Any) -> Volume:
    fs_type = str(getattr(fs, "__type__", "unknown"))
    uuid: str | None = None
    label: str | None = None
    if fs_type == "ext":
        uuid = str(fs.extfs.uuid)
        label = fs.extfs.volume_name or None
    elif fs_type == "ntfs":
        label = getattr(fs.ntfs, "volume_name", None)
    part_type = str(getattr(part, "type", "") or "").lower()
    return Volume(
        name=name, fs=fs, fs_type=fs_type, uuid=uuid, label=label, is_efi=part_type == _EFI_SYSTEM
    )


class GuestFileSystem:
    """The files of one opened restore point, by guest path.

    All reads go through one lock: the layers below (backup file, disk, partition, file system)
    share seek positions, so two threads reading at once would read each other's data.

    Args:
        volumes: The file systems found on the disks.
        close: Called once by :meth:`close` to release the backup files.
    """

    def __init__(self, volumes: list[Volume], close: Callable[[], None]) -> None:
        self.lock = threading.RLock()
        self._close = close
        self._closed = False
        self.roots = _arrange(volumes)
        self._listings: OrderedDict[str, _Listing] = OrderedDict()
        self._listed_entries = 0

    def close(self) -> None:
        """Release the backup files. Streams still open fail on their next read."""
        with self.lock:
            if not self._closed:
                self._closed = True
                self._listings.clear()
                self._close()

    def root_entries(self) -> list[GuestEntry]:
        """Return one folder entry per FSRoot, in display order."""
        return [
            GuestEntry(path=r.name, name=r.name, kind="dir", size=0, mtime=None)
            for r in self.roots.values()
        ]

    def normalise(self, path: str) -> str:
        """Return the canonical form of a guest path (``c:\\a\\..\\b`` becomes ``C:/b``).

        Raises:
            GuestPathInvalid: a NUL byte, or ``..`` climbing above the root.
            GuestPathNotFound: the path names no root of this restore point.
        """
        root, parts = self._split(path)
        if root.name == "/":
            return "/" + "/".join(parts)
        return "/".join([root.name, *parts])

    def stat(self, path: str) -> GuestEntry:
        """Return the entry at a guest path, not following a final symbolic link."""
        root, parts = self._split(path)
        guest_path = _join(root.name, parts)
        if not parts or tuple(parts) in root.mounts:
            return GuestEntry(
                path=guest_path,
                name=parts[-1] if parts else root.name,
                kind="dir",
                size=0,
                mtime=None,
            )
        with self.lock:
            entry = self._entry_at(root, parts, guest_path)
            return _to_entry(guest_path, parts[-1], entry.lstat(), entry)

    def child(self, folder: str, name: str) -> GuestEntry:
        """Return the entry named exactly ``name`` in a folder, answered from its listing.

        One listing answers every name in a folder, so a caller that asks about many children of
        the same folder pays for one listing instead of one path lookup each.

        Raises:
            GuestPathNotFound: no entry of that exact name, or no such folder.
            NotAFolder: ``folder`` is a file.
        """
        with self.lock:
            listing = self._listing(folder)
        found = listing.by_name.get(name)
        if found is None:
            raise GuestPathNotFound(f"{folder.rstrip('/')}/{name}")
        return found

    def readlink(self, path: str) -> str:
        """Return the target of a symbolic link as the guest stored it, not resolved.

        Raises:
            GuestPathNotFound: nothing at that path.
            GuestPathInvalid: the path is no symbolic link.
            GuestFileUnreadable: the link's target cannot be read.
        """
        root, parts = self._split(path)
        guest_path = _join(root.name, parts)
        if not parts or tuple(parts) in root.mounts:
            raise GuestPathInvalid(guest_path, "it is a folder, not a symbolic link")
        with self.lock:
            entry = self._entry_at(root, parts, guest_path)
            if not stat_module.S_ISLNK(entry.lstat().st_mode):
                raise GuestPathInvalid(guest_path, "it is not a symbolic link")
            try:
                return str(entry.readlink())
            except Exception as exc:
                raise GuestFileUnreadable(guest_path, str(exc) or type(exc).__name__) from exc

    def list_folder(self, path: str) -> list[GuestEntry]:
        """Return the entries of a folder: files first, then folders, each sorted by name.

        Raises:
            GuestPathNotFound: nothing at that path.
            NotAFolder: the path is a file.
        """
        with self.lock:
            return self._listing(path).entries

    def open(self, path: str) -> GuestFileStream:
        """Open a guest file for reading.

        Raises:
            GuestPathNotFound: nothing at that path.
            IsAFolder: the path is a folder.
            GuestFileUnreadable: the file's data cannot be read.
        """
        root, parts = self._split(path)
        guest_path = _join(root.name, parts)
        if not parts or tuple(parts) in root.mounts:
            raise IsAFolder(guest_path)
        with self.lock:
            entry = self._entry_at(root, parts, guest_path)
            if stat_module.S_ISDIR(entry.lstat().st_mode):
                raise IsAFolder(guest_path)
            try:
                fh = entry.open()
            except Exception as exc:
                raise GuestFileUnreadable(guest_path, str(exc) or type(exc).__name__) from exc
            return GuestFileStream(fh, self.lock, guest_path)

    def walk(self, path: str) -> Iterator[GuestEntry]:
        """Yield every entry below a folder, depth first, never following symbolic links."""
        for entry in self.list_folder(path):
            yield entry
            if entry.kind == "dir":
                yield from self.walk(entry.path)

    def _split(self, path: str) -> tuple[_Root, list[str]]:
        if "\x00" in path:
            raise GuestPathInvalid(path, "it contains a NUL byte")

        if path.startswith("/") and "/" in self.roots:
            root = self.roots["/"]
            rest = path
        else:
            text = path.replace("\\", "/")
            head, _, rest = text.partition("/")
            root_name = head.upper() if len(head) == 2 and head[1] == ":" else head
            found = self.roots.get(root_name) or next(
                (r for k, r in self.roots.items() if k.lower() == head.lower()), None
            )
            if found is None and "/" in self.roots and not head.endswith(":"):
                # A Linux path whose leading slash a client or proxy dropped ("home/user").
                found, rest = self.roots["/"], path
            if found is None:
                raise GuestPathNotFound(path)
            root = found

        parts: list[str] = []
        for part in rest.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    raise GuestPathInvalid(path, "'..' climbs above the root of the mount")
                parts.pop()
                continue
            parts.append(part)
        return root, parts

    def _listing(self, path: str) -> _Listing:
        root, parts = self._split(path)
        guest_path = _join(root.name, parts)
        cached = self._listings.get(guest_path)
        if cached is not None:
            self._listings.move_to_end(guest_path)
            return cached
        listing = self._list_uncached(root, parts, guest_path)
        self._remember(guest_path, listing)
        return listing

    def _entry_at(self, root: _Root, parts: list[str], guest_path: str) -> Any:
        """Return the file system entry at a path below a root; the caller holds the lock."""
        volume, inner = _volume_for(root, parts)
        if inner and volume.fs_type == "ext":
            parent = self._listings.get(_join(root.name, parts[:-1]))
            inode = parent.inodes.get(parts[-1]) if parent is not None else None
            if inode is not None:
                try:
                    return _ext_entry(volume, inner, inode)
                except Exception as exc:
                    log.debug("%s: open by inode %d failed (%s)", guest_path, inode, exc)
        return self._fs_entry(volume, inner, guest_path)

    def _fs_entry(self, volume: Volume, inner: list[str], guest_path: str) -> Any:
        fs_path = "/" + "/".join(inner)
        try:
            return volume.fs.get(fs_path)
        except (FileNotFoundError, NotADirectoryError) as exc:
            alternative = _other_normal_form(fs_path)
            if alternative is not None:
                try:
                    return volume.fs.get(alternative)
                except Exception:
                    pass
            raise GuestPathNotFound(guest_path) from exc
        except Exception as exc:
            log.warning("%s: lookup failed on volume %s: %s", guest_path, volume.name, exc)
            raise GuestPathNotFound(guest_path) from exc

    def _list_uncached(self, root: _Root, parts: list[str], guest_path: str) -> _Listing:
        volume, inner = _volume_for(root, parts)
        entry = self._entry_at(root, parts, guest_path)
        if not stat_module.S_ISDIR(entry.lstat().st_mode):
            raise NotAFolder(guest_path)

        files: list[GuestEntry] = []
        folders: list[GuestEntry] = []
        seen: set[str] = set()
        inodes: dict[str, int] = {}
        hide_metafiles = volume.fs_type == "ntfs" and not inner
        for child in entry.scandir():
            name = child.name
            if name in (".", "..") or (hide_metafiles and name in _NTFS_METAFILES):
                continue
            child_path = _join(root.name, [*parts, name])
            try:
                item = _to_entry(child_path, name, child.stat(follow_symlinks=False), child)
            except Exception as exc:
                log.warning("%s: cannot read entry: %s", child_path, exc)
                continue
            seen.add(name)
            (folders if item.kind == "dir" else files).append(item)
            inode = getattr(getattr(child, "entry", None), "inum", None)
            if volume.fs_type == "ext" and isinstance(inode, int):
                inodes[name] = inode

        # Mount points whose folder is missing in the parent file system still show.
        depth = len(parts)
        for mount_parts in root.mounts:
            if len(mount_parts) == depth + 1 and list(mount_parts[:depth]) == parts:
                name = mount_parts[-1]
                if name not in seen:
                    folders.append(
                        GuestEntry(_join(root.name, list(mount_parts)), name, "dir", 0, None)
                    )
                else:
                    folders = [
                        GuestEntry(f.path, f.name, "dir", 0, f.mtime) if f.name == name else f
                        for f in folders
                    ]

        files.sort(key=lambda e: (e.name.casefold(), e.name))
        folders.sort(key=lambda e: (e.name.casefold(), e.name))
        entries = files + folders
        # Mount points are folders of another volume: never open them by the parent's inode.
        for mount_parts in root.mounts:
            if len(mount_parts) == depth + 1 and list(mount_parts[:depth]) == parts:
                inodes.pop(mount_parts[-1], None)
        return _Listing(entries, {e.name: e for e in entries}, inodes)

    def _remember(self, guest_path: str, listing: _Listing) -> None:
        self._listings[guest_path] = listing
        self._listed_entries += len(listing.entries)
        while self._listed_entries > _LISTING_CACHE_ENTRIES and len(self._listings) > 1:
            _, dropped = self._listings.popitem(last=False)
            self._listed_entries -= len(dropped.entries)


class GuestFileStream:
    """A guest file stream whose every read holds the restore point's lock."""

    def __init__(self, fh: BinaryIO, lock: threading.RLock, guest_path: str) -> None:
        self._fh = fh
        self._lock = lock
        self._pos = 0
        self.guest_path = guest_path

    def read(self, size: int = -1) -> bytes:
        with self._lock:
            try:
                self._fh.seek(self._pos)
                data = self._fh.read(size)
            except Exception as exc:
                raise GuestFileUnreadable(self.guest_path, str(exc) or type(exc).__name__) from exc
        self._pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        else:
            with self._lock:
                self._pos = self._fh.seek(0, 2) + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def close(self) -> None:
        self._fh = _ClosedStream(self.guest_path)  # type: ignore[assignment]

    def __enter__(self) -> GuestFileStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ClosedStream:
    def __init__(self, guest_path: str) -> None:
        self.guest_path = guest_path

    def seek(self, *args: object) -> int:
        raise ValueError(f"{self.guest_path}: stream is closed")

    read = seek


def _to_entry(guest_path: str, name: str, st: Any, entry: Any) -> GuestEntry:
    mode = st.st_mode
    if stat_module.S_ISLNK(mode):
        kind: EntryKind = "symlink"
    elif stat_module.S_ISDIR(mode):
        kind = "dir"
    else:
        kind = "file"
    mtime = getattr(st, "st_mtime", None)
    if mtime is not None and mtime < -11_000_000_000:
        mtime = None  # a zero Windows FILETIME: no time recorded
    size = int(st.st_size or 0) if kind != "dir" else 0
    return GuestEntry(path=guest_path, name=name, kind=kind, size=size, mtime=mtime)


def _ext_entry(volume: Volume, inner: list[str], inode: int) -> Any:
    """Return the ext file system entry of a known inode, as a path lookup would."""
    from dissect.target.filesystems.extfs import ExtFilesystemEntry

    return ExtFilesystemEntry(volume.fs, "/" + "/".join(inner), volume.fs.extfs.get_inode(inode))


def _join(root_name: str, parts: list[str]) -> str:
    if root_name == "/":
        return "/" + "/".join(parts)
    return "/".join([root_name, *parts])


def _volume_for(root: _Root, parts: list[str]) -> tuple[Volume, list[str]]:
    """Return the volume holding a path under a root and the path inside that volume."""
    for depth in range(len(parts), -1, -1):
        volume = root.mounts.get(tuple(parts[:depth]))
        if volume is not None:
            return volume, parts[depth:]
    raise GuestPathNotFound(_join(root.name, parts))


def _other_normal_form(path: str) -> str | None:
    """Return the path in the other Unicode normal form, if that differs.

    A client may send a name composed (NFC) that the guest stored decomposed (NFD), or the other
    way round; macOS clients in particular send NFD.
    """
    for form in ("NFC", "NFD"):
        other = unicodedata.normalize(form, path)
        if other != path:
            return other
    return None


def _arrange(volumes: list[Volume]) -> dict[str, _Root]:
    """Give every volume its place: a drive letter, a spot in the Linux tree, or its own root."""
    roots: dict[str, _Root] = {}
    windows = [v for v in volumes if v.fs_type in _WINDOWS_FS and not v.is_efi]
    linux = [v for v in volumes if v.fs_type in _LINUX_FS]
    placed: set[int] = set()

    if windows:
        system = next((v for v in windows if _has_folder(v, "/Windows")), windows[0])
        ordered = [system] + [v for v in windows if v is not system]
        letters = iter("CDEFGHIJKLMNOPQRSTUVWXYZ")
        for volume in ordered:
            name = f"{next(letters)}:"
            roots[name] = _Root(name=name, mounts={(): volume})
            placed.add(id(volume))

    tree = _linux_tree(linux)
    if tree:
        roots["/"] = _Root(name="/", mounts=tree)
        placed.update(id(v) for v in tree.values())

    number = 1
    for volume in volumes:
        if id(volume) in placed:
            continue
        while f"Volume{number}:" in roots:
            number += 1
        roots[f"Volume{number}:"] = _Root(name=f"Volume{number}:", mounts={(): volume})
    return roots


def _has_folder(volume: Volume, path: str) -> bool:
    try:
        return bool(volume.fs.get(path).is_dir())
    except Exception:
        return False


def _linux_tree(linux: list[Volume]) -> dict[tuple[str, ...], Volume]:
    """Assemble the Linux file systems into one tree as the guest's ``/etc/fstab`` says."""
    if not linux:
        return {}
    root = next((v for v in linux if _has_fstab(v)), None)
    if root is None:
        return {(): linux[0]} if len(linux) == 1 else {}

    tree: dict[tuple[str, ...], Volume] = {(): root}
    for spec, mount_point in _read_fstab(root):
        volume = _match_fstab_spec(spec, linux)
        if volume is None or volume is root or mount_point == "/":
            continue
        parts = tuple(p for p in mount_point.split("/") if p)
        if parts and parts not in tree:
            tree[parts] = volume
    return tree


def _has_fstab(volume: Volume) -> bool:
    try:
        return bool(volume.fs.get("/etc/fstab").is_file())
    except Exception:
        return False


def _read_fstab(volume: Volume) -> list[tuple[str, str]]:
    try:
        text = volume.fs.get("/etc/fstab").open().read(1 << 20).decode("utf-8", "replace")
    except Exception as exc:
        log.warning("%s: cannot read /etc/fstab: %s", volume.name, exc)
        return []
    entries = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[1].startswith("/"):
            entries.append((fields[0], fields[1].replace("\\040", " ")))
    return entries


def _match_fstab_spec(spec: str, volumes: list[Volume]) -> Volume | None:
    key, _, value = spec.partition("=")
    value = value.strip('"')
    if key.upper() == "UUID":
        return next((v for v in volumes if v.uuid and v.uuid.lower() == value.lower()), None)
    if key.upper() == "LABEL":
        return next((v for v in volumes if v.label == value), None)
    if spec.startswith("/dev/disk/by-uuid/"):
        wanted = spec.rsplit("/", 1)[1].lower()
        return next((v for v in volumes if v.uuid and v.uuid.lower() == wanted), None)
    if spec.startswith("/dev/disk/by-label/"):
        wanted = spec.rsplit("/", 1)[1]
        return next((v for v in volumes if v.label == wanted), None)
    return None
