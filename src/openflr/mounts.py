"""Mounts: opened restore points, each owned by the logon session that asked for it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import bindparam, exists, false, func, insert, or_, select, update

from openflr.audit import AuditLog
from openflr.catalog import Catalog, RestorePoint
from openflr.engine import EngineError, OpenedRestorePoint
from openflr.fuse import FlrFolder, FlrFolders, FolderUnavailable, PendingFolder
from openflr.opened import OpenedPoints
from openflr.store import Database, LogonSessionRow, MountRow, utcnow
from openflr.tasks import Task, TaskOutcome, TaskService

log = logging.getLogger(__name__)

__all__ = ["Mount", "MountGone", "MountService"]


class MountGone(Exception):
    """A mount record whose restore point can no longer be opened (its backup file went away)."""


@dataclass(frozen=True)
class Mount:
    """A mount as the API shows it, with the opened restore point behind it."""

    row_id: int
    restore_point: RestorePoint
    number: int
    session_id: str
    opened: OpenedRestorePoint


# The statements of every mount, unmount and request on a mount, built once (see
# Database.connection).
_FIND = select(MountRow.id, MountRow.session_id).where(
    MountRow.restore_point_id == bindparam("point"),
    MountRow.number == bindparam("number"),
    MountRow.released.is_(False),
)
_OF_SESSION = (
    select(MountRow.id, MountRow.number)
    .where(
        MountRow.restore_point_id == bindparam("point"),
        MountRow.session_id == bindparam("session"),
        MountRow.released.is_(False),
    )
    .order_by(MountRow.number)
)
_LIVE = select(MountRow.id).where(MountRow.id == bindparam("row"), MountRow.released.is_(False))
_RELEASE = (
    update(MountRow)
    .where(
        MountRow.restore_point_id == bindparam("point"),
        MountRow.number == bindparam("wanted"),
        MountRow.session_id == bindparam("session"),
        MountRow.released.is_(False),
    )
    .values(released=True)
    .returning(MountRow.id)
)
# A new mount takes the next number of its restore point, and only while its logon session
# still exists: one statement, so that a logoff or another mount cannot come in between.
_INSERT = (
    insert(MountRow)
    .from_select(
        ["restore_point_id", "number", "session_id", "released", "created"],
        select(
            bindparam("point", type_=MountRow.restore_point_id.type),
            select(func.coalesce(func.max(MountRow.number), 0) + 1)
            .where(MountRow.restore_point_id == bindparam("point"))
            .scalar_subquery(),
            bindparam("session", type_=MountRow.session_id.type),
            false(),
            bindparam("when", type_=MountRow.created.type),
        ).where(exists().where(LogonSessionRow.id == bindparam("session"))),
    )
    .returning(MountRow.id, MountRow.number)
)


class MountService:
    """Mount restore points for logon sessions, find their mounts, and unmount them.

    Args:
        folders: The FLR root, where each mount also becomes a read-only folder; None for none.
        keep_open: Seconds a restore point stays open after its last unmount, for the next
            mount to find it open; 0 closes it at once.
    """

    def __init__(
        self,
        db: Database,
        catalog: Catalog,
        tasks: TaskService,
        folders: FlrFolders | None = None,
        keep_open: float = 0.0,
    ) -> None:
        self.db = db
        self.catalog = catalog
        self.tasks = tasks
        self.folders = folders
        self._opened: dict[int, OpenedRestorePoint] = {}
        self._shared = OpenedPoints(keep_open=keep_open)
        self._folders: dict[int, FlrFolder] = {}
        self._lock = threading.Lock()
        self.audit: AuditLog | None = None
        # Called with a mount's logon session id when its FLR folder is read: reading there is
        # using the session, as an API request is. Set by the services once sessions exist.
        self.on_folder_activity: Callable[[str], None] | None = None
        # A mount's record and its entry in _opened change together under this lock, and a
        # lookup reads both under it: a request that comes while a mount is being recorded or
        # released must not take it for a mount of an earlier run and open it again.
        self._records = threading.Lock()

    def start_mount(
        self,
        session_id: str,
        point: RestorePoint,
        user: str | None = None,
        address: str | None = None,
    ) -> Task:
        """Start the task that mounts a restore point for a logon session."""

        def work(task_number: int) -> TaskOutcome:
            outcome = self._mount(session_id, point, task_number)
            if self.audit is not None:
                self.audit.record(
                    "mount",
                    user=user,
                    address=address,
                    session=session_id,
                    restore_point=point.id,
                    restore_point_name=point.name,
                    outcome=("ok" if outcome.success else "failed") + f": {outcome.message}",
                )
            return outcome

        return self.tasks.start(session_id, "MountRestorePoint", work, restore_point_id=point.id)

    def list(self, session_id: str, point: RestorePoint) -> list[Mount]:
        """Return the live mounts of a restore point that belong to a logon session."""
        with self._records:
            with self.db.connection() as connection:
                rows = connection.execute(
                    _OF_SESSION, {"point": point.id, "session": session_id}
                ).all()
            found = [(row.id, row.number, self._opened.get(row.id)) for row in rows]
        mounts = []
        for row_id, number, opened in found:
            if opened is None:
                try:
                    opened = self._reopen(row_id, point, number, session_id)
                except MountGone:
                    continue
            if opened is not None:
                mounts.append(Mount(row_id, point, number, session_id, opened))
        return mounts

    def get(self, session_id: str, point: RestorePoint, number: int) -> Mount | None:
        """Return a mount of this logon session, reopening it after a restart if needed.

        Raises:
            MountGone: the mount exists but its backup can no longer be opened.
        """
        with self._records:
            with self.db.connection() as connection:
                row = connection.execute(_FIND, {"point": point.id, "number": number}).first()
            if row is None or row.session_id != session_id:
                return None
            opened = self._opened.get(row.id)
        if opened is None:
            opened = self._reopen(row.id, point, number, session_id)
            if opened is None:
                return None
        return Mount(row.id, point, number, session_id, opened)

    def unmount(self, session_id: str, point: RestorePoint, number: int) -> bool:
        """Unmount; returns False if this session has no such mount."""
        with self._records:
            with self.db.connection() as connection:
                row_id = connection.execute(
                    _RELEASE, {"point": point.id, "wanted": number, "session": session_id}
                ).scalar()
            if row_id is None:
                return False
            taken = self._take(row_id)
        self._let_go(*taken)
        log.info("mount %s@%d released (session %s)", point.id, number, session_id)
        return True

    def is_live(self, row_id: int) -> bool:
        """Whether the mount with this record is still mounted (not unmounted nor released)."""
        return row_id in self._opened

    def release_session(self, session_id: str) -> None:
        """Unmount everything a logon session owned.

        Also every mount recorded without a session (databases from before mounts kept their
        session id when the session row went), which would otherwise stay open.
        """
        with self._records:
            with self.db.session() as session:
                rows = session.scalars(
                    select(MountRow).where(
                        or_(MountRow.session_id == session_id, MountRow.session_id.is_(None)),
                        MountRow.released.is_(False),
                    )
                ).all()
                released = [(r.id, r.restore_point_id, r.number) for r in rows]
                for row in rows:
                    row.released = True
            taken = [self._take(row_id) for row_id, _, _ in released]
        for (_, point_id, number), (opened, folder) in zip(released, taken, strict=True):
            self._let_go(opened, folder)
            log.info("mount %s@%d released (session %s ended)", point_id, number, session_id)

    def close_all(self) -> None:
        """Close every opened restore point and its folder (server shutdown); the records stay."""
        self._shared.close_all()
        with self._lock:
            opened = list(self._opened.values())
            self._opened.clear()
            folders = list(self._folders.values())
            self._folders.clear()
        if self.folders is not None:
            self.folders.detach_all(folders)
        for item in opened:
            self._shared.release(item)

    def _mount(self, session_id: str, point: RestorePoint, task_number: int) -> TaskOutcome:
        if point.unsupported:
            return TaskOutcome(False, f"Cannot mount {point.name}: {point.unsupported}")
        try:
            opened = self._shared.acquire(point)
        except Exception as exc:
            return TaskOutcome(False, _cannot_open("mount", point, exc))

        if self.tasks.is_cancelled(task_number):
            self._shared.release(opened)
            return TaskOutcome(False, "Cancelled")

        # The kernel mounts the folder while the mount is recorded.
        pending = self._start_attach(point, opened, session_id)
        try:
            recorded = self._record(session_id, point, opened)
        except Exception:
            self._abandon(pending)
            self._shared.release(opened)
            raise
        if recorded is None:
            self._abandon(pending)
            self._shared.release(opened)
            return TaskOutcome(False, "The logon session ended before the mount finished")
        row_id, number = recorded

        message = "Ok; " + self._finish_attach(row_id, opened, pending)
        if opened.skipped:
            message += "; volumes not mounted: " + "; ".join(opened.skipped)
        log.info(
            "mount %s@%d ready (session %s, task task-%d)",
            point.id,
            number,
            session_id,
            task_number,
        )
        return TaskOutcome(True, message, mount_number=number)

    def _record(
        self, session_id: str, point: RestorePoint, opened: OpenedRestorePoint
    ) -> tuple[int, int] | None:
        with self._records:
            with self.db.connection() as connection:
                row = connection.execute(
                    _INSERT, {"point": point.id, "session": session_id, "when": utcnow()}
                ).first()
            if row is None:
                return None  # the logon session ended
            row_id, number = row
            with self._lock:
                self._opened[row_id] = opened
        return row_id, number

    def _attach(
        self, row_id: int, point: RestorePoint, opened: OpenedRestorePoint, session_id: str
    ) -> str:
        """Serve a mount's files as a folder under the FLR root; say where, or why not."""
        return self._finish_attach(row_id, opened, self._start_attach(point, opened, session_id))

    def _start_attach(
        self, point: RestorePoint, opened: OpenedRestorePoint, session_id: str
    ) -> PendingFolder | str:
        """Start mounting a mount's folder under the FLR root, or say why there is none."""
        if self.folders is None:
            return "no FUSE folder: no FLR root configured"

        def used() -> None:
            if self.on_folder_activity is not None:
                self.on_folder_activity(session_id)

        try:
            return self.folders.start_attach(
                point.machine, opened.files, point.created.timestamp(), on_activity=used
            )
        except FolderUnavailable as exc:
            return f"no FUSE folder: {exc}"

    def _finish_attach(
        self, row_id: int, opened: OpenedRestorePoint, pending: PendingFolder | str
    ) -> str:
        """Give a mount the folder once mounted; say where it is, or why there is none."""
        if isinstance(pending, str):
            return pending
        try:
            folder = pending.wait()
        except FolderUnavailable as exc:
            return f"no FUSE folder: {exc}"
        with self._lock:
            kept = self._opened.get(row_id) is opened
            if kept:
                self._folders[row_id] = folder
        if not kept:
            # Unmounted while the folder was being made: it must not outlive its mount.
            self._detach(folder)
            return "no FUSE folder: unmounted while the folder was being made"
        return f"folder: {folder.path}"

    def _abandon(self, pending: PendingFolder | str) -> None:
        """Remove the folder of a mount that did not come about."""
        if isinstance(pending, str):
            return
        try:
            folder = pending.wait()
        except FolderUnavailable:
            return  # gone already
        self._detach(folder)

    def _detach(self, folder: FlrFolder, then: Callable[[], None] | None = None) -> None:
        """Unmount a folder, then call ``then`` (see :meth:`FlrFolders.detach`)."""
        if self.folders is not None:
            self.folders.detach(folder, then)
        elif then is not None:
            then()

    def _reopen(
        self, row_id: int, point: RestorePoint, number: int, session_id: str
    ) -> OpenedRestorePoint | None:
        """Open again a mount an earlier run of the server recorded, with its folder.

        Returns None if the mount was released meanwhile.

        Raises:
            MountGone: its backup can no longer be opened.
        """
        try:
            opened = self._shared.acquire(point)
        except Exception as exc:
            raise MountGone(_cannot_open("reopen", point, exc)) from exc
        with self._records:
            with self.db.connection() as connection:
                live = connection.execute(_LIVE, {"row": row_id}).first() is not None
            with self._lock:
                current = self._opened.get(row_id)
                if live and current is None:
                    self._opened[row_id] = opened
        if not live or current is not None:  # released, or another request reopened it
            self._shared.release(opened)
            return current if live else None
        outcome = self._attach(row_id, point, opened, session_id)
        log.info("mount %s@%d reopened; %s", point.id, number, outcome)
        return opened

    def _take(self, row_id: int) -> tuple[OpenedRestorePoint | None, FlrFolder | None]:
        """Take a released mount's restore point and folder out of the maps."""
        with self._lock:
            return self._opened.pop(row_id, None), self._folders.pop(row_id, None)

    def _let_go(self, opened: OpenedRestorePoint | None, folder: FlrFolder | None) -> None:
        """Unmount a released mount's folder, then release its restore point."""

        def release() -> None:
            if opened is not None:
                self._shared.release(opened)

        # The folder goes first, so that no reader of it meets a closed restore point.
        if folder is not None:
            self._detach(folder, release)
        else:
            release()


def _cannot_open(doing: str, point: RestorePoint, exc: Exception) -> str:
    """Why a restore point cannot be opened, as its client reads it: the log alone gets where."""
    if isinstance(exc, EngineError):  # the engine names no host path
        return f"Cannot {doing} {point.name}: {exc}"
    if isinstance(exc, OSError):
        log.warning("%s of %s failed: %s", doing, point.id, exc)
        why = exc.strerror or type(exc).__name__
        return (
            f"Cannot {doing} {point.name}: a backup file of it cannot be read ({why}); "
            "the repository may have changed"
        )
    log.warning("%s of %s failed", doing, point.id, exc_info=True)
    return f"Cannot {doing} {point.name}: {type(exc).__name__}: {exc}"
