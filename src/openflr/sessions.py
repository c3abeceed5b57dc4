"""Users and logon sessions: password checks, session tokens and idle expiry."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import re
import secrets
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import bindparam, select, update

from openflr.access import ROLES, Access, normalise_extensions
from openflr.audit import AuditLog
from openflr.store import Database, LogonSessionRow, UserRow, as_utc, utcnow

log = logging.getLogger(__name__)

__all__ = ["LogonSession", "SessionService", "UserService", "normalise_user_name"]

_hasher = PasswordHasher()

# Each argon2 check takes the hasher's memory cost (64 MiB by default): fifty logons at once
# would take gigabytes. Checks wait for one of two slots instead, which also keeps password
# guessing from eating both cores.
_CHECKS = threading.BoundedSemaphore(2)

# A hash to verify against when the user does not exist, so that an unknown name costs as much
# time as a wrong password and the answer time tells nothing about which names exist.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))

_TOUCH_EVERY = timedelta(seconds=1)

_USER_NAME = re.compile(r"^[^\x00-\x1f\\/@:]{1,256}$")


def normalise_user_name(name: str) -> str:
    """Return the account name inside the forms Windows clients send.

    ``user``, ``.\\user``, ``HOST\\user`` and ``user@HOST`` all name the local account ``user``.
    """
    name = name.strip()
    if "\\" in name:
        name = name.rsplit("\\", 1)[1]
    elif "@" in name:
        name = name.split("@", 1)[0]
    return name


@dataclass(frozen=True)
class LogonSession:
    """A logged-on client: ``id`` is the public SessionId, never the token."""

    id: str
    user_name: str
    created: datetime
    last_seen: datetime


class UserService:
    """Create users and check their passwords."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self,
        name: str,
        password: str,
        role: str | None = None,
        scope: list[str] | None = None,
        allowed_extensions: list[str] | None = None,
        denied_extensions: list[str] | None = None,
    ) -> bool:
        """Create the user, or set a new password for an existing one.

        Args:
            role: One of :data:`openflr.access.ROLES`; None keeps an existing user's role
                (a new user is a Portal Administrator).
            scope: Machine names or glob patterns a Restore Operator may restore from; None
                keeps the existing scope.
            allowed_extensions: Only these file extensions may be downloaded; None keeps.
            denied_extensions: These file extensions may not be downloaded; None keeps.

        Returns:
            True when the user was created, False when it existed and was updated.

        Raises:
            ValueError: the name, the password or the role is not acceptable.
        """
        if role is not None and role not in ROLES:
            raise ValueError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        if not _USER_NAME.match(name):
            raise ValueError(
                f"invalid user name {name!r}: 1 to 256 characters, without control characters, "
                "'\\', '/', '@' or ':' (those separate domain and account names at logon)"
            )
        if not password:
            raise ValueError("the password is empty")

        password_hash = _hasher.hash(password)
        with self.db.session() as session:
            user = session.get(UserRow, name)
            created = user is None
            if user is None:
                user = UserRow(
                    name=name,
                    password_hash=password_hash,
                    role=role or "PortalAdministrator",
                    scope="[]",
                    allowed_extensions="[]",
                    denied_extensions="[]",
                )
                session.add(user)
            user.password_hash = password_hash
            if role is not None:
                user.role = role
            if scope is not None:
                user.scope = json.dumps([p.strip() for p in scope if p.strip()])
            if allowed_extensions is not None:
                user.allowed_extensions = json.dumps(normalise_extensions(allowed_extensions))
            if denied_extensions is not None:
                user.denied_extensions = json.dumps(normalise_extensions(denied_extensions))
            return created

    def access(self, name: str) -> Access:
        """What a user may do; a user removed since logon may do nothing."""
        with self.db.connection() as connection:
            user = connection.execute(_ACCESS, {"wanted": name}).first()
            if user is None:
                return Access(user=name, role="RestoreOperator")
            return Access(
                user=name,
                role=user.role,
                scope=tuple(json.loads(user.scope or "[]")),
                allowed_extensions=tuple(json.loads(user.allowed_extensions or "[]")),
                denied_extensions=tuple(json.loads(user.denied_extensions or "[]")),
            )

    def count(self) -> int:
        """Return how many users exist."""
        with self.db.session() as session:
            return len(session.scalars(select(UserRow.name)).all())

    def verify(self, name: str, password: str) -> str | None:
        """Return the account name when the password is right, else None."""
        account = normalise_user_name(name)
        with self.db.session() as session:
            user = session.get(UserRow, account)
            stored = user.password_hash if user is not None else _DUMMY_HASH
        try:
            with _CHECKS:
                _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        return account if user is not None else None


