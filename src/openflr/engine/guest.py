"""The guest's file namespace: volumes found on the disks, arranged the way the guest saw them.

Windows volumes become drive letters (``C:``, ``D:``); Linux file systems become one tree at
``/``, assembled from the guest's ``/etc/fstab``; a volume that fits neither becomes a root of its
own (``Volume2:``). Guest paths use forward slashes: ``C:/Users/notes.txt``, ``/home/user/a.txt``.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import stat as stat_module
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, NamedTuple

from openflr.engine.errors import (
    EngineError,
    GuestFileUnreadable,
    GuestPathInvalid,
    GuestPathNotFound,
    IsAFolder,
    NotAFolder,
)
from openflr.engine.ext import ExtNode, inline_data, list_ext_folder, open_ext_file
from openflr.engine.extents import FileRun, Run, StreamRun, map_runs
from openflr.engine.fat import open_exfat_file
from openflr.engine.letters import registry_letters
from openflr.engine.ntfs_index import NtfsNode, list_ntfs_folder
from openflr.engine.owners import WindowsAccounts, ntfs_security_ids
from openflr.engine.volumes import Volume, find_volumes
from openflr.engine.wof import WOF_TAG, WofStream, open_wof

log = logging.getLogger(__name__)

__all__ = [
    "GuestEntry",
    "GuestFileStream",
    "GuestFileSystem",
    "HostFile",
    "Volume",
    "find_volumes",
]

EntryKind = Literal["file", "dir", "symlink"]

# NTFS metadata files at the root of every volume: not guest files, and unreadable as such.
_NTFS_METAFILES = frozenset(
    {
        "$AttrDef", "$BadClus", "$Bitmap", "$Boot", "$Extend", "$LogFile", "$MFT", "$MFTMirr",
        "$Secure", "$UpCase", "$Volume",
    }
)  # fmt: skip
# NTFS looks names up regardless of case: so are they refused.
_NTFS_METAFILES_FOLDED = frozenset(name.casefold() for name in _NTFS_METAFILES)

_WINDOWS_FS = frozenset({"ntfs", "fat", "exfat"})
_LINUX_FS = frozenset({"ext", "xfs", "btrfs"})

# Listings kept per opened restore point, counted in entries.
_LISTING_CACHE_ENTRIES = 200_000


class GuestEntry(NamedTuple):
    """A file, folder or symbolic link seen in the guest.

    A named tuple rather than a frozen dataclass: a listing makes one per entry, and building
    100,000 of them took a third of a second as a dataclass.
    """

    path: str
    name: str
    kind: EntryKind
    size: int
    mtime: float | None
    owner: str | None = None
    # An NTFS alternate data stream's name (``name`` is then ``file:stream``), else None.
    stream: str | None = None

    @property
    def file_name(self) -> str:
        """The name of the file itself: for a stream, the name of the file that holds it."""
        return self.name if self.stream is None else self.name[: -len(self.stream) - 1]


@dataclass
class _Listing:
    """A folder's cached listing, with its entries by exact name for lookups of one child."""

    entries: list[GuestEntry]
    by_name: dict[str, GuestEntry]
    # The file system's own entries by name: opening a listed file through them skips a path
    # lookup, which ext does by reading the whole folder (about 45 ms in a 10,000-file folder)
    # and dissect.xfs by scanning it (a zip of 5,000 files scanned 12.5 million entries).
    nodes: dict[str, Any]
    # The folder's own file system entry, for children kept in ``nodes`` as inode numbers.
    folder: Any = None


@dataclass
class _Root:
    """One FSRoot: a drive letter or the Linux tree, with the file systems mounted under it."""

    name: str
    mounts: dict[tuple[str, ...], Volume] = field(default_factory=dict)


