"""The audit log: who logged on, mounted, restored and downloaded what, from where, and how much.

Every event is written twice: a row in the database's ``audit`` table (for queries) and a JSON line
appended to ``<data-dir>/audit.jsonl`` (for tools that ship logs). Neither is ever rewritten; the
file is opened in append mode for each line, so a crash loses at most the line being written.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import insert, select

from openflr.store import AuditRow, Database, as_utc, utcnow

log = logging.getLogger(__name__)

__all__ = ["AuditEvent", "AuditLog"]

EVENTS = ("logon", "logon-failed", "logoff", "mount", "unmount", "restore", "download")


@dataclass(frozen=True)
class AuditEvent:
    """One audited event."""

    time: str
    event: str
    user: str | None = None
    address: str | None = None
    session: str | None = None
    restore_point: str | None = None
    restore_point_name: str | None = None
    guest_path: str | None = None
    bytes_sent: int | None = None
    outcome: str | None = None


# Built once, as every hot statement is (see Database.connection).
_INSERT = insert(AuditRow)


class AuditLog:
    """Append audit events to the database and to ``audit.jsonl``."""

    def __init__(self, db: Database, data_dir: Path) -> None:
        self.db = db
        self.path = data_dir / "audit.jsonl"
        self._lock = threading.Lock()

    def record(
        self,
        event: str,
        *,
        user: str | None = None,
        address: str | None = None,
        session: str | None = None,
        restore_point: str | None = None,
        restore_point_name: str | None = None,
        guest_path: str | None = None,
        bytes_sent: int | None = None,
        outcome: str | None = None,
    ) -> None:
        """Write one event. Failing to audit is logged loudly but never fails the request."""
        now = utcnow()
        item = AuditEvent(
            time=now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            event=event,
            user=user,
            address=address,
            session=session,
            restore_point=restore_point,
            restore_point_name=restore_point_name,
            guest_path=guest_path,
            bytes_sent=bytes_sent,
            outcome=outcome,
        )
        line = json.dumps(asdict(item), ensure_ascii=True) + "\n"
        try:
            with self._lock:
                descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                with os.fdopen(descriptor, "a", encoding="ascii") as fh:
                    fh.write(line)
                with self.db.connection() as connection:
                    connection.execute(
                        _INSERT,
                        {
                            "time": now,
                            "event": event,
                            "user_name": _storable(user),
                            "address": address,
                            "session_id": session,
                            "restore_point_id": restore_point,
                            # Names and messages carry guest and host names too.
                            "restore_point_name": _storable(restore_point_name),
                            "guest_path": _storable(guest_path),
                            "bytes_sent": bytes_sent,
                            "outcome": _storable(outcome),
                        },
                    )
        except Exception:  # the audit must never take a restore down with it
            log.exception("writing the audit event %s failed", event)

    def events(
        self, since: datetime | None = None, limit: int | None = None
    ) -> Iterator[AuditEvent]:
        """The recorded events, oldest first (the last ``limit`` of them, if given)."""
        with self.db.session() as session:
            query = select(AuditRow).order_by(AuditRow.id.desc())
            if since is not None:
                query = query.where(AuditRow.time >= since)
            if limit is not None:
                query = query.limit(limit)
            rows = list(reversed(session.scalars(query).all()))
        for row in rows:
            yield AuditEvent(
                time=as_utc(row.time).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                event=row.event,
                user=row.user_name,
                address=row.address,
                session=row.session_id,
                restore_point=row.restore_point_id,
                restore_point_name=row.restore_point_name,
                guest_path=row.guest_path,
                bytes_sent=row.bytes_sent,
                outcome=row.outcome,
            )


def _storable(text: str | None) -> str | None:
    """Text the database can store: bytes a Linux name (a guest path, a machine folder) held
    that were no UTF-8 (kept as surrogates) become ``\\xe9`` escapes, as the JSON line shows
    them (``\\udce9``)."""
    if text is None:
        return None
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
