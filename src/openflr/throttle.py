"""Slowing down password guessing: failed logons per user name and per address.

The first few failures cost nothing (people mistype). After that, each further failure doubles
the time the next attempt for that user or from that address must wait, up to a cap; an attempt
inside that time is answered 429 with ``Retry-After`` without checking the password at all. The
right password after the wait always works, so a burst of wrong passwords never locks the real
user out for longer than the cap, and a guesser gets a handful of tries a minute, not thousands.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

__all__ = ["LogonThrottle"]

_FREE_FAILURES = 5
_FIRST_DELAY = 0.5
_FORGET_AFTER = 900.0


@dataclass
class _Record:
    failures: int = 0
    last_failure: float = 0.0


class LogonThrottle:
    """Failed-logon bookkeeping, in memory.

    Args:
        cap: The longest wait, in seconds, however many failures there were.
    """

    def __init__(self, cap: float = 30.0) -> None:
        self.cap = cap
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def wait_needed(self, *keys: str) -> float:
        """Seconds to wait before the next attempt for these keys (0 when it may go ahead)."""
        now = time.monotonic()
        with self._lock:
            return max((self._wait(key, now) for key in keys), default=0.0)

    def failed(self, *keys: str) -> None:
        """Count a failed attempt against each key."""
        now = time.monotonic()
        with self._lock:
            for key in keys:
                record = self._records.setdefault(key, _Record())
                if now - record.last_failure > _FORGET_AFTER:
                    record.failures = 0
                record.failures += 1
                record.last_failure = now
            if len(self._records) > 100_000:  # bounded memory under a flood of random names
                self._forget_old(now)

    def succeeded(self, *keys: str) -> None:
        """Forget the failures of these keys."""
        with self._lock:
            for key in keys:
                self._records.pop(key, None)

    def _wait(self, key: str, now: float) -> float:
        record = self._records.get(key)
        if record is None or record.failures < _FREE_FAILURES:
            return 0.0
        if now - record.last_failure > _FORGET_AFTER:
            return 0.0
        delay = min(self.cap, _FIRST_DELAY * 2 ** (record.failures - _FREE_FAILURES))
        return float(max(0.0, record.last_failure + delay - now))

    def _forget_old(self, now: float) -> None:
        for key in [k for k, r in self._records.items() if now - r.last_failure > self.cap]:
            del self._records[key]