class GuestFileSystem:
    """The files of one opened restore point, by guest path.

    All reads go through one lock: the layers below (backup file, disk, partition, file system)
    share seek positions, so two threads reading at once would read each other's data.

    Args:
        volumes: The file systems found on the disks.
        close: Called once by :meth:`close` to release the backup files.
        accounts: The guest's account names by SID, as the backup recorded them.
    """

    def __init__(
        self,
        volumes: list[Volume],
        close: Callable[[], None],
        accounts: dict[str, str] | None = None,
    ) -> None:
        self.lock = threading.RLock()
        self._close = close
        self._closed = False
        self.roots = _arrange(volumes)
        self._users = _guest_users(self.roots)
        self._accounts = WindowsAccounts(accounts)
        self._accounts_read = False  # the SAM hive is read at the first NTFS owner asked for
        self._ntfs_owners: dict[tuple[int, int], str | None] = {}
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
        volume, _ = _volume_for(root, parts)
        with self.lock, _damage_reported(guest_path):
            entry = self._entry_at(root, parts, guest_path)
            st = self._lstat(entry, guest_path)
            owner = self._owner(volume, st)
            if volume.fs_type == "ntfs":
                owner = self._ntfs_owners_of(volume, [st.st_ino]).get(st.st_ino)
            found = _to_entry(guest_path, parts[-1], st, volume.fs_type, owner)
            if volume.fs_type == "ntfs" and ":" in parts[-1]:
                base, stream = _stream_name(parts[-1])
                if stream:
                    return found._replace(name=f"{base}:{stream}", stream=stream)
                return found._replace(name=base)  # "name::$DATA", the file itself
            return found

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

    def on_windows_volume(self, path: str) -> bool:
        """Whether a guest path lies on a Windows file system (NTFS, FAT, exFAT), whose link
        targets use drive letters and backslashes."""
        root, parts = self._split(path)
        return _volume_for(root, parts)[0].fs_type in _WINDOWS_FS

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
        with self.lock, _damage_reported(guest_path):
            fh = self._open_listed(root, parts)
            if fh is not None:
                return GuestFileStream(fh, self.lock, guest_path)
            entry = self._entry_at(root, parts, guest_path)
            if stat_module.S_ISDIR(self._lstat(entry, guest_path).st_mode):
                raise IsAFolder(guest_path)
            if _volume_for(root, parts)[0].fs_type == "ntfs" and not entry.ads:
                if _reparse_tag(entry.entry) == WOF_TAG:
                    return GuestFileStream(open_wof(entry.entry, guest_path), self.lock, guest_path)
                _check_ntfs_data(entry.entry, guest_path)
            if _volume_for(root, parts)[0].fs_type == "exfat":
                return GuestFileStream(open_exfat_file(entry), self.lock, guest_path)
            if _is_inline_file(entry):
                return GuestFileStream(io.BytesIO(inline_data(entry.entry)), self.lock, guest_path)
            try:
                fh = entry.open()
            except (FileNotFoundError, NotADirectoryError) as exc:
                raise GuestPathNotFound(guest_path) from exc
            return GuestFileStream(fh, self.lock, guest_path)

    def check_readable(self, path: str) -> None:
        """Check cheaply that a file's data is there to its end, or that a folder lists.

        A truncated backup shows a file's size but has no data at its end; reading the last
        byte finds that before a download starts and then breaks off.

        Raises:
            EngineError: the path is missing, or its data cannot be read.
        """
        entry = self.stat(path)
        if entry.kind == "dir":
            self.list_folder(entry.path)
            return
        if entry.kind != "file" or entry.size == 0:
            return
        stream = self.open(entry.path)
        try:
            stream.seek(entry.size - 1)
            if len(stream.read(1)) != 1:
                raise GuestFileUnreadable(
                    entry.path, "its data ends before its size; the backup is truncated or damaged"
                )
        finally:
            stream.close()

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
        with _damage_reported(guest_path):
            listing = self._list_uncached(root, parts, guest_path)
        self._remember(guest_path, listing)
        return listing

    def _entry_at(self, root: _Root, parts: list[str], guest_path: str) -> Any:
        """Return the file system entry at a path below a root; the caller holds the lock."""
        volume, inner = _volume_for(root, parts)
        if inner:
            parent = self._listings.get(_join(root.name, parts[:-1]))
            node = parent.nodes.get(parts[-1]) if parent is not None else None
            if isinstance(node, int) and parent is not None:
                node = ExtNode(parent.folder, parts[-1], node)
            if node is not None:
                try:
                    return node.get()
                except Exception as exc:
                    log.debug("%r: open through its listing failed (%s)", guest_path, exc)
        try:
            return self._fs_entry(volume, inner, guest_path)
        except GuestPathNotFound:
            if not inner or not _has_inline_folders(volume):
                raise
        # dissect.extfs cannot look names up in inline folders: go through the listings.
        parent = self._listing(_join(root.name, parts[:-1]))
        node = parent.nodes.get(parts[-1])
        if not isinstance(node, int):
            raise GuestPathNotFound(guest_path)
        return ExtNode(parent.folder, parts[-1], node).get()

    @staticmethod
    def _lstat(entry: Any, guest_path: str) -> Any:
        try:
            return entry.lstat()
        except FileNotFoundError as exc:
            raise GuestPathNotFound(guest_path) from exc  # an alternate stream it does not have

    def _open_listed(self, root: _Root, parts: list[str]) -> Any:
        """Open a file its folder's listing names as a file, without a lookup or stat; or None."""
        parent = self._listings.get(_join(root.name, parts[:-1]))
        if parent is None or tuple(parts) in root.mounts:
            return None
        node, listed = parent.nodes.get(parts[-1]), parent.by_name.get(parts[-1])
        if not isinstance(node, int) or listed is None or listed.kind != "file":
            return None
        return open_ext_file(parent.folder, node)

    def _fs_entry(self, volume: Volume, inner: list[str], guest_path: str) -> Any:
        if volume.fs_type in _WINDOWS_FS and any(":" in part for part in inner):
            # No Windows file name holds a colon: "name:stream" names an alternate data stream
            # of a file, which only NTFS has, and only as the last part of a path.
            if volume.fs_type != "ntfs" or any(":" in part for part in inner[:-1]):
                raise GuestPathNotFound(guest_path)
            name, stream = _stream_name(inner[-1])
            if not name or stream is None:
                raise GuestPathNotFound(guest_path)
            found = self._fs_entry(volume, [*inner[:-1], name], guest_path)
            if found.is_dir():
                raise GuestPathNotFound(guest_path)  # a folder's streams are not served
            if not stream:
                return found  # "name::$DATA": the main stream
            return volume.fs.get("/" + "/".join([*inner[:-1], f"{name}:{stream}"]))
        if (
            volume.fs_type == "ntfs"
            and len(inner) == 1
            and inner[0].partition(":")[0].casefold() in _NTFS_METAFILES_FOLDED
        ):
            raise GuestPathNotFound(guest_path)  # hidden from listings, so not reachable either
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
        nodes: dict[str, Any] = {}
        prefix = _join(root.name, parts).rstrip("/") + "/"
        ext_children = list_ext_folder(entry) if volume.fs_type == "ext" else None
        if ext_children is not None:
            # Read in bulk: a folder of 100,000 files lists in a fraction of a second.
            owners: dict[int, str] = {}
            for name, inum, mode, size, uid, mtime in ext_children:
                owner = owners.get(uid)
                if owner is None:
                    owner = owners[uid] = self._users.get(uid, str(uid))
                nodes[name] = inum  # made an entry only when opened: see _entry_at
                shown = mtime if 0 <= mtime < 2**31 else _guest_time(mtime, "ext")
                if stat_module.S_ISDIR(mode):
                    folders.append(GuestEntry(prefix + name, name, "dir", 0, shown, owner))
                else:
                    kind: EntryKind = "symlink" if stat_module.S_ISLNK(mode) else "file"
                    files.append(GuestEntry(prefix + name, name, kind, size, shown, owner))
            seen.update(nodes)
        ntfs_children = list_ntfs_folder(entry) if volume.fs_type == "ntfs" else None
        if ntfs_children is not None:
            hide = not inner
            kept = [c for c in ntfs_children if not (hide and c.name in _NTFS_METAFILES)]
            owners_by_segment = self._ntfs_owners_of(volume, [c.segment for c in kept])
            for child in kept:
                name = child.name
                if name in nodes:
                    continue  # one name twice in the index: never so in a sound volume
                nodes[name] = NtfsNode(entry, name, child.segment)
                shown = _guest_time(child.mtime, "ntfs")
                owner = owners_by_segment.get(child.segment)
                size = child.size if child.kind != "dir" else 0
                item = GuestEntry(prefix + name, name, child.kind, size, shown, owner)  # type: ignore[arg-type]
                (folders if child.kind == "dir" else files).append(item)
            seen.update(nodes)
        elif ext_children is None:
            hide_metafiles = volume.fs_type == "ntfs" and not inner
            stats: list[tuple[str, Any, Any]] = []
            for child in entry.scandir():
                name = child.name
                if name in (".", "..") or (hide_metafiles and name in _NTFS_METAFILES):
                    continue
                try:
                    stats.append((name, child, child.stat(follow_symlinks=False)))
                except Exception as exc:
                    log.warning("%s: cannot read entry: %s", prefix + name, exc)
            ntfs_owners: dict[int, str | None] = {}
            if volume.fs_type == "ntfs":
                ntfs_owners = self._ntfs_owners_of(volume, [st.st_ino for _, _, st in stats])
            for name, child, st in stats:
                if volume.fs_type == "ntfs":
                    owner = ntfs_owners.get(st.st_ino)
                else:
                    owner = self._owner(volume, st)
                item = _to_entry(prefix + name, name, st, volume.fs_type, owner)
                seen.add(name)
                nodes[name] = child
                (folders if item.kind == "dir" else files).append(item)

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
        # Mount points are folders of another volume: never open them through the parent's node.
        for mount_parts in root.mounts:
            if len(mount_parts) == depth + 1 and list(mount_parts[:depth]) == parts:
                nodes.pop(mount_parts[-1], None)
        return _Listing(entries, {e.name: e for e in entries}, nodes, entry)

    def _ntfs_owners_of(self, volume: Volume, segments: list[int]) -> dict[int, str | None]:
        """The owners of NTFS files by MFT record number, named as the guest names them.

        A volume has few security descriptors and many files: each descriptor's owner is looked
        up once. A file whose descriptor cannot be read has no owner rather than no listing.
        """
        ntfs = volume.fs.ntfs
        if not self._accounts_read:
            self._accounts_read = True
            for root in self.roots.values():
                system = root.mounts.get(())
                if system is not None and system.fs_type == "ntfs":
                    if _has_folder(system, "/Windows/System32/config"):
                        self._accounts.add_sam(system)
        try:
            security_ids = ntfs_security_ids(ntfs, segments)
        except Exception as exc:
            log.warning("%s: cannot read security ids: %s", volume.name, exc)
            return {}
        owners: dict[int, str | None] = {}
        for segment, security_id in security_ids.items():
            key = (id(volume), security_id)
            if key not in self._ntfs_owners:
                try:
                    sid = ntfs.secure.lookup(security_id).owner if ntfs.secure else None
                except Exception as exc:
                    log.debug("%s: security id %d: %s", volume.name, security_id, exc)
                    sid = None
                self._ntfs_owners[key] = self._accounts.name(sid) if sid else None
            owners[segment] = self._ntfs_owners[key]
        return owners

    def _owner(self, volume: Volume, st: Any) -> str | None:
        """The owner's user name from the guest's ``/etc/passwd``, else the numeric user id.

        Only Linux file systems keep an owner this way; NTFS owners are security descriptors
        (see :meth:`_ntfs_owners_of`).
        """
        uid = getattr(st, "st_uid", None)
        if volume.fs_type not in _LINUX_FS or uid is None:
            return None
        return self._users.get(int(uid), str(uid))

    def _remember(self, guest_path: str, listing: _Listing) -> None:
        self._listings[guest_path] = listing
        self._listed_entries += len(listing.entries)
        while self._listed_entries > _LISTING_CACHE_ENTRIES and len(self._listings) > 1:
            _, dropped = self._listings.popitem(last=False)
            self._listed_entries -= len(dropped.entries)


