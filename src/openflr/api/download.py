"""Downloads: a guest file as it is (with HTTP ranges), a guest folder as a streamed zip.

Streams stay streams: a file goes out in 1 MiB reads, a zip is written entry by entry into a small
buffer that is handed to the client as soon as it fills. Nothing holds a whole file in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import zipfile
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from openflr.api.errors import ApiError
from openflr.api.zerocopy import ABORT, HOLD_READING, ZERO_COPY, SendCut
from openflr.engine import GuestEntry, GuestFileSystem
from openflr.engine.errors import EngineError, GuestFileUnreadable
from openflr.engine.extents import FileRun, StreamRun, ZeroRun
from openflr.engine.guest import GuestFileStream

log = logging.getLogger(__name__)

__all__ = ["ClosingStreamingResponse", "file_response", "folder_response"]

CHUNK = 1 << 20
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.I)


def content_disposition(name: str) -> str:
    """An attachment header that carries any name: ASCII fallback plus RFC 5987 UTF-8 form."""
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;' else "_" for c in name)
    encoded = quote(name.encode("utf-8", "surrogateescape"), safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """Return the inclusive byte range a ``Range`` header asks for, or None for the whole file.

    Several ranges at once are answered with the whole file, as RFC 9110 allows, and so is any
    range of an empty file (no range of it can be satisfied, and "bytes 0--1/0" is no answer).

    Raises:
        ApiError: 416 when the range lies outside the file.
    """
    if not header or "," in header or size == 0:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.groups()
    if first == "" and last == "":
        return None
    if first == "":
        length = int(last)
        if length == 0:
            raise _unsatisfiable(size)
        return max(size - length, 0), size - 1
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range is ignored (RFC 9110 14.2): the whole file
    end = min(int(last), size - 1) if last else size - 1
    if start >= size:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(
        416,
        f"The requested range is not within the file's {size} bytes.",
        {"Content-Range": f"bytes */{size}"},
    )


def file_response(
    files: GuestFileSystem,
    entry: GuestEntry,
    range_header: str | None,
    head: bool,
    stopped: Callable[[], bool] | None = None,
) -> Response:
    """Stream one guest file.

    Args:
        stopped: Turns true when the download must end (its mount was released): the
            connection is then closed where the bytes have got to.
    """
    size = entry.size
    wanted = parse_range(range_header, size)
    start, end = wanted if wanted is not None else (0, size - 1)
    length = end - start + 1 if size else 0

    # A stream's name holds a colon, which no Windows file name may: "file.txt_stream".
    name = entry.name if entry.stream is None else f"{entry.file_name}_{entry.stream}"
    headers = {
        "Content-Disposition": content_disposition(name),
        "Accept-Ranges": "bytes",
        "Content-Length": str(length),
    }
    if entry.mtime is not None:
        headers["Last-Modified"] = datetime.fromtimestamp(entry.mtime, UTC).strftime(
            "%a, %d %b %Y %H:%M:%S GMT"
        )
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"

    try:
        stream = files.open(entry.path)  # also for HEAD: it fails where GET would
    except EngineError as exc:
        raise ApiError(500, str(exc)) from exc
    if head:
        stream.close()
        return Response(status_code=status, headers=headers, media_type="application/octet-stream")

    return GuestFileResponse(
        stream,
        start,
        length,
        stopped=stopped,
        status_code=status,
        headers=headers,
        media_type="application/octet-stream",
    )


class CutShort(Exception):
    """A response body that cannot be completed: the connection is to be closed.

    Attributes:
        outcome: What the audit calls it: ``"failed"`` (the data could not be read) or
            ``"interrupted"`` (the mount was released).
    """

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class ClosingStreamingResponse(StreamingResponse):
    """A streamed response that ends cleanly however it ends, and says how it ended.

    Its body is closed when the response ends, not whenever the collector gets to it (what the
    body does at its end, closing the guest file, then happened late or never). A body that
    raises :class:`CutShort` has the connection closed (``openflr.abort``) instead of a short
    body announced as complete. ``on_end``, when set, is awaited last with the body bytes the
    client was sent and the outcome: ``"complete"``, ``"interrupted"`` (the client went away,
    or the mount was released) or ``"failed"`` (the data could not be read).
    """

    on_end: Callable[[int, str], Awaitable[None]] | None = None
    log_name = "response"
    bytes_sent = 0
    _extensions: dict[str, Any] = {}

    def __init__(
        self, content: Any, *, stopped: Callable[[], bool] | None = None, **kwargs: Any
    ) -> None:
        # Turns true when the response must end where it has got to (its mount was released,
        # the server is stopping); looked at between chunks and, while a send waits, four times
        # a second.
        self.stopped: Callable[[], bool] = stopped or (lambda: False)
        super().__init__(content, **kwargs)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self._extensions = scope.get("extensions") or {}
        await super().__call__(scope, receive, send)

    async def _watch(self, send: Any) -> None:
        """Drop the connection once ``stopped`` turns true, even while a send waits on a client
        that reads nothing."""
        while not self.stopped():
            await asyncio.sleep(0.25)
        await send({"type": ABORT})

    async def stream_response(self, send: Any) -> None:
        outcome = "interrupted"
        watcher = None
        if ABORT in self._extensions:
            watcher = asyncio.ensure_future(self._watch(send))
        try:
            if HOLD_READING in self._extensions:
                await send({"type": HOLD_READING})
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for chunk in self.body_iterator:
                await self.send_chunk(send, chunk)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            outcome = "complete"
        except SendCut as exc:  # the connection is closed already
            outcome = "interrupted"
            log.debug("%s: response cut (%s): %s", self.log_name, exc.reason, exc)
            if exc.reason == "source":
                outcome = "failed"
                log.warning("%s: the image's data ends early: %s", self.log_name, exc)
        except CutShort as exc:
            outcome = exc.outcome
            if ABORT in self._extensions:
                await send({"type": ABORT})
            # Elsewhere the server sees the response end short of its Content-Length.
        except OSError as exc:  # a send found the client gone
            log.debug("response ended: %s", exc)
        finally:
            if watcher is not None:
                watcher.cancel()
            with anyio.CancelScope(shield=True):
                close = getattr(self.body_iterator, "aclose", None)
                if close is not None:
                    await close()
                if self.on_end is not None:
                    await self.on_end(self.bytes_sent, outcome)

    async def send_chunk(self, send: Any, chunk: Any) -> None:
        if isinstance(chunk, str):
            chunk = chunk.encode(self.charset)
        await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self.bytes_sent += len(chunk)


class GuestFileResponse(ClosingStreamingResponse):
    """A guest file's bytes, from ``start`` for ``length`` bytes.

    Where the server offers zero-copy sends (:mod:`openflr.api.zerocopy`), the bytes that lie
    as they are in an image file of the host are sent from it by the kernel, and only the rest
    (zeros, compressed data, layers that cannot be mapped) is read here; elsewhere every byte is
    read here, one chunk ahead of the one being sent.
    """

    def __init__(
        self,
        stream: GuestFileStream,
        start: int,
        length: int,
        **kwargs: Any,
    ) -> None:
        self.log_name = stream.guest_path
        # The body yields FileRuns too, which send_chunk below sends.
        super().__init__(self._body(stream, start, length), **kwargs)

    @property
    def zero_copy(self) -> bool:
        """Whether the server sends file runs itself (known once the response is called)."""
        return ZERO_COPY in self._extensions

    async def send_chunk(self, send: Any, chunk: Any) -> None:
        if self.stopped():
            raise CutShort("interrupted", "the mount was released during the download")
        if not isinstance(chunk, FileRun):
            await super().send_chunk(send, chunk)
            return
        message = {
            "type": ZERO_COPY,
            "file": chunk.file,
            "offset": chunk.offset,
            "count": chunk.length,
            "more_body": True,
            "openflr.stop": self.stopped,
        }
        try:
            await send(message)
        finally:
            self.bytes_sent += message.get("openflr.sent", 0)

    async def _body(
        self, stream: GuestFileStream, start: int, length: int
    ) -> AsyncIterator[bytes | memoryview | FileRun]:
        path = stream.guest_path
        position, end = start, start + length
        try:
            if not self.zero_copy:
                reads = read_ahead(_chunks(stream, start, length))
                async with contextlib.aclosing(reads):
                    async for chunk in reads:
                        yield chunk
                        position += len(chunk)
            while self.zero_copy and position < end:
                runs = await run_in_threadpool(stream.runs, position, min(_WINDOW, end - position))
                if not runs:
                    break
                for run in runs:
                    if isinstance(run, FileRun):
                        yield run
                    elif isinstance(run, ZeroRun):
                        for done in range(0, run.length, CHUNK):
                            yield _ZEROS[: min(CHUNK, run.length - done)]
                    else:
                        reads = read_ahead(_run_chunks(stream, run))
                        async with contextlib.aclosing(reads):
                            async for chunk in reads:
                                yield chunk
                    position += run.length
        except EngineError as exc:
            log.warning("%s: read failed during download: %s", path, exc)
            raise CutShort("failed", str(exc)) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await run_in_threadpool(stream.close)
        if position < end:
            # Closing the connection short of Content-Length makes the client see a broken
            # download instead of a file silently cut or padded.
            log.warning("%s: data ends %d bytes early", path, end - position)
            raise CutShort("failed", f"{path}: data ends {end - position} bytes early")


# A file is mapped to runs this much at a time: few maps for a large file, little held at once.
_WINDOW = 256 << 20
_ZEROS = memoryview(bytes(CHUNK))


def _chunks(stream: GuestFileStream, start: int, length: int) -> Iterator[bytes]:
    """``length`` bytes of the file from ``start``, in reads of up to :data:`CHUNK`; fewer
    where the data ends early."""
    stream.seek(start)
    remaining = length
    while remaining > 0:
        data = stream.read(min(CHUNK, remaining))
        if not data:
            return
        remaining -= len(data)
        yield data


def _run_chunks(stream: GuestFileStream, run: StreamRun) -> Iterator[bytes]:
    """A run that only its stream can read, in reads of up to :data:`CHUNK`."""
    for done in range(0, run.length, CHUNK):
        data = stream.read_run(run, done, min(CHUNK, run.length - done))
        if len(data) != min(CHUNK, run.length - done):
            raise GuestFileUnreadable(stream.guest_path, "its data ends early")
        yield data


async def read_ahead(chunks: Iterator[bytes]) -> AsyncGenerator[bytes]:
    """Yield the chunks of a blocking iterator, reading the next one while this one is sent.

    Reading a chunk (in a worker thread) and sending it (on the event loop) then overlap instead
    of taking turns; one chunk is read ahead, so a download holds at most two in memory besides
    what the socket has not taken yet.
    """
    done = object()
    pending = asyncio.ensure_future(run_in_threadpool(next, chunks, done))
    try:
        while True:
            chunk = await pending
            if chunk is done:
                return
            pending = asyncio.ensure_future(run_in_threadpool(next, chunks, done))
            yield chunk  # type: ignore[misc]
    finally:
        # A client that went away leaves a read in flight: let it end before closing the
        # iterator (which closes the guest file), even while this task is being cancelled.
        with anyio.CancelScope(shield=True):
            try:
                await pending
            except Exception:
                pass
            await run_in_threadpool(chunks.close)  # type: ignore[attr-defined]


class _Sink:
    """A write-only, unseekable file for :mod:`zipfile` whose bytes are taken out as they come."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self.offset = 0

    def write(self, data: bytes) -> int:
        if data:
            self._parts.append(bytes(data))
            self._size += len(data)
            self.offset += len(data)
        return len(data)

    def tell(self) -> int:
        return self.offset

    def flush(self) -> None:
        pass

    def seekable(self) -> bool:
        return False

    def pending(self) -> int:
        return self._size

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        self._size = 0
        return data


