"""The services behind the API, wired together once per server."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from openflr.audit import AuditLog
from openflr.catalog import Catalog
from openflr.fuse import FlrFolders
from openflr.mounts import MountService
from openflr.sessions import SessionService, UserService
from openflr.store import Database
from openflr.tasks import TaskService
from openflr.throttle import LogonThrottle

log = logging.getLogger(__name__)

__all__ = ["Services", "Settings"]


@dataclass
class Settings:
    """What a server is started with."""

    data_dir: Path
    repositories: list[Path]
    session_timeout: float = 900.0
    catalog_max_age: float = 60.0
    task_workers: int = 4
    secure_cookies: bool = True
    public_url: str | None = None
    logon_backoff_cap: float = 30.0
    # None: <data_dir>/flr.
    flr_root: Path | None = None
    flr_allow_other: bool = False
    # Seconds a restore point stays open after its last unmount; 0 closes it at once.
    keep_open: float = 60.0


@dataclass
class Services:
    """Every service of one server, built from its settings."""

    settings: Settings
    db: Database
    users: UserService
    catalog: Catalog
    tasks: TaskService
    mounts: MountService
    sessions: SessionService
    audit: AuditLog
    throttle: LogonThrottle
    _reaper: threading.Thread | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    # Set when the server is asked to stop: downloads in flight end, instead of holding the
    # shutdown up until it gives up on them.
    stopping: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        """Open the database in the data folder and wire the services."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.data_dir / "openflr.db")
        catalog = Catalog(settings.repositories, max_age=settings.catalog_max_age)
        tasks = TaskService(db, workers=settings.task_workers)
        folders = FlrFolders(
            settings.flr_root or settings.data_dir / "flr",
            settings.data_dir / "flr-folders.json",
            allow_other=settings.flr_allow_other,
        )
        mounts = MountService(db, catalog, tasks, folders, keep_open=settings.keep_open)

        def session_ended(session_id: str) -> None:
            mounts.release_session(session_id)
            tasks.drop_session(session_id)

        audit = AuditLog(db, settings.data_dir)
        mounts.audit = audit
        sessions = SessionService(db, settings.session_timeout, on_end=session_ended, audit=audit)
        mounts.on_folder_activity = sessions.touch
        throttle = LogonThrottle(cap=settings.logon_backoff_cap)
        return cls(settings, db, UserService(db), catalog, tasks, mounts, sessions, audit, throttle)

    def start(self) -> None:
        """Recover from the last run and start expiring idle sessions."""
        if self.mounts.folders is not None:
            self.mounts.folders.start()
        self.tasks.recover()
        self.sessions.expire_idle()
        self.catalog.rescan()
        interval = max(1.0, min(30.0, self.settings.session_timeout / 4))

        def reap() -> None:
            while not self._stop.wait(interval):
                try:
                    self.sessions.expire_idle()
                except Exception:  # the reaper must outlive a passing database error
                    log.exception("expiring idle logon sessions failed")

        self._reaper = threading.Thread(target=reap, name="openflr-reaper", daemon=True)
        self._reaper.start()

    def stop(self) -> None:
        """Stop background work, close every opened restore point and unmount its folder.

        Safe to call twice: the server calls it on shutdown and again when it returns.
        """
        if self._stop.is_set():
            return
        self._stop.set()
        self.tasks.shutdown()
        self.mounts.close_all()
        self.db.close()