# Reparse tags of NTFS files whose data is not in their unnamed data stream: reading that
# stream would give zeros (or nothing) where the file has data.
_DATA_ELSEWHERE = {
    0x80000013: "its data is in the chunk store of Windows Server data deduplication",
    0xC0000004: "its data was moved to other storage by a hierarchical storage manager",
    0x80000006: "its data was moved to other storage by a hierarchical storage manager",
    0x80000007: "it is a Single Instance Storage link into the SIS common store",
}
_CLOUD_FILES = 0x9000001A  # OneDrive and other cloud placeholders: 0x9000x01A
_FILE_ATTRIBUTE_ENCRYPTED = 0x4000  # EFS: the data stream holds ciphertext


def _stream_name(name: str) -> tuple[str, str | None]:
    """Split ``file:stream`` (also ``file:stream:$DATA`` and ``file::$DATA``, as ``dir /r``
    shows them) into the file's name and the stream's; the stream is "" for the main stream and
    None where the name is no valid stream name."""
    base, _, stream = name.partition(":")
    head, _, kind = stream.partition(":")
    if kind and kind.upper() != "$DATA":
        return base, None
    if not head and not kind:
        return base, None  # "file:" names nothing
    if ":" in kind:
        return base, None
    return base, head


_EXT_INLINE_DATA = 0x8000  # EXT4_FEATURE_INCOMPAT_INLINE_DATA
_EXT_INLINE_DATA_FL = 0x10000000


