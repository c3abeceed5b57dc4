"""Zero-copy sends: file bytes go from the page cache to the client's socket without Python.

ASGI describes this as the ``http.response.zerocopysend`` extension: a server that offers it in
``scope["extensions"]`` takes ``{"type": "http.response.zerocopysend", "file", "offset", "count",
"more_body"}`` messages and sends ``count`` bytes of the file from ``offset`` itself. uvicorn does
not offer it. :class:`ZeroCopySend` wraps the application and offers it where the connection
allows: uvicorn's ``httptools`` protocol over plain TCP (TLS needs the bytes in user space).

A send waits until the server has written what it holds for the connection (the status line and
headers, or body bytes sent the usual way), then calls ``sendfile(2)`` on a descriptor of the
socket of its own, in a worker thread of its own pool (a download never takes a thread the
API's requests need) for as long as the socket takes bytes; while the client's window is full it
waits on the event loop, holding no thread. Afterwards the server is told that many bytes of the
response's ``Content-Length`` are sent. Two keys beside the extension's own: ``openflr.stop``,
a callable that ends the send when it turns true (the mount was released), and
``openflr.sent``, which the send sets to the bytes it sent.

It also offers, on every uvicorn ``httptools`` connection, TLS too, ``openflr.abort``: a
response that cannot be completed (the image's data ends early) drops the connection, so that
the client sees a cut response, never one padded, and the server logs no error of its own about
it; and ``openflr.hold_reading``: the connection is not read until the response is complete, so
that the server's answer to bytes the client sends meanwhile (a 400 for garbage) never lands
among the body's bytes.

Measured with ``bench/run.py`` on the 2-core machine: a 1 GiB download ran at 0.26 to 0.95 of a
bare ``sendfile`` server's speed while every byte crossed the event loop (depending on what else
the cores ran), and at 0.74 to 1.06 with zero-copy sends, the server using 0.3 to 0.5 of a core
instead of more than one.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import select
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

log = logging.getLogger(__name__)

__all__ = ["ABORT", "HOLD_READING", "ZERO_COPY", "SendCut", "ZeroCopySend"]

ZERO_COPY = "http.response.zerocopysend"
ABORT = "openflr.abort"
HOLD_READING = "openflr.hold_reading"

# A client that takes no byte for this long is given up (the connection is closed).
STALL_SECONDS = 300.0
# How long a sending thread waits for a full socket to take bytes before it hands the wait to
# the event loop: long enough that a client reading at full speed keeps its thread, short
# enough that clients that read slowly or not at all hold none.
_PATIENCE_MS = 20
# Threads sending at once; more downloads than this wait their turn, the API never does.
_SENDERS = 32
_limiter: anyio.CapacityLimiter | None = None


class SendCut(OSError):
    """A zero-copy send ended short of its count; the connection is closed.

    Attributes:
        reason: ``"client"`` (it went away or stopped reading), ``"source"`` (the file ends
            before the bytes do: a damaged image) or ``"stopped"`` (``openflr.stop`` turned
            true).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ZeroCopySend:
    """ASGI middleware that offers zero-copy sends (plain TCP) and aborts on uvicorn.

    Args:
        app: The application; it must be given to the server as it is wrapped here, outside
            every other middleware, so that the ``send`` this sees is the server's own.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        cycle: Any = getattr(send, "__self__", None)
        if scope["type"] != "http" or not _is_uvicorn_cycle(cycle):
            await self.app(scope, receive, send)
            return
        offered: dict[str, Any] = {ABORT: {}, HOLD_READING: {}}
        if scope.get("scheme") == "http" and _plain_socket(cycle.transport):
            offered[ZERO_COPY] = {}
        scope["extensions"] = {**(scope.get("extensions") or {}), **offered}

        held = False

        async def send_extended(message: Any) -> None:
            nonlocal held
            kind = message["type"]
            if kind == ABORT:
                await _close(cycle)
            elif kind == HOLD_READING:
                # A long response: no request the client sends meanwhile is read (and no 400
                # of the server's own for a bad one lands among the body's bytes) until it ends.
                if cycle.transport.is_reading():
                    cycle.transport.pause_reading()
                    held = True
            elif kind == ZERO_COPY and ZERO_COPY in offered:
                await _send_file(cycle, message)
                if not message.get("more_body", False):
                    await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                await send(message)
            if held and cycle.response_complete:
                held = False
                if not cycle.transport.is_closing():
                    cycle.transport.resume_reading()

        try:
            await self.app(scope, receive, send_extended)
        finally:
            if held and not cycle.transport.is_closing():
                cycle.transport.resume_reading()


def _is_uvicorn_cycle(cycle: Any) -> bool:
    return (
        type(cycle).__module__ == "uvicorn.protocols.http.httptools_impl"
        and getattr(cycle, "transport", None) is not None
        and hasattr(cycle, "expected_content_length")
    )


def _plain_socket(transport: Any) -> bool:
    """Whether the transport writes to its socket as it is (no TLS in between)."""
    if transport.get_extra_info("sslcontext") or transport.get_extra_info("ssl_object"):
        return False
    sock = transport.get_extra_info("socket")
    try:
        return sock is not None and sock.fileno() >= 0
    except (OSError, ValueError):
        return False


def _gone(cycle: Any) -> bool:
    return bool(cycle.disconnected) or cycle.transport.is_closing()


async def _close(cycle: Any) -> None:
    """Drop the connection and wait (at most a second) until the server has seen it dropped.

    An abort, not a close: a TLS close first sends its closing message, and the server would
    find the response neither complete nor its connection lost, which it logs as an error.
    """
    cycle.transport.abort()
    for _ in range(200):
        if cycle.disconnected or cycle.response_complete:
            return
        await asyncio.sleep(0.005)


async def _send_file(cycle: Any, message: Any) -> None:
    """Send a zero-copy message's bytes on ``cycle``'s connection.

    Raises:
        SendCut: the bytes could not all be sent; the connection is closed, as the server
            itself closes one whose response cannot be completed.
    """
    transport = cycle.transport
    count = int(message["count"])
    stop: Callable[[], bool] = message.get("openflr.stop") or (lambda: False)
    message["openflr.sent"] = 0
    if count > cycle.expected_content_length:
        raise RuntimeError("Response content longer than Content-Length")

    # What the server holds for the connection goes out first; a client that takes nothing is
    # looked at less and less often, and given up after STALL_SECONDS.
    waited, pause = 0.0, 0.001
    while transport.get_write_buffer_size() and not _gone(cycle) and not stop():
        if waited > STALL_SECONDS:
            transport.abort()
            raise SendCut("client", "the client took no byte for too long")
        await asyncio.sleep(pause)
        waited += pause
        pause = min(pause * 2, 0.1)

    sent, reason = 0, ""
    out = os.dup(transport.get_extra_info("socket").fileno())
    try:
        try:
            source = message["file"].fileno()
        except (OSError, ValueError):  # the image file was closed: nothing to send from
            source, reason = -1, "source"
        offset = int(message["offset"])
        while sent < count and not reason:
            if _gone(cycle):
                reason = "client"
            elif stop():
                reason = "stopped"
            if reason:
                break
            n, state = await anyio.to_thread.run_sync(
                _send_burst, out, source, offset + sent, count - sent, stop, limiter=_senders()
            )
            sent += n
            if state == "full":
                reason = await _writable(out, cycle, stop)
            elif state in ("client", "source", "stopped"):
                reason = state
    finally:
        os.close(out)
        message["openflr.sent"] = sent
    if sent != count:
        # Dropped, and said so, with no await between: the server sees the connection lost
        # at the next turn of the loop and may cancel this response's task there.
        transport.abort()
        raise SendCut(reason or "client", f"zero-copy send ended after {sent} of {count} bytes")
    cycle.expected_content_length -= count


def _senders() -> anyio.CapacityLimiter:
    global _limiter
    if _limiter is None:
        _limiter = anyio.CapacityLimiter(_SENDERS)
    return _limiter


def _send_burst(
    out: int, source: int, offset: int, count: int, stop: Callable[[], bool]
) -> tuple[int, str]:
    """Send from ``source`` at ``offset`` to the non-blocking socket ``out`` while it takes bytes.

    Returns the bytes sent and why it stopped: ``"done"``, ``"full"`` (the socket took nothing
    for :data:`_PATIENCE_MS`), ``"client"`` (the connection broke), ``"source"`` (the file
    ended) or ``"stopped"``.
    """
    sent = 0
    poller = select.poll()
    poller.register(out, select.POLLOUT)
    while sent < count:
        if stop():
            return sent, "stopped"
        try:
            n = os.sendfile(out, source, offset + sent, count - sent)
        except BlockingIOError:
            if not poller.poll(_PATIENCE_MS):
                return sent, "full"
            continue
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN):
                return sent, "client"
            log.warning("sendfile from the image failed: %s", exc)
            return sent, "source"
        if n == 0:
            return sent, "source"
        sent += n
    return sent, "done"


async def _writable(out: int, cycle: Any, stop: Callable[[], bool]) -> str:
    """Wait on the event loop until the socket takes bytes again: ``""``; else why not:
    ``"client"`` (it went away, or took nothing for :data:`STALL_SECONDS`) or ``"stopped"``."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_writer(out, ready.set)
    try:
        deadline = time.monotonic() + STALL_SECONDS
        while not ready.is_set():
            if stop():
                return "stopped"
            if _gone(cycle) or time.monotonic() > deadline:
                return "client"
            with anyio.move_on_after(0.25):
                await ready.wait()
        return ""
    finally:
        loop.remove_writer(out)
