"""Tasks: the background work a client starts with a 202 and then polls (``task-N``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Row, bindparam, delete, func, insert, select, update

from openflr.store import Database, TaskRow, utcnow

log = logging.getLogger(__name__)

__all__ = ["Task", "TaskOutcome", "TaskService", "parse_task_id"]


@dataclass(frozen=True)
class Task:
    """A task as clients see it."""

    id: int
    session_id: str
    operation: str
    state: str
    success: bool | None
    message: str | None
    restore_point_id: str | None
    mount_number: int | None
    guest_path: str | None

    @property
    def task_id(self) -> str:
        """The API form of the id: ``task-N``."""
        return f"task-{self.id}"


@dataclass(frozen=True)
class TaskOutcome:
    """What a task's work returns when it ends."""

    success: bool
    message: str
    mount_number: int | None = None


def parse_task_id(text: str) -> int | None:
    """Return the number of a task id as clients send it (``task-7`` or ``7``), or None."""
    text = text.strip().lower()
    if text.startswith("task-"):
        text = text[5:]
    return int(text) if text.isascii() and text.isdigit() and len(text) < 18 else None


class TaskService:
    """Create, run, poll and remove tasks; they belong to one logon session each.

    Args:
        db: The database.
        workers: How many tasks run at once.
    """

    def __init__(self, db: Database, workers: int = 4) -> None:
        self.db = db
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openflr-task")
        self._cancelled: set[int] = set()
        self._running: dict[int, _Pending] = {}
        self._lock = threading.Lock()

    def recover(self) -> None:
        """Fail the tasks a previous run left running: their work died with that process."""
        with self.db.session() as session:
            for row in session.scalars(select(TaskRow).where(TaskRow.state != "Finished")).all():
                row.state = "Finished"
                row.success = False
                row.message = "The server restarted before this task finished; start it again."
                row.updated = utcnow()
                log.info("task task-%d Finished (interrupted by restart)", row.id)

    def start(
        self,
        session_id: str,
        operation: str,
        work: Callable[[int], TaskOutcome],
        *,
        restore_point_id: str | None = None,
        mount_number: int | None = None,
        guest_path: str | None = None,
    ) -> Task:
        """Record a Running task and run ``work(task_number)`` in the background."""
        now = utcnow()
        values = {
            "session_id": session_id,
            "operation": operation,
            "state": "Running",
            "restore_point_id": restore_point_id,
            "mount_number": mount_number,
            "guest_path": guest_path,
            "created": now,
            "updated": now,
        }
        with self.db.connection() as connection:
            row = connection.execute(_START, values).one()
        task = _to_task(row)
        with self._lock:
            self._running[task.id] = _Pending()
        log.info(
            "task %s %s Running (session %s, restore point %s, mount %s)",
            task.task_id,
            operation,
            session_id,
            restore_point_id,
            mount_number,
        )
        self._pool.submit(self._run, task.id, work)
        return task

    def settle(self, task: Task, timeout: float) -> Task:
        """Wait up to ``timeout`` seconds for a task to finish; return it as it is then.

        A task whose work takes a few milliseconds (mounting a restore point that is open
        already) can then be answered Finished at once, and its client need not poll.
        """
        with self._lock:
            pending = self._running.get(task.id)
        if pending is None:
            return self.get(task.session_id, task.id) or task  # it ended already
        if not pending.ended.wait(timeout):
            return task
        return pending.finished or task

    def get(self, session_id: str, number: int) -> Task | None:
        """Return a task of this logon session, or None."""
        with self.db.connection() as connection:
            row = connection.execute(_GET, {"number": number}).first()
        if row is None or row.session_id != session_id:
            return None
        return _to_task(row)

    def list(self, session_id: str) -> list[Task]:
        """Return the tasks of a logon session, oldest first."""
        with self.db.session() as session:
            rows = session.scalars(
                select(TaskRow).where(TaskRow.session_id == session_id).order_by(TaskRow.id)
            ).all()
            return [_to_task(r) for r in rows]

    def delete(self, session_id: str, number: int) -> bool:
        """Remove a task; a running one is cancelled. Returns False if it was not found."""
        with self.db.session() as session:
            row = session.get(TaskRow, number)
            if row is None or row.session_id != session_id:
                return False
            running = row.state != "Finished"
            session.delete(row)
        if running:
            with self._lock:
                self._cancelled.add(number)
        log.info("task task-%d removed%s", number, " (cancelled)" if running else "")
        return True

    def is_cancelled(self, number: int) -> bool:
        """Whether the task was removed while its work ran."""
        with self._lock:
            return number in self._cancelled

    def drop_session(self, session_id: str) -> None:
        """Remove every task of a logon session that ended."""
        with self.db.session() as session:
            numbers = session.scalars(
                select(TaskRow.id).where(
                    TaskRow.session_id == session_id, TaskRow.state != "Finished"
                )
            ).all()
            session.execute(delete(TaskRow).where(TaskRow.session_id == session_id))
        with self._lock:
            self._cancelled.update(numbers)

    def shutdown(self) -> None:
        """Stop taking work; running tasks are abandoned."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, number: int, work: Callable[[int], TaskOutcome]) -> None:
        try:
            outcome = work(number)
        except Exception as exc:  # a task reports its failure; it never kills the worker
            log.exception("task task-%d failed unexpectedly", number)
            outcome = TaskOutcome(False, f"Internal error ({type(exc).__name__}); see the log.")
        finished = self._finish(number, outcome)
        with self._lock:
            self._cancelled.discard(number)
            pending = self._running.pop(number, None)
        if pending is not None:
            pending.finished = finished
            pending.ended.set()

    def _finish(self, number: int, outcome: TaskOutcome) -> Task | None:
        """Record a task's outcome; return the task as it now is, or None if it was removed."""
        values = {
            "number": number,
            "ok": outcome.success,
            "text": outcome.message,
            "mount": outcome.mount_number,
            "when": utcnow(),
        }
        with self.db.connection() as connection:
            row = connection.execute(_FINISH, values).first()
        if row is None:
            return None
        finished = _to_task(row)
        log.info(
            "task task-%d Finished success=%s mount %s: %s",
            number,
            outcome.success,
            outcome.mount_number,
            outcome.message,
        )
        return finished


# The statements of every task, built once (see Database.connection).
_START = insert(TaskRow).returning(*TaskRow.__table__.columns)
_GET = select(*TaskRow.__table__.columns).where(TaskRow.id == bindparam("number"))
_FINISH = (
    update(TaskRow)
    .where(TaskRow.id == bindparam("number"))
    .values(
        state="Finished",
        success=bindparam("ok"),
        message=bindparam("text"),
        updated=bindparam("when"),
        # A task that mounted says which mount; any other keeps the number it started with.
        mount_number=func.coalesce(bindparam("mount"), TaskRow.mount_number),
    )
    .returning(*TaskRow.__table__.columns)
)


class _Pending:
    """A task whose work runs: set ``ended`` when it is over, with the task as it finished."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.finished: Task | None = None


def _to_task(row: TaskRow | Row[Any]) -> Task:
    return Task(
        id=row.id,
        session_id=row.session_id,
        operation=row.operation,
        state=row.state,
        success=row.success,
        message=row.message,
        restore_point_id=row.restore_point_id,
        mount_number=row.mount_number,
        guest_path=row.guest_path,
    )