class SessionService:
    """Issue, look up and end logon sessions.

    Tokens are 256 random bits; only their SHA-256 is stored, so a copy of the database lets
    nobody in.

    Args:
        db: The database.
        timeout: Idle seconds after which a session ends.
        on_end: Called with the session id whenever a session ends (logoff or expiry), to release
            what the session owned.
    """

    def __init__(
        self,
        db: Database,
        timeout: float,
        on_end: Callable[[str], None],
        audit: AuditLog | None = None,
    ) -> None:
        self.db = db
        self.timeout = timedelta(seconds=timeout)
        self.on_end = on_end
        self.audit = audit
        # Sessions with a request in flight (a long download, say) are not idle, however long
        # ago the request started: ending them would cut the download off.
        self._busy: Counter[str] = Counter()
        self._busy_lock = threading.Lock()

    def hold(self, session_id: str) -> None:
        """Mark a request of the session as in flight."""
        with self._busy_lock:
            self._busy[session_id] += 1

    def release(self, session_id: str, touch: bool) -> None:
        """Mark a request of the session as done; ``touch`` restarts its idle time."""
        with self._busy_lock:
            self._busy[session_id] -= 1
            if self._busy[session_id] <= 0:
                del self._busy[session_id]
        if touch:
            self.touch(session_id)

    def touch(self, session_id: str) -> None:
        """Restart a session's idle time: a request of it just ended, or its FLR folder was read.

        A plain UPDATE: the session may have ended meanwhile (its client logged off as soon as
        the answer reached it), and an ORM update of a row gone fails where this changes nothing.
        """
        with self.db.connection() as connection:
            connection.execute(_TOUCH, {"session": session_id, "when": utcnow()})

    def _is_busy(self, session_id: str) -> bool:
        with self._busy_lock:
            return self._busy.get(session_id, 0) > 0

    def create(self, user_name: str) -> tuple[LogonSession, str]:
        """Start a logon session for an authenticated user.

        Returns:
            The session and its token.
        """
        token = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")
        row = LogonSessionRow(
            id=str(uuid.uuid4()),
            token_hash=_token_hash(token),
            user_name=user_name,
            created=utcnow(),
            last_seen=utcnow(),
        )
        with self.db.session() as session:
            session.add(row)
        log.info("logon session %s started for user %s", row.id, user_name)
        return _to_session(row), token

    def authenticate(self, token: str) -> LogonSession | None:
        """Return the live session of a token and mark it used, or None."""
        wanted = _token_hash(token)
        now = utcnow()
        with self.db.connection() as connection:
            row = connection.execute(_FIND_SESSION, {"wanted": wanted}).first()
            if row is None or not hmac.compare_digest(row.token_hash, wanted):
                return None
            if now - as_utc(row.last_seen) > self.timeout and not self._is_busy(row.id):
                expired_id = row.id
            else:
                # Written at most every _TOUCH_EVERY: a write per listing page or download chunk
                # request buys no precision the idle timeout needs.
                found = _to_session(row)
                if now - as_utc(row.last_seen) > min(_TOUCH_EVERY, self.timeout / 10):
                    connection.execute(_TOUCH, {"session": row.id, "when": now})
                    found = dataclasses.replace(found, last_seen=now)
                return found
        self.end(expired_id, reason="idle timeout")
        return None

    def get(self, session_id: str) -> LogonSession | None:
        """Return a session by its public id."""
        with self.db.session() as session:
            row = session.get(LogonSessionRow, session_id)
            return _to_session(row) if row is not None else None

    def end(self, session_id: str, reason: str, address: str | None = None) -> bool:
        """End a session and release what it owned. Returns False if it did not exist."""
        with self.db.session() as session:
            row = session.get(LogonSessionRow, session_id)
            if row is None:
                return False
            user_name = row.user_name
            session.delete(row)
        log.info("logon session %s ended (%s)", session_id, reason)
        self.on_end(session_id)
        if self.audit is not None:
            self.audit.record(
                "logoff", user=user_name, address=address, session=session_id, outcome=reason
            )
        return True

    def expire_idle(self) -> int:
        """End every session idle for longer than the timeout. Returns how many ended."""
        limit = utcnow() - self.timeout
        with self.db.session() as session:
            ids = [
                row.id
                for row in session.scalars(select(LogonSessionRow)).all()
                if as_utc(row.last_seen) < limit and not self._is_busy(row.id)
            ]
        for session_id in ids:
            self.end(session_id, reason="idle timeout")
        return len(ids)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


# The statements of every request, built once (see Database.connection).
_FIND_SESSION = select(
    LogonSessionRow.id,
    LogonSessionRow.token_hash,
    LogonSessionRow.user_name,
    LogonSessionRow.created,
    LogonSessionRow.last_seen,
).where(LogonSessionRow.token_hash == bindparam("wanted"))
_ACCESS = select(
    UserRow.role,
    UserRow.scope,
    UserRow.allowed_extensions,
    UserRow.denied_extensions,
).where(UserRow.name == bindparam("wanted"))
_TOUCH = (
    update(LogonSessionRow)
    .where(LogonSessionRow.id == bindparam("session"))
    .values(last_seen=bindparam("when"))
)


def _to_session(row: Any) -> LogonSession:
    """A session from its row: an ORM object or a row of :data:`_FIND_SESSION`."""
    return LogonSession(
        id=row.id,
        user_name=row.user_name,
        created=as_utc(row.created),
        last_seen=as_utc(row.last_seen),
    )