def _has_inline_folders(volume: Volume) -> bool:
    """An ext volume made with ``inline_data``: small folders keep their entries in the inode."""
    if volume.fs_type != "ext":
        return False
    try:
        return bool(volume.fs.extfs.sb.s_feature_incompat & _EXT_INLINE_DATA)
    except Exception:
        return False


def _is_inline_file(entry: Any) -> bool:
    inode: Any = getattr(entry, "entry", None)
    try:
        return type(entry).__name__ == "ExtFilesystemEntry" and bool(
            inode.inode.i_flags & _EXT_INLINE_DATA_FL
        )
    except Exception:
        return False


def _reparse_tag(record: Any) -> int | None:
    """An NTFS file's reparse tag, or None (no reparse point, or none readable)."""
    try:
        if not record.is_reparse_point():
            return None
        return int(record.attributes.REPARSE_POINT.tag)
    except Exception:
        return None


def _check_ntfs_data(record: Any, guest_path: str) -> None:
    """Refuse an NTFS file whose data is encrypted (EFS) or kept elsewhere by another
    component of Windows.

    Raises:
        GuestFileUnreadable: the file's reparse tag says its data is not on this volume as
            plain, NTFS-compressed or WOF-compressed data (deduplication, HSM, cloud
            placeholders).
    """
    try:
        attributes = int(record.attributes.STANDARD_INFORMATION.file_attributes)
    except Exception:
        attributes = 0
    if attributes & _FILE_ATTRIBUTE_ENCRYPTED:
        raise GuestFileUnreadable(
            guest_path,
            "it is encrypted with Windows EFS, whose keys are the user's and not in the backup; "
            "openflr cannot decrypt it",
        )
    tag = _reparse_tag(record)
    if tag is None:
        return
    why = _DATA_ELSEWHERE.get(tag)
    if why is None and tag & 0xFFFF0FFF == _CLOUD_FILES:
        why = "it is a cloud files placeholder (OneDrive); its data was not on the disk"
    if why is not None:
        raise GuestFileUnreadable(guest_path, f"{why} (reparse tag {tag:#010x}); not read")


