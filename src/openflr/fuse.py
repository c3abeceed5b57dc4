"""The FLR root: each mount's guest files as a read-only folder on the server, through FUSE.

Every mount gets ``<flr-root>/<machine>/`` (``<machine>_2`` for a second mount of the same
machine at once), holding one folder per drive (``C``, ``D``, ``Volume1``) and the Linux tree's
top-level folders as they are. The folder is a FUSE file system served from this process by
libfuse (through ``mfusepy``), one loop and its thread pool per mount, reading through the mount's
:class:`~openflr.engine.GuestFileSystem` and its lock; the asyncio loop never waits on it.

The folders openflr makes are listed in a state file in the data folder, so that after a crash
the next start unmounts and removes exactly those, and nothing else. The file is a journal, one
JSON line per folder made or removed, appended to (a mount costs one short write, not a rewrite)
and written anew, compact, at each start and when it grows long.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import queue
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openflr.engine import GuestEntry, GuestFileSystem
from openflr.engine.errors import (
    EngineError,
    GuestFileUnreadable,
    GuestPathInvalid,
    GuestPathNotFound,
    IsAFolder,
    NotAFolder,
)

log = logging.getLogger(__name__)

__all__ = ["FlrFolder", "FlrFolders", "FolderUnavailable", "PendingFolder", "folder_name"]

# The data cannot change while mounted, so the kernel may keep names and attributes for long;
# only a name that does not exist is forgotten sooner, in case a client mistyped it.
_ENTRY_TIMEOUT = 3600
_NEGATIVE_TIMEOUT = 60
_MOUNT_WAIT = 15.0
_ACTIVITY_EVERY = 1.0
_UNMOUNT_WAIT = 5.0
# How long an unmount waits for its folder's FUSE loop before leaving the rest to a thread.
_DETACH_QUICK = 0.5
_MAX_SAME_NAME = 1000
# A machine name is cut to this many bytes so that a suffix like "_999" still fits in the
# 255 bytes most Linux file systems allow for one name.
_MAX_NAME_BYTES = 200

_FSNAME = "openflr"
_FSTYPE = "fuse.openflr"
_CAP_READDIRPLUS_AUTO = 1 << 14  # FUSE_CAP_READDIRPLUS_AUTO of libfuse 3
_READDIR_PLUS = 1  # enum fuse_readdir_flags
_FILL_DIR_PLUS = 2  # enum fuse_fill_dir_flags
_NS = 1_000_000_000


class FolderUnavailable(Exception):
    """No folder can be made for a mount; the message says why, for the mount task's message."""


def folder_name(machine: str) -> str:
    """Return the folder name for a machine under the FLR root.

    ``/`` and NUL (the two characters no Linux name may hold) become ``_``; a name that would be
    empty, ``.`` or ``..`` gets a leading ``_``; a name longer than 200 bytes in UTF-8 is cut.
    """
    name = machine.replace("/", "_").replace("\x00", "_")
    if name in ("", ".", ".."):
        name = "_" + name
    while len(name.encode("utf-8", "surrogateescape")) > _MAX_NAME_BYTES:
        name = name[:-1]
    return name


class _LoopThreads:
    """Daemon threads that run FUSE loops, each kept a while for the next loop when its own ends.

    Starting a thread took 0.3 ms of a 3 ms warm mount (the starter waits until the new thread
    runs); a thread left from an unmount takes the next loop at once. Daemon threads, because a
    loop whose folder still has a file open must not keep the server from exiting.

    Args:
        spare: How many idle threads are kept; one more ends when its loop does.
    """

    def __init__(self, spare: int = 4) -> None:
        self._spare = spare
        self._idle: list[queue.SimpleQueue[tuple[Callable[[], None], threading.Event]]] = []
        self._lock = threading.Lock()

    def run(self, loop: Callable[[], None]) -> threading.Event:
        """Run ``loop`` in a thread of its own; the event is set when it has returned."""
        ended = threading.Event()
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            thread = threading.Thread(target=self._serve, args=(inbox,), daemon=True)
            thread.start()
        inbox.put((loop, ended))
        return ended

    def _serve(self, inbox: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]]) -> None:
        while True:
            loop, ended = inbox.get()
            try:
                loop()
            finally:
                with self._lock:
                    keep = len(self._idle) < self._spare
                    if keep:
                        self._idle.append(inbox)
                ended.set()
            if not keep:
                return