def folder_response(
    files: GuestFileSystem,
    folder: GuestEntry,
    zip_name: str,
    head: bool = False,
    may_download: Callable[[str], bool] | None = None,
    stopped: Callable[[], bool] | None = None,
) -> Response:
    """Stream a guest folder as a zip (stored, zip64 where sizes need it).

    Nothing below the folder stops the download: files and folders that cannot be read, and
    names a zip cannot carry as they are, are listed with the reason in ``openflr-errors.txt``
    at the end of the zip.
    """
    try:
        files.list_folder(folder.path)
    except EngineError as exc:
        raise ApiError(500, str(exc)) from exc
    headers = {"Content-Disposition": content_disposition(zip_name)}
    if head:
        return Response(status_code=200, headers=headers, media_type="application/zip")
    prefix_length = len(folder.path.rstrip("/")) + 1

    def chunks() -> Iterator[bytes]:
        sink = _Sink()
        errors: list[str] = []
        archive = zipfile.ZipFile(  # type: ignore[call-overload]
            sink, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True
        )
        started = time.monotonic()
        count = 0
        for entry in _walk(files, folder.path, errors):
            name = _zip_name(entry.path[prefix_length:], errors)
            try:
                if entry.kind == "dir":
                    info = zipfile.ZipInfo(name + "/", _zip_time(entry.mtime))
                    info.external_attr = 0o40755 << 16 | 0x10
                    archive.writestr(info, b"")
                elif entry.kind == "file":
                    if may_download is not None and not may_download(entry.name):
                        errors.append(f"{name}: left out: its file extension is not allowed")
                        continue
                    yield from _add_file(archive, files, entry, name, sink, errors)
                    count += 1
                else:
                    # TODO: store symbolic links as links in the zip instead of leaving them out.
                    errors.append(f"{name}: symbolic link, not followed")
            except Exception as exc:  # one bad entry must not end the whole download
                log.warning("zip of %r: entry %r failed: %s", folder.path, name, exc)
                errors.append(f"{name}: {type(exc).__name__}: {exc}")
            yield from _drain(sink, force=False)
        if errors:
            archive.writestr("openflr-errors.txt", "\n".join(errors) + "\n")
        archive.close()
        yield from _drain(sink, force=True)
        log.info(
            "zip of %r: %d files, %d bytes, %d errors, %.2f s",
            folder.path,
            count,
            sink.offset,
            len(errors),
            time.monotonic() - started,
        )

    return ClosingStreamingResponse(
        read_ahead(chunks()), stopped=stopped, media_type="application/zip", headers=headers
    )