@contextmanager
def _damage_reported(guest_path: str) -> Iterator[None]:
    """Turn what a damaged volume makes the libraries raise into a clear per-path error."""
    try:
        yield
    except EngineError:
        raise
    except Exception as exc:
        log.warning("%r: unreadable: %s: %s", guest_path, type(exc).__name__, exc)
        raise GuestFileUnreadable(
            guest_path, f"the volume's data is damaged or unreadable ({type(exc).__name__})"
        ) from exc


class GuestFileStream:
    """A guest file stream whose every read holds the restore point's lock."""

    def __init__(self, fh: BinaryIO | WofStream, lock: threading.RLock, guest_path: str) -> None:
        self._fh = fh
        self._lock = lock
        self._pos = 0
        self._host_files: dict[Any, HostFile] = {}  # image file object -> this stream's own
        self.guest_path = guest_path

    def runs(self, offset: int, length: int) -> list[Run]:
        """Where ``length`` bytes from ``offset`` lie (see :mod:`openflr.engine.extents`).

        A :class:`FileRun`'s file is a :class:`HostFile` of this stream's own, which stays
        open, whatever happens to the restore point, until this stream is closed: a send from it
        never reads another file that took the number of a closed one.

        Raises:
            GuestFileUnreadable: the stream is closed, or its layers cannot be mapped.
        """
        with self._reading():
            return [
                FileRun(self._host_file(run.file), run.offset, run.length)
                if isinstance(run, FileRun)
                else run
                for run in map_runs(self._fh, offset, length)
            ]

    def read_run(self, run: StreamRun, skip: int, size: int) -> bytes:
        """Read ``size`` bytes of a :class:`StreamRun` of this stream, ``skip`` bytes into it."""
        with self._reading():
            self._fh.seek(0)  # fails once the stream is closed
            run.stream.seek(run.offset + skip)
            return bytes(run.stream.read(size))

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Hold the restore point's lock, and turn what the layers raise into a clear error."""
        with self._lock:
            try:
                yield
            except Exception as exc:
                raise GuestFileUnreadable(self.guest_path, str(exc) or type(exc).__name__) from exc

    def _host_file(self, file: Any) -> HostFile:
        known = self._host_files.get(file)
        if known is None:
            known = self._host_files[file] = HostFile(os.dup(file.fileno()))
        return known

    def read(self, size: int = -1) -> bytes:
        with self._reading():
            self._fh.seek(self._pos)
            data = self._fh.read(size)
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
        with self._lock:
            self._fh = _ClosedStream(self.guest_path)  # type: ignore[assignment]
            for host_file in self._host_files.values():
                host_file.close()
            self._host_files.clear()

    def __enter__(self) -> GuestFileStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HostFile:
    """A descriptor of its own on an image file of the host, for ``sendfile``."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        if self._fd < 0:
            raise ValueError("host file is closed")
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    __del__ = close


class _ClosedStream:
    def __init__(self, guest_path: str) -> None:
        self.guest_path = guest_path

    def seek(self, *args: object) -> int:
        raise ValueError(f"{self.guest_path}: stream is closed")

    read = seek


# The times a guest entry may show: 1601-01-01 (the Windows epoch) to 9999-12-31.
_EARLIEST, _LATEST = -11_644_473_600, 253_402_300_799


def _to_entry(guest_path: str, name: str, st: Any, fs_type: str, owner: str | None) -> GuestEntry:
    mtime = getattr(st, "st_mtime", None)
    return _make_entry(guest_path, name, st.st_mode, st.st_size or 0, mtime, fs_type, owner)


def _make_entry(
    guest_path: str,
    name: str,
    mode: int,
    size: int,
    mtime: float | None,
    fs_type: str,
    owner: str | None,
) -> GuestEntry:
    if stat_module.S_ISLNK(mode):
        kind: EntryKind = "symlink"
    elif stat_module.S_ISDIR(mode):
        kind = "dir"
    else:
        kind = "file"
    return GuestEntry(
        path=guest_path,
        name=name,
        kind=kind,
        size=int(size) if kind != "dir" else 0,
        mtime=_guest_time(mtime, fs_type),
        owner=owner,
    )


def _guest_time(mtime: float | None, fs_type: str) -> float | None:
    """A modification time as the guest meant it, or None where none was recorded."""
    if mtime is None:
        return None
    if fs_type == "ext" and (int(mtime) % 2**32) >= 2**31:
        # ext stores the low 32 bits of seconds signed (dates before 1970 are negative), plus
        # epoch bits above them; dissect reads those 32 bits unsigned, 2**32 seconds too late.
        mtime -= 2**32
    if not _EARLIEST < mtime <= _LATEST:
        return None  # a zero Windows FILETIME, or a damaged time: no usable time recorded
    return mtime


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
        # The guest's own letters where its registry names the volume, the rest in disk order.
        known = registry_letters(system, windows)
        free = iter(c + ":" for c in "CDEFGHIJKLMNOPQRSTUVWXYZ" if c + ":" not in known.values())
        lettered = sorted((known.get(id(v)) or next(free), i) for i, v in enumerate(ordered))
        for name, i in lettered:
            roots[name] = _Root(name=name, mounts={(): ordered[i]})
            placed.add(id(ordered[i]))

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
    """Assemble the Linux file systems into one tree as the guest's ``/etc/fstab`` says.

    Btrfs file systems mount subvolumes (``subvol=@`` at ``/`` and ``subvol=@home`` at
    ``/home`` on Ubuntu): each becomes a volume of its own, and the root's ``/etc/fstab`` may be
    in one of them rather than at the top of the file system.
    """
    if not linux:
        return {}
    made: dict[tuple[int, int], Volume] = {}  # subvolume volumes, one per subvolume
    root = next((v for v in linux if _has_fstab(v)), None) or _btrfs_root(linux, made)
    if root is None:
        return {(): linux[0]} if len(linux) == 1 else {}

    tree: dict[tuple[str, ...], Volume] = {(): root}
    for spec, mount_point, options in _read_fstab(root):
        volume = _match_fstab_spec(spec, linux)
        if volume is not None and volume.fs_type == "btrfs":
            volume = _btrfs_subvolume(volume, options, made)
        if volume is None or volume is root or mount_point == "/":
            continue
        parts = tuple(p for p in mount_point.split("/") if p)
        if parts and parts not in tree:
            tree[parts] = volume
    return tree


_BTRFS_TOP_LEVEL = 5  # BTRFS_FS_TREE_OBJECTID


def _btrfs_root(linux: list[Volume], made: dict[tuple[int, int], Volume]) -> Volume | None:
    """The Btrfs subvolume holding the guest's root, found by the ``/etc/fstab`` inside it.

    A subvolume whose fstab mounts that same subvolume at ``/`` wins over one that merely has an
    fstab (a snapshot of the root has one too).
    """
    found: list[Volume] = []
    for volume in linux:
        if volume.fs_type != "btrfs":
            continue
        try:
            subvolumes = list(volume.fs.btrfs.subvolumes())
        except Exception as exc:
            log.warning("%s: cannot list Btrfs subvolumes: %s", volume.name, exc)
            continue
        for subvolume in subvolumes:
            candidate = _btrfs_subvolume_by_id(volume, int(subvolume.objectid), made)
            if candidate is None or not _has_fstab(candidate):
                continue
            for spec, mount_point, options in _read_fstab(candidate):
                if mount_point == "/" and _match_fstab_spec(spec, [volume]) is volume:
                    if _btrfs_subvolume(volume, options, made) is candidate:
                        return candidate
            found.append(candidate)
    return found[0] if found else None


def _btrfs_subvolume(
    volume: Volume, options: str, made: dict[tuple[int, int], Volume]
) -> Volume | None:
    """The subvolume a Btrfs mount's options name (``subvol=``, ``subvolid=``), else the
    default one (the volume itself). ``made`` keeps the subvolume volumes made so far, by
    (``id`` of the volume, subvolume id), so that each is one volume however often named."""
    subvol: str | None = None
    subvolid: int | None = None
    for option in options.split(","):
        key, _, value = option.partition("=")
        if key == "subvol":
            subvol = value.strip("/")
        elif key == "subvolid" and value.isdigit():
            subvolid = int(value)
    if subvolid is None and subvol is None:
        return volume
    if subvolid is None:
        if not subvol:
            subvolid = _BTRFS_TOP_LEVEL
        else:
            try:
                found = volume.fs.btrfs.find_subvolume(subvol)
            except Exception as exc:
                log.warning("%s: cannot look up subvolume %r: %s", volume.name, subvol, exc)
                return None
            if found is None:
                log.warning("%s: fstab names subvolume %r, which is not there", volume.name, subvol)
                return None
            subvolid = int(found.objectid)
    return _btrfs_subvolume_by_id(volume, subvolid, made)


def _btrfs_subvolume_by_id(
    volume: Volume, subvolid: int, made: dict[tuple[int, int], Volume]
) -> Volume | None:
    try:
        if subvolid == int(volume.fs.subfs.subvolume.objectid):
            return volume  # the default subvolume, which the volume shows already
        key = (id(volume), subvolid)
        cached = made.get(key)
        if cached is None:
            subfs = volume.fs.open_subvolume(subvolid=subvolid)
            path = subfs.subvolume.path if subvolid != _BTRFS_TOP_LEVEL else "/"
            cached = made[key] = dataclasses.replace(
                volume, name=f"{volume.name} subvolume {path}", fs=subfs
            )
        return cached
    except Exception as exc:
        log.warning("%s: cannot open subvolume %d: %s", volume.name, subvolid, exc)
        return None


def _guest_users(roots: dict[str, _Root]) -> dict[int, str]:
    """User names by id from ``/etc/passwd`` of the guest's Linux tree, if it has one."""
    root = roots.get("/")
    volume = root.mounts.get(()) if root is not None else None
    if volume is None:
        return {}
    try:
        text = volume.fs.get("/etc/passwd").open().read(1 << 20).decode("utf-8", "replace")
    except Exception:
        log.debug("%s: no readable /etc/passwd; owners are shown as numbers", volume.name)
        return {}
    users: dict[int, str] = {}
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit():
            users.setdefault(int(fields[2]), fields[0])
    return users


def _has_fstab(volume: Volume) -> bool:
    try:
        return bool(volume.fs.get("/etc/fstab").is_file())
    except Exception:
        return False


def _read_fstab(volume: Volume) -> list[tuple[str, str, str]]:
    """The ``(spec, mount point, options)`` of each entry of a volume's ``/etc/fstab``."""
    try:
        text = volume.fs.get("/etc/fstab").open().read(1 << 20).decode("utf-8", "replace")
    except Exception as exc:
        log.warning("%s: cannot read /etc/fstab: %s", volume.name, exc)
        return []
    entries = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[1].startswith("/"):
            options = fields[3] if len(fields) >= 4 else ""
            entries.append((fields[0], fields[1].replace("\\040", " "), options))
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
        wanted = spec.rsplit("/", 1)[1].replace("\\x2f", "/")
        return next((v for v in volumes if v.label == wanted), None)
    # TODO: match PARTUUID=, PARTLABEL= and kernel names (/dev/sda2), which need the disk
    # order and partition GUIDs kept with each volume; such entries are left out of the tree.
    return next((v for v in volumes if spec in v.devices), None)