class FlrFolder:
    """One mount's folder: a FUSE file system served by a thread of its own until unmounted."""

    def __init__(self, path: Path, ended: threading.Event) -> None:
        self.path = path
        self._ended = ended

    def wait_ended(self, timeout: float) -> bool:
        """Wait for the FUSE loop to end; True if it did."""
        return self._ended.wait(timeout)


class PendingFolder:
    """A mount's folder whose FUSE mount has started and may not be ready yet."""

    def __init__(
        self,
        folders: FlrFolders,
        path: Path,
        ended: threading.Event,
        ready: threading.Event,
        failure: list[str],
    ) -> None:
        self.path = path
        self._folders = folders
        self._ended = ended
        self._ready = ready
        self._failure = failure

    def wait(self) -> FlrFolder:
        """Wait until the kernel serves the folder; return it.

        Raises:
            FolderUnavailable: the mount failed or the kernel did not answer in time; the folder
                is gone again.
        """
        deadline = time.monotonic() + _MOUNT_WAIT
        while not self._ready.wait(0.05):
            if self._ended.is_set() or time.monotonic() > deadline:
                break
        if not self._ready.is_set():
            # libfuse itself writes the cause to standard error; the exception only says it failed.
            why = self._failure[0] if self._failure else "no answer from the kernel in time"
            _unmount(self.path)
            self._folders._remove_folder(self.path)
            log.warning("FUSE mount at %s failed: %s", self.path, why)
            raise FolderUnavailable(f"FUSE mount at {self.path} failed ({why})")
        log.debug("FLR folder %s mounted", self.path)  # the mount task's message says where
        return FlrFolder(self.path, self._ended)


