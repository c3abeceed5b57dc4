"""Opened restore points, shared by the mounts of one point and kept open a while after the last.

Opening a restore point reads its container, volume system and file system metadata: 5 to 10 ms
for a small image, much more for a large one, and the caches built since (listings, file system
metadata) go with it. A client that unmounts and mounts again (a script per file, a UI that
closes a window) would pay that every time, so a point that no mount uses stays open for a grace
period, and a mount within it takes it as it is.

A point kept open is closed when its grace period ends, when more than a few are idle at once
(the one idle longest goes first), when its backup files change or go away, and at shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from openflr.catalog import RestorePoint
from openflr.engine import ImageSource, OpenedRestorePoint, VbkSource, open_restore_point

log = logging.getLogger(__name__)

__all__ = ["OpenedPoints"]

# How often the backup files of an idle point are looked at, to close it when they change.
_CHECK_INTERVAL = 5.0

Opener = Callable[[VbkSource | ImageSource], OpenedRestorePoint]
# What a restore point's backup files looked like when it was opened: (name, size, mtime, inode)
# of each; None when they cannot be read.
Signature = tuple[tuple[str, int, int, int], ...] | None


@dataclass(eq=False)
class _Point:
    """One opened restore point and the mounts that use it."""

    point_id: str
    source: VbkSource | ImageSource
    opened: OpenedRestorePoint
    signature: Signature
    users: int = 0
    idle_since: float = 0.0


class OpenedPoints:
    """Opened restore points, one per restore point, shared by all of its mounts.

    Fifty sessions mounting one restore point hold one set of open files and one set of caches
    instead of fifty.

    Args:
        keep_open: Seconds a point no mount uses stays open; 0 closes it with its last mount.
        max_idle: How many points no mount uses may stay open at once.
        opener: Opens a restore point (the engine's; tests pass their own).
    """

    def __init__(
        self, keep_open: float = 0.0, max_idle: int = 4, opener: Opener = open_restore_point
    ) -> None:
        self.keep_open = keep_open
        self.max_idle = max_idle
        self._opener = opener
        self._current: dict[str, _Point] = {}  # restore point id -> the point new mounts get
        self._by_opened: dict[int, _Point] = {}  # id(opened) -> every point still open
        self._idle: OrderedDict[str, _Point] = OrderedDict()  # longest idle first
        self._lock = threading.Condition()
        self._closer: threading.Thread | None = None
        self._checked_at = 0.0  # when the closer last looked at the idle points' backup files
        self._stopped = False

    def acquire(self, point: RestorePoint) -> OpenedRestorePoint:
        """Return the restore point opened, opening it unless it is open already.

        A point whose backup files changed since it was opened is not handed out again: the
        mount gets a fresh one, and the old one closes with the last mount that uses it.
        """
        signature = _signature(point.source)
        with self._lock:
            found = self._current.get(point.id)
            if found is not None and found.signature == signature:
                return self._use(found)
            stale = self._retire(found) if found is not None else None
        if stale is not None:
            log.info("restore point %s closed: its backup files changed", point.id)
            stale.opened.close()

        started = time.monotonic()
        opened = self._opener(point.source)  # slow: not under the lock
        log.info("restore point %s opened in %.3f s", point.id, time.monotonic() - started)
        with self._lock:
            found = self._current.get(point.id)
            if found is not None and found.signature == signature:
                result, stale = self._use(found), None  # another mount opened it meanwhile
            else:
                stale = self._retire(found) if found is not None else None
                fresh = _Point(point.id, point.source, opened, signature)
                self._current[point.id] = fresh
                self._by_opened[id(opened)] = fresh
                result = self._use(fresh)
        if stale is not None:
            stale.opened.close()
        if result is not opened:
            opened.close()
        return result

    def is_open(self, point_id: str) -> bool:
        """Whether a restore point is open now (in use or kept open), so a mount needs no open."""
        with self._lock:
            return point_id in self._current

    def release(self, opened: OpenedRestorePoint) -> None:
        """One mount fewer uses it; after the last, it closes now or at the end of the grace."""
        with self._lock:
            item = self._by_opened.get(id(opened))
            if item is None or item.opened is not opened or item.users == 0:
                return
            item.users -= 1
            if item.users > 0:
                return
            if self.keep_open <= 0 or self._stopped or self._current.get(item.point_id) is not item:
                closing = [self._forget(item)]
                crowded = []
            else:
                item.idle_since = time.monotonic()
                self._idle[item.point_id] = item
                if len(self._idle) == 1:
                    # The closer sleeps without a deadline while no point is idle; the files were
                    # looked at when this point was taken, so the next look is due in a while.
                    self._checked_at = item.idle_since
                    self._lock.notify_all()
                closing = crowded = [
                    self._forget(next(iter(self._idle.values())))
                    for _ in range(len(self._idle) - self.max_idle)
                ]
                self._start_closer()
                log.info("restore point %s kept open for %g s", item.point_id, self.keep_open)
        for item in crowded:
            log.info("restore point %s closed: more than %d idle", item.point_id, self.max_idle)
        for item in closing:
            item.opened.close()

    def close_all(self) -> None:
        """Close every point no mount uses and stop keeping any open (server shutdown)."""
        with self._lock:
            self._stopped = True
            closing = [self._forget(item) for item in list(self._idle.values())]
            self._lock.notify_all()
            closer = self._closer
        if closer is not None:
            closer.join(5)
        for item in closing:
            item.opened.close()

    def _use(self, item: _Point) -> OpenedRestorePoint:
        """Count one more mount of a point; the caller holds the lock."""
        item.users += 1
        if self._idle.pop(item.point_id, None) is not None:
            log.info("restore point %s mounted again while kept open", item.point_id)
        return item.opened

    def _retire(self, item: _Point) -> _Point | None:
        """Hand a point out no more; return it if it can close now. The caller holds the lock."""
        if self._current.get(item.point_id) is item:
            del self._current[item.point_id]
        if item.users > 0:
            return None  # it closes with its last mount
        return self._forget(item)

    def _forget(self, item: _Point) -> _Point:
        """Drop every reference to a point about to close; the caller holds the lock."""
        if self._current.get(item.point_id) is item:
            del self._current[item.point_id]
        if self._idle.get(item.point_id) is item:
            del self._idle[item.point_id]
        self._by_opened.pop(id(item.opened), None)
        return item

    def _start_closer(self) -> None:
        """Start the thread that closes idle points; the caller holds the lock."""
        if self._closer is None:
            self._closer = threading.Thread(
                target=self._close_idle, name="openflr-keep-open", daemon=True
            )
            self._closer.start()

    def _close_idle(self) -> None:
        """The closer thread: close idle points whose grace ended or whose files changed."""
        while True:
            with self._lock:
                if self._stopped:
                    return
                self._lock.wait(self._next_wake())
                if self._stopped:
                    return
                now = time.monotonic()
                watched = []
                if now - self._checked_at >= _CHECK_INTERVAL:
                    watched, self._checked_at = list(self._idle.values()), now
            changed = {id(item) for item in watched if _signature(item.source) != item.signature}
            with self._lock:
                due = [
                    item
                    for item in self._idle.values()
                    if id(item) in changed or now - item.idle_since >= self.keep_open
                ]
                closing = [self._forget(item) for item in due]
            for item in closing:
                why = "its backup files changed" if id(item) in changed else "idle"
                log.info("restore point %s closed: %s", item.point_id, why)
                try:
                    item.opened.close()
                except Exception:  # the closer must outlive one point that fails to close
                    log.exception("closing restore point %s failed", item.point_id)

    def _next_wake(self) -> float | None:
        """Seconds until the closer has work; None while no point is idle. Lock held."""
        if not self._idle:
            return None
        first = next(iter(self._idle.values()))
        wake = min(first.idle_since + self.keep_open, self._checked_at + _CHECK_INTERVAL)
        return max(0.0, wake - time.monotonic())


def _signature(source: VbkSource | ImageSource) -> Signature:
    """What the backup files look like now; None if they cannot be read.

    For disk images, every file of their folders counts: VMDK extents and QCOW2 backing files
    live beside the image that names them.
    """
    if isinstance(source, VbkSource):
        files = [source.path]
    else:
        folders = sorted({path.parent for path in source.paths})
        try:
            files = [Path(e.path) for f in folders for e in os.scandir(f) if e.is_file()]
        except OSError:
            return None
    found = []
    for path in sorted(files):
        try:
            info = path.stat()
        except OSError:
            return None
        found.append((str(path), info.st_size, info.st_mtime_ns, info.st_ino))
    return tuple(found)
