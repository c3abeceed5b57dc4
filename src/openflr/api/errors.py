"""Errors raised where the fact is known and rendered in one place, in the API's ``Error`` shape."""

from __future__ import annotations

__all__ = ["ApiError"]


class ApiError(Exception):
    """An HTTP error with the message the client reads in ``Error.Message``.

    Args:
        status: The HTTP status code.
        message: A sentence that says what went wrong and, where it helps, what to do.
        headers: Extra response headers (``WWW-Authenticate`` on 401, ``Content-Range`` on 416).
    """

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        body_kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        # The format of the request body, where known: it picks the error's format when the
        # client sent no Accept of its own.
        self.body_kind = body_kind