class FlrFolders:
    """The FLR root and the FUSE folders in it.

    Args:
        root: The FLR root folder; made if missing.
        state_file: Where the folders made by openflr are listed, to clean up after a crash.
        allow_other: Let every local user read the folders (FUSE ``allow_other``); otherwise
            only the server's own user can.
    """

    def __init__(self, root: Path, state_file: Path, allow_other: bool = False) -> None:
        self.root = root
        self.state_file = state_file
        self.allow_other = allow_other
        self.unavailable: str | None = "not started"
        self._fuse: Any = None
        self._lock = threading.Lock()
        self._made: set[str] = set()
        self._lines = 0  # lines in the journal (the state file)
        self._threads = _LoopThreads()

    def start(self) -> None:
        """Clean up after a crash, check that FUSE works here, and say so in one line if not.

        Call from the main thread: it keeps libfuse from taking over ``SIGHUP``.
        """
        self.root = self.root.absolute()
        self._clean_stale()
        # TODO: a trial mount would also catch a server that may open /dev/fuse but not mount
        # (no CAP_SYS_ADMIN, no fusermount3 rights); until then the first mount's message says so.
        try:
            self._fuse = _load_fuse()
            _check_device()
            self.root.mkdir(parents=True, exist_ok=True, mode=0o755 if self.allow_other else 0o700)
        except (FolderUnavailable, OSError) as exc:
            self.unavailable = str(exc)
            log.warning("no FLR folders: %s; the API works without them", exc)
            return
        _keep_sighup()
        self.unavailable = None
        log.info("FLR folders under %s", self.root)

    def start_attach(
        self,
        machine: str,
        files: GuestFileSystem,
        created: float,
        on_activity: Callable[[], None] | None = None,
    ) -> PendingFolder:
        """Make a folder for a mount and start mounting it; :meth:`PendingFolder.wait` ends it.

        The kernel's part of a FUSE mount takes most of a millisecond; the caller can do other
        work meanwhile.

        Raises:
            FolderUnavailable: FUSE is not available, or the folder could not be made.
        """
        if self.unavailable is not None:
            raise FolderUnavailable(self.unavailable)
        path = self._make_folder(folder_name(machine))
        operations = _Operations(files, created, self.allow_other, on_activity)
        options: dict[str, Any] = {
            "foreground": True,
            "ro": True,
            "default_permissions": True,
            "fsname": _FSNAME,
            "subtype": _FSNAME,
            "entry_timeout": _ENTRY_TIMEOUT,
            "attr_timeout": _ENTRY_TIMEOUT,
            "negative_timeout": _NEGATIVE_TIMEOUT,
            "kernel_cache": True,
        }
        if self.allow_other:
            options["allow_other"] = True
        failure: list[str] = []
        fuse_class = self._fuse
        # TODO: libfuse 3.14 prints "Ignoring invalid max threads value" to standard error at
        # every mount (its own default); harmless, but noise in the server's output.

        def serve() -> None:
            threading.current_thread().name = f"openflr-fuse-{path.name}"
            try:
                fuse_class(operations, os.fsdecode(path), **options)
            except BaseException as exc:  # the loop must end with a reason, never silently
                failure.append(f"{type(exc).__name__}: {exc}")
            threading.current_thread().name = "openflr-fuse-idle"

        ended = self._threads.run(serve)
        return PendingFolder(self, path, ended, operations.ready, failure)

    def detach(self, folder: FlrFolder, then: Callable[[], None] | None = None) -> None:
        """Unmount a folder, remove it once its FUSE loop has ended, then call ``then``.

        A lazy unmount: the folder leaves the namespace at once even while a client still has a
        file open in it, and the loop serves that file until it is closed, for at most
        :data:`_UNMOUNT_WAIT` seconds. A loop that has not ended within :data:`_DETACH_QUICK` is
        waited for in a thread, which removes the folder and calls ``then``; this returns at once.
        """
        if not _unmount(folder.path):
            log.warning("could not unmount %s; it stays until the next start", folder.path)
        elif folder.wait_ended(_DETACH_QUICK):
            self._forget(folder)
        else:
            threading.Thread(
                target=self._detach_later, args=(folder, then), name="openflr-unmount", daemon=True
            ).start()
            return
        if then is not None:
            then()

    def _detach_later(self, folder: FlrFolder, then: Callable[[], None] | None) -> None:
        if not folder.wait_ended(_UNMOUNT_WAIT):
            log.info("%s: a file is still open in the unmounted folder", folder.path)
        self._forget(folder)
        if then is not None:
            then()

    def detach_all(self, folders: list[FlrFolder]) -> None:
        """Unmount folders all at once (server shutdown), waiting for their loops together."""
        for folder in folders:
            if not _unmount(folder.path):
                log.warning("could not unmount %s; it stays until the next start", folder.path)
        deadline = time.monotonic() + _UNMOUNT_WAIT
        for folder in folders:
            folder.wait_ended(max(0.0, deadline - time.monotonic()))
            self._forget(folder)

    def _forget(self, folder: FlrFolder) -> None:
        self._remove_folder(folder.path)
        log.info("FLR folder %s unmounted", folder.path)

    def _make_folder(self, base: str) -> Path:
        for number in range(1, _MAX_SAME_NAME + 1):
            name = base if number == 1 else f"{base}_{number}"
            path = self.root / name
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                continue
            except OSError as exc:
                raise FolderUnavailable(f"cannot make {path}: {exc.strerror}") from exc
            with self._lock:
                self._made.add(os.fsdecode(path))
                self._note("made", os.fsdecode(path))
            return path
        raise FolderUnavailable(f"{_MAX_SAME_NAME} folders named {base!r} exist in {self.root}")

    def _remove_folder(self, path: Path) -> None:
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("left %s in place: %s", path, exc.strerror)
            return
        with self._lock:
            if os.fsdecode(path) in self._made:
                self._made.discard(os.fsdecode(path))
                self._note("removed", os.fsdecode(path))

    def _clean_stale(self) -> None:
        """Unmount and remove the folders a previous run made and did not remove (a crash)."""
        try:
            listed = _read_journal(self.state_file.read_text(encoding="utf-8", errors="replace"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # Written anew below, so that the folders of this run are cleaned after a crash.
            log.warning("cannot read %s (%s): no FLR folders cleaned up", self.state_file, exc)
            listed = []
        mounted = _openflr_mounts()
        for text in listed:
            path = Path(text)
            if path.parent != self.root:
                log.warning("%s is not in the FLR root %s; left alone", path, self.root)
                continue
            if text in mounted:
                # Only a mount whose server is gone; a live one is another server's, which
                # took the name after this one gave it up.
                if _served(path):
                    log.info("FLR folder %s is served by another process; left alone", path)
                    continue
                log.info("unmounting FLR folder %s left by an earlier run", path)
                _unmount(path)
            # rmdir, never a recursive delete: a folder holding anything is not ours to delete.
            with self._lock:
                self._made.add(text)
            self._remove_folder(path)
        with self._lock:
            self._save()

    def _note(self, what: str, text: str) -> None:
        """Add a line to the journal; the caller holds the lock."""
        if self._lines > 4 * len(self._made) + 64:
            self._save()
            return
        line = json.dumps({what: text}) + "\n"
        descriptor = os.open(self.state_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(descriptor, line.encode("ascii"))
        finally:
            os.close(descriptor)
        self._lines += 1

    def _save(self) -> None:
        """Write the journal anew, a line per folder made, atomically; the caller holds the lock."""
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_name(self.state_file.name + ".partial")
        partial.write_text(
            "".join(json.dumps({"made": text}) + "\n" for text in sorted(self._made)),
            encoding="ascii",
        )
        os.replace(partial, self.state_file)
        self._lines = len(self._made)


def _served(path: Path) -> bool:
    """Whether a FUSE mount still has a server: one whose server died answers ENOTCONN."""
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno != errno.ENOTCONN
    return True


def _read_journal(text: str) -> list[str]:
    """The folders a state file lists as made and not removed, in the order made.

    A line that is no JSON object (cut short by a crash while it was written) is passed over.

    Raises:
        ValueError: an older state file (a JSON list) that is not JSON.
    """
    if text.lstrip().startswith("["):  # openflr before the journal: a JSON list of paths
        return [item for item in json.loads(text) if isinstance(item, str)]
    made: dict[str, None] = {}
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("made"), str):
            made[entry["made"]] = None
        if isinstance(entry.get("removed"), str):
            made.pop(entry["removed"], None)
    return list(made)


class _Operations:
    """The FUSE callbacks over one mount's guest files.

    Attribute names that match libfuse operations become callbacks; every other operation
    answers ``ENOSYS``, and the ``ro`` mount option makes the kernel refuse every write with
    ``EROFS`` before it reaches this class.
    """

    use_ns = True

    def __init__(
        self,
        files: GuestFileSystem,
        created: float,
        allow_other: bool,
        on_activity: Callable[[], None] | None = None,
    ) -> None:
        self.ready = threading.Event()
        # Opening and reading files tells the mount's logon session it is in use, at most every
        # _ACTIVITY_EVERY seconds: a long copy through the folder keeps the session alive.
        self._on_activity = on_activity
        self._last_activity = 0.0
        self._files = files
        self._mtime = int(created * _NS)
        self._uid = os.getuid()
        self._gid = os.getgid()
        self._dir_mode = stat.S_IFDIR | (0o555 if allow_other else 0o500)
        self._file_mode = stat.S_IFREG | (0o444 if allow_other else 0o400)
        self._handles: dict[int, tuple[Any, threading.Lock]] = {}
        self._next_handle = 1
        self._handles_lock = threading.Lock()
        # FSRoot folder name -> guest root ("C" -> "C:"); the Linux tree "/" has no folder.
        self._drives = {name.rstrip(":"): name for name in files.roots if name != "/"}
        self._linux = "/" in files.roots

    def init_with_config(self, conn: Any, config: Any) -> None:
        if conn is not None and hasattr(conn, "want"):
            # Readdirplus for every chunk of a listing, not only the first: each entry then
            # arrives with its attributes, and `ls -l` needs no lookup per name.
            conn.want &= ~_CAP_READDIRPLUS_AUTO
        self.ready.set()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, int]:
        if path == "/":
            return self.attributes(None)
        parent, _, name = path.rpartition("/")
        return self.attributes(self._child(parent or "/", name))

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """All entries at once, for libfuse 2 (libfuse 3 reads :meth:`entries` in chunks)."""
        return [(e.name, self.attributes(e), 0) for e in self.entries(path)]

    def entries(self, path: str) -> list[GuestEntry]:
        """The entries of a folder, in the API's order."""
        if path == "/":
            return self._top()
        found: list[GuestEntry] = self._engine(self._files.list_folder, self._guest_path(path))
        return found

    def readlink(self, path: str) -> str:
        guest_path = self._guest_path(path)
        target = str(self._engine(self._files.readlink, guest_path))
        windows = bool(self._engine(self._files.on_windows_volume, guest_path))
        return self._inside(path, target, windows)

    def _folder_path(self, guest_path: str) -> str:
        """The path in this folder of a guest path (``C:/Users`` is ``/C/Users``)."""
        head, slash, rest = guest_path.partition("/")
        for folder, root in self._drives.items():
            if head == root:
                return f"/{folder}{slash}{rest}".rstrip("/") or "/"
        return guest_path

    def _link_size(self, entry: GuestEntry) -> int:
        """A link's size as ``lstat`` gives it: the length of the target :meth:`readlink` gives."""
        try:
            return len(os.fsencode(self.readlink(self._folder_path(entry.path))))
        except OSError:
            return entry.size

    def _inside(self, path: str, target: str, windows: bool = True) -> str:
        """A link's target as a path relative to the link that stays inside this folder.

        The guest resolved its links against its own root, so an absolute target
        (``/etc/hosts``, a junction's ``C:\\Users``) would lead a program that follows it out
        of the mount and into the server's own files. Absolute targets are taken from the
        drive or tree the guest meant, and ``..`` stops at the mount folder as it stops at
        ``/``.
        """
        parent = [p for p in path.split("/")[:-1] if p]
        on_drive = bool(parent) and parent[0] in self._drives
        # Windows targets: backslashes, drive letters, and the \??\, \\?\ and \\.\ prefixes.
        text = target.replace("\\", "/") if windows else target
        drive = re.match(r"^/*(?:\?\?/|\?/|\./)?([A-Za-z]):(/|$)", text) if windows else None
        if drive is not None:
            # A drive the restore point lacks gives a dangling link, still inside the folder.
            base, on_drive = [drive.group(1).upper()], True
            text = text[drive.end() :]
        elif text.startswith("/"):
            # Absolute without a drive: the link's own drive, or the Linux tree's root.
            base = parent[:1] if on_drive else []
        else:
            base = parent
        floor = 1 if on_drive else 0  # ".." stops at the drive's root, as on the guest
        resolved = list(base)
        for part in text.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if len(resolved) > floor:
                    resolved.pop()
                continue
            resolved.append(part)
        common = 0
        while common < min(len(parent), len(resolved)) and parent[common] == resolved[common]:
            common += 1
        relative = "/".join([".."] * (len(parent) - common) + resolved[common:])
        return relative or "."

    def _used(self) -> None:
        now = time.monotonic()
        if self._on_activity is not None and now - self._last_activity >= _ACTIVITY_EVERY:
            self._last_activity = now
            try:
                self._on_activity()
            except Exception:  # the read itself must not fail for it
                log.warning("recording FLR folder activity failed", exc_info=True)

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise OSError(errno.EROFS, "read-only")
        self._used()
        stream = self._engine(self._files.open, self._guest_path(path))
        with self._handles_lock:
            handle = self._next_handle
            self._next_handle += 1
            self._handles[handle] = (stream, threading.Lock())
        return handle

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        self._used()
        stream, lock = self._handles[fh]
        try:
            # Reads of one open file may come from several FUSE threads at once.
            with lock:
                stream.seek(offset)
                return bytes(stream.read(size))
        except (GuestFileUnreadable, ValueError) as exc:
            log.warning("%s", exc)
            raise OSError(errno.EIO, str(exc)) from exc

    def release(self, path: str, fh: int) -> int:
        with self._handles_lock:
            item = self._handles.pop(fh, None)
        if item is not None:
            item[0].close()
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}

    def _top(self) -> list[GuestEntry]:
        """The mount folder's entries: the Linux tree's top level, then one folder per drive."""
        entries = list(self._engine(self._files.list_folder, "/")) if self._linux else []
        # TODO: a top-level Linux folder named like a drive folder ("C") is hidden by it.
        entries = [e for e in entries if e.name not in self._drives]
        return entries + [GuestEntry(r, d, "dir", 0, None) for d, r in self._drives.items()]

    def _child(self, parent: str, name: str) -> GuestEntry:
        if parent == "/":
            top = next((e for e in self._top() if e.name == name), None)
            if top is None:
                raise OSError(errno.ENOENT, "no such entry")
            return top
        found: GuestEntry = self._engine(self._files.child, self._guest_path(parent), name)
        return found

    def _guest_path(self, path: str) -> str:
        """Return the guest path of a path in the folder (``/C/Users`` is ``C:/Users``)."""
        head, _, rest = path[1:].partition("/")
        drive = self._drives.get(head)
        if drive is not None:
            return f"{drive}/{rest}" if rest else drive
        if self._linux:
            return path
        raise OSError(errno.ENOENT, "no such entry")

    def _engine(self, method: Callable[..., Any], *args: str) -> Any:
        """Call the engine, turning its errors into the errno a file system reports."""
        try:
            return method(*args)
        except (GuestPathNotFound, GuestPathInvalid) as exc:
            raise OSError(errno.ENOENT, str(exc)) from exc
        except NotAFolder as exc:
            raise OSError(errno.ENOTDIR, str(exc)) from exc
        except IsAFolder as exc:
            raise OSError(errno.EISDIR, str(exc)) from exc
        except (EngineError, ValueError) as exc:
            log.warning("%s", exc)
            raise OSError(errno.EIO, str(exc)) from exc

    def attributes(self, entry: GuestEntry | None) -> dict[str, int]:
        """The stat fields of an entry (None: the mount folder itself), times in nanoseconds."""
        if entry is None or entry.kind == "dir":
            mode, size, nlink = self._dir_mode, 0, 1
        elif entry.kind == "symlink":
            mode, size, nlink = stat.S_IFLNK | 0o777, self._link_size(entry), 1
        else:
            mode, size, nlink = self._file_mode, entry.size, 1
        mtime = self._mtime if entry is None or entry.mtime is None else int(entry.mtime * _NS)
        return {
            "st_mode": mode,
            "st_nlink": nlink,
            "st_uid": self._uid,
            "st_gid": self._gid,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": 4096,
            "st_mtime": mtime,
            "st_ctime": mtime,
            "st_atime": mtime,
        }