def _walk(files: GuestFileSystem, path: str, errors: list[str]) -> Iterator[GuestEntry]:
    """Every entry below a folder, depth first; a folder that cannot be read is noted, skipped."""
    try:
        entries = files.list_folder(path)
    except EngineError as exc:
        errors.append(f"{path}: {exc}")
        return
    for entry in entries:
        yield entry
        if entry.kind == "dir":
            yield from _walk(files, entry.path, errors)


_SURROGATES = re.compile("[\ud800-\udfff]")


def _zip_name(name: str, errors: list[str]) -> str:
    """A name a zip can carry: UTF-8, with forward slashes only as folder separators."""
    safe = _SURROGATES.sub("\ufffd", name).replace("\\", "_")
    if safe != name:
        shown = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        errors.append(f'{safe}: stored under this name; the guest\'s name is "{shown}"')
    return safe


def _drain(sink: _Sink, force: bool) -> Iterator[bytes]:
    if sink.pending() >= CHUNK or (force and sink.pending()):
        yield sink.take()


def _zip_time(mtime: float | None) -> tuple[int, int, int, int, int, int]:
    moment = datetime.fromtimestamp(mtime or 315532800, UTC)
    if moment.year < 1980:
        moment = datetime(1980, 1, 1, tzinfo=UTC)
    if moment.year > 2107:
        moment = datetime(2107, 12, 31, 23, 59, 58, tzinfo=UTC)
    return (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


def _add_file(
    archive: zipfile.ZipFile,
    files: GuestFileSystem,
    entry: GuestEntry,
    name: str,
    sink: _Sink,
    errors: list[str],
) -> Iterator[bytes]:
    """Write one file into the zip, yielding the zip's bytes as they fill a chunk."""
    try:
        stream = files.open(entry.path)
    except EngineError as exc:
        errors.append(f"{name}: {exc}")
        return

    info = zipfile.ZipInfo(name, _zip_time(entry.mtime))
    info.file_size = entry.size
    info.compress_type = zipfile.ZIP_STORED
    info.external_attr = 0o100644 << 16
    try:
        with archive.open(info, mode="w", force_zip64=entry.size >= zipfile.ZIP64_LIMIT) as out:
            remaining = entry.size
            while remaining > 0:
                data = stream.read(min(CHUNK, remaining))
                if not data:
                    errors.append(f"{name}: data ends {remaining} bytes early")
                    break
                out.write(data)
                remaining -= len(data)
                yield from _drain(sink, force=False)
    except EngineError as exc:
        errors.append(f"{name}: {exc}")
    finally:
        stream.close()
