"""Zero-copy sends: file bytes go from the page cache to the client's socket without Python.

ASGI describes this as the ``http.response.zerocopysend`` extension: a server that offers it in
``scope["extensions"]`` takes ``{"type": "http.response.zerocopysend", "file", "offset", "count",
"more_body"}`` messages and sends ``count`` bytes of the file from ``offset`` itself. uvicorn does
not offer it. :class:`ZeroCopySend` wraps the application and offers it where the connection
allows: uvicorn's ``httptools`` protocol over plain TCP (TLS needs the bytes in user space).

A send waits until the server has written everything it holds for the connection (the status line
and headers), then a worker thread calls ``sendfile(2)`` on its own descriptor of the socket until
the bytes are out, and the server is told that many bytes of the response's ``Content-Length`` are
sent. Where the connection is anything else, the extension is not offered and responses stream
as before.

Measured with ``bench/run.py`` on the 2-core machine: a 1 GiB download ran at 0.26 to 0.95 of a
bare ``sendfile`` server's speed while every byte crossed the event loop (depending on what else
the cores ran), and at 0.74 to 1.06 with zero-copy sends, the server using 0.3 to 0.5 of a core
instead of more than one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

__all__ = ["ZERO_COPY", "ZeroCopySend"]

ZERO_COPY = "http.response.zerocopysend"

# A client that takes no byte for this long is given up (the socket is closed).
_STALL_SECONDS = 300.0
_POLL_MS = 250


class ZeroCopySend:
    """ASGI middleware that offers ``http.response.zerocopysend`` on plain uvicorn connections.

    Args:
        app: The application; it must be given to the server as it is wrapped here, outside
            every other middleware, so that the ``send`` this sees is the server's own.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        cycle = getattr(send, "__self__", None)
        if scope["type"] != "http" or scope.get("scheme") != "http" or not _offers(cycle):
            await self.app(scope, receive, send)
            return
        scope["extensions"] = {**(scope.get("extensions") or {}), ZERO_COPY: {}}

        async def send_zero_copy(message: Any) -> None:
            if message["type"] != ZERO_COPY:
                await send(message)
                return
            await _send_file(cycle, message)
            if not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app(scope, receive, send_zero_copy)


def _offers(cycle: Any) -> bool:
    """Whether ``cycle`` is a uvicorn ``httptools`` request cycle on a plain TCP socket."""
    if type(cycle).__module__ != "uvicorn.protocols.http.httptools_impl":
        return False
    transport = getattr(cycle, "transport", None)
    if transport is None or not hasattr(cycle, "expected_content_length"):
        return False
    if transport.get_extra_info("sslcontext") or transport.get_extra_info("ssl_object"):
        return False
    sock = transport.get_extra_info("socket")
    try:
        return sock is not None and sock.fileno() >= 0
    except (OSError, ValueError):
        return False


async def _send_file(cycle: Any, message: Any) -> None:
    """Send a zero-copy message's bytes on ``cycle``'s connection.

    Raises:
        OSError: the bytes could not all be sent (the client went away, or the file ends
            early); the connection is closed, as the server itself closes one whose response
            cannot be completed: the client sees a cut response, never one padded or shifted.
    """
    transport = cycle.transport
    count = int(message["count"])
    if count > cycle.expected_content_length:
        raise RuntimeError("Response content longer than Content-Length")
    # What the server holds for the connection (the headers) goes out first.
    while transport.get_write_buffer_size() and not _gone(cycle):
        await asyncio.sleep(0.001)
    if _gone(cycle):
        raise ConnectionResetError("the client closed the connection")
    out = os.dup(transport.get_extra_info("socket").fileno())
    try:
        sent = await run_in_threadpool(
            _sendfile, out, message["file"].fileno(), int(message["offset"]), count,
            lambda: bool(cycle.disconnected),
        )  # fmt: skip
    except OSError as exc:
        log.debug("zero-copy send ended: %s", exc)
        sent = -1
    finally:
        os.close(out)
    if sent != count:
        transport.close()
        raise ConnectionAbortedError(f"zero-copy send ended after {max(sent, 0)} of {count} bytes")
    cycle.expected_content_length -= count


def _gone(cycle: Any) -> bool:
    return bool(cycle.disconnected) or cycle.transport.is_closing()


def _sendfile(out: int, source: int, offset: int, count: int, gone: Callable[[], bool]) -> int:
    """Send ``count`` bytes of ``source`` from ``offset`` to the non-blocking socket ``out``.

    Returns the bytes sent: fewer than ``count`` where the source ends early, the client went
    away, or took nothing for :data:`_STALL_SECONDS`.
    """
    sent = 0
    poller = select.poll()
    poller.register(out, select.POLLOUT)
    last_progress = time.monotonic()
    while sent < count:
        try:
            n = os.sendfile(out, source, offset + sent, count - sent)
        except BlockingIOError:
            if not poller.poll(_POLL_MS):
                if gone() or time.monotonic() - last_progress > _STALL_SECONDS:
                    return sent
            continue
        if n == 0:
            return sent  # the source file ends here
        sent += n
        last_progress = time.monotonic()
    return sent