def _load_fuse() -> Any:
    """Import mfusepy over libfuse3 (libfuse2 where only that exists); return the FUSE class.

    Raises:
        FolderUnavailable: no libfuse, or no mfusepy.
    """
    if not os.environ.get("FUSE_LIBRARY_PATH") and not os.environ.get("FUSE_LIBRARY_NAME"):
        # mfusepy looks for libfuse2 first; libfuse3 hands a folder listing over with the
        # attributes of every entry (readdirplus), which makes `ls -l` one call, not one a file.
        library = ctypes.util.find_library("fuse3")
        if library:
            os.environ["FUSE_LIBRARY_PATH"] = library
    try:
        import mfusepy
    except ImportError as exc:
        raise FolderUnavailable(f"the Python library mfusepy is missing ({exc})") from exc
    except (OSError, AttributeError) as exc:
        raise FolderUnavailable(f"no usable libfuse ({exc})") from exc
    return _fuse_class(mfusepy)


def _fuse_class(mfusepy: Any) -> Any:
    """mfusepy's FUSE, with a readdir that hands the kernel each entry's attributes."""

    class _Fuse(mfusepy.FUSE):  # type: ignore[misc]
        def readdir_fuse_3(
            self, path: bytes, buf: Any, filler: Any, offset: int, fip: Any, flags: int
        ) -> int:
            # mfusepy hands the kernel only each entry's type. Here every entry carries its
            # attributes (FUSE_FILL_DIR_PLUS) and its own offset: libfuse answers readdirplus
            # with attributes only for entries that have an offset, so `ls -l` then needs no
            # lookup per name. The listing is the engine's cached one, read from `offset` on.
            plus = _FILL_DIR_PLUS if flags & _READDIR_PLUS else 0
            operations: _Operations = self.operations
            entries = operations.entries(path.decode(self.encoding, self.errors))
            st = mfusepy.c_stat()
            for index in range(offset, len(entries)):
                entry = entries[index]
                ctypes.memset(ctypes.byref(st), 0, ctypes.sizeof(st))
                mfusepy.set_st_attrs(st, operations.attributes(entry), use_ns=True)
                name = entry.name.encode(self.encoding, self.errors)
                if filler(buf, name, st, index + 1, plus):
                    break
            return 0

    return _Fuse


def _check_device() -> None:
    try:
        descriptor = os.open("/dev/fuse", os.O_RDWR)
    except OSError as exc:
        raise FolderUnavailable(f"no FUSE in this kernel (/dev/fuse: {exc.strerror})") from exc
    os.close(descriptor)
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise FolderUnavailable("fusermount3 is missing (Debian package fuse3)")


def _keep_sighup() -> None:
    """Make SIGHUP end the server as SIGTERM does.

    libfuse takes over every signal still at its default when a folder is mounted; SIGHUP would
    then unmount one folder and leave the server running.
    """
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:

        def hang_up(signum: int, frame: object) -> None:
            os.kill(os.getpid(), signal.SIGTERM)

        signal.signal(signal.SIGHUP, hang_up)


def _unmount(path: Path) -> bool:
    """Detach a FUSE mount (lazily); True if it is gone or was never there."""
    text = os.fsdecode(path)
    if text not in _openflr_mounts():
        return True
    for command in (["fusermount3", "-u", "-z", text], ["umount", "-l", text]):
        if shutil.which(command[0]) is None:
            continue
        try:
            result = subprocess.run(command, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            log.debug("%s: %s", " ".join(command), exc)
            continue
        if result.returncode == 0:
            return True
        log.debug("%s: %s", " ".join(command), result.stderr.decode(errors="replace").strip())
    return text not in _openflr_mounts()


def _openflr_mounts() -> set[str]:
    """Return the mount points of openflr's FUSE file systems, as this process sees them."""
    try:
        raw = Path("/proc/self/mountinfo").read_bytes()
    except OSError:
        return set()
    found = set()
    for line in raw.splitlines():
        fields, _, tail = line.partition(b" - ")
        parts, rest = fields.split(b" "), tail.split(b" ")
        if len(parts) >= 5 and len(rest) >= 2 and rest[0] == _FSTYPE.encode():
            found.add(os.fsdecode(_unescape(parts[4])))
    return found


def _unescape(field: bytes) -> bytes:
    """Undo the octal escapes of /proc/self/mountinfo (``\\040`` for a space)."""
    return re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m[1], 8)]), field)
