"""Where a guest file's bytes lie in the backup files, so that a download can send them unread.

A guest file is read through a stack of streams: the file system's runlist over a partition's
range of the disk, over the container's block map, over the image file on the host. Where every
layer of that stack is one this module knows, a range of the file maps to runs of three kinds:

- :class:`FileRun`: bytes that lie as they are in a host file (the kernel can send them from
  the page cache to the socket: ``sendfile``);
- :class:`ZeroRun`: bytes that read as zeros (a sparse run, a block the image never stored);
- :class:`StreamRun`: bytes only a stream can make (a compressed cluster, a Veeam block, a
  layer this module does not know), read through that stream as before.

The runs of a range hold exactly the bytes a read of that range gives: each mapper below follows
its stream's own ``_read``. Where a layer would give fewer bytes than asked (a file system whose
runs end early, a range past a partition's end), the whole range is left to the stream, so that
such damage is handled in one place, the stream's read.

Mapping reads block maps through the shared image file handles: callers hold the restore point's
lock while mapping, as they do while reading. Sending a :class:`FileRun` needs no lock: it reads
at an offset (``pread`` semantics) and moves no shared position.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dissect.target.containers.raw import RawContainer
from dissect.target.containers.vhd import VhdContainer
from dissect.target.volume import Volume as TargetVolume
from dissect.util.stream import (
    BufferedStream,
    MappingStream,
    RangeStream,
    RelativeStream,
    RunlistStream,
)

__all__ = ["FileRun", "Run", "StreamRun", "ZeroRun", "block_runs", "map_runs"]


@dataclass(frozen=True, slots=True)
class FileRun:
    """``length`` bytes at ``offset`` of a host file, as they are (``file`` has ``fileno()``)."""

    file: Any
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class ZeroRun:
    """``length`` bytes that read as zeros."""

    length: int


@dataclass(frozen=True, slots=True)
class StreamRun:
    """``length`` bytes at ``offset`` of a stream, read through it."""

    stream: Any
    offset: int
    length: int


Run = FileRun | ZeroRun | StreamRun


class _ShortMap(Exception):
    """A layer gives fewer bytes than asked: the range is left to the stream."""


def map_runs(stream: Any, offset: int, length: int) -> list[Run]:
    """The runs that hold ``length`` bytes of ``stream`` from ``offset``.

    ``length`` is cut at the stream's size. The caller holds the lock that guards the stream's
    layers.
    """
    size = getattr(stream, "size", None)
    if isinstance(size, int) and size >= 0:
        length = max(0, min(length, size - offset))
    if length <= 0:
        return []
    try:
        return _merge(_map(stream, offset, length))
    except _ShortMap:
        return [StreamRun(stream, offset, length)]


def _map(stream: Any, offset: int, length: int) -> list[Run]:
    """The runs of exactly ``length`` bytes of ``stream`` from ``offset``, or :class:`_ShortMap`."""
    if length <= 0:
        return []
    size = getattr(stream, "size", None)
    if isinstance(size, int) and size > 0 and offset + length > size:
        raise _ShortMap  # every layer reads short past its end (a host file has no size here)
    mapper = _MAPPERS.get(type(stream))
    if mapper is not None:
        return mapper(stream, offset, length)
    own = getattr(stream, "map_runs", None)
    if callable(own):
        runs: list[Run] = own(offset, length)
        if sum(run.length for run in runs) != length:
            raise _ShortMap
        return runs
    return [StreamRun(stream, offset, length)]


def block_runs(
    offset: int, length: int, block_size: int, locate: Callable[[int], Any]
) -> list[Run]:
    """The runs of a disk an image stores in blocks (VHD, VHDX, QCOW2 clusters), block by block.

    ``locate(block)`` says where a block lies: ``(file, offset of the block in it)`` for one
    stored as it is, ``None`` for one that reads as zeros, or else the stream that reads it, at
    the disk's own offsets (a compressed cluster, a block of a parent disk).
    """
    runs: list[Run] = []
    end = offset + length
    # The extent the blocks so far make, grown while the next block follows on: a gigabyte is
    # 16,384 clusters of 64 KiB, and most lie one after the other in the image file.
    kind, target, start, size = "", None, 0, 0
    while offset < end:
        block, inside = divmod(offset, block_size)
        take = min(end, (block + 1) * block_size) - offset
        where = locate(block)
        if where is None:
            if kind != "zero":
                runs.extend(_extent(kind, target, start, size))
                kind, size = "zero", 0
        elif isinstance(where, tuple):
            at = where[1] + inside
            if kind != "file" or target is not where[0] or start + size != at:
                runs.extend(_extent(kind, target, start, size))
                kind, target, start, size = "file", where[0], at, 0
        elif kind != "stream" or target is not where or start + size != offset:
            runs.extend(_extent(kind, target, start, size))
            kind, target, start, size = "stream", where, offset, 0
        size += take
        offset += take
    runs.extend(_extent(kind, target, start, size))
    return runs


def _extent(kind: str, target: Any, start: int, size: int) -> list[Run]:
    """The runs of one extent :func:`block_runs` grew; none for the empty one it starts with."""
    if kind == "zero":
        return [ZeroRun(size)]
    if kind == "file":
        return _map(target, start, size)
    if kind == "stream":
        return [StreamRun(target, start, size)]
    return []


def _host_file(fh: Any, offset: int, length: int) -> list[Run]:
    """A file of the host: the end of the map. Past its end, its read would be short."""
    try:
        fh.fileno()
    except (OSError, ValueError):  # a buffer over something that is no file
        return [StreamRun(fh, offset, length)]
    return [FileRun(fh, offset, length)]


def _runlist(stream: RunlistStream, offset: int, length: int) -> list[Run]:
    """A file system's runs (``RunlistStream._read``): block runs, ``None`` for a sparse run."""
    block_size = stream.block_size
    out: list[Run] = []
    position = 0  # the first byte of the current run, in the stream
    for block, count in stream.runlist:
        run_size = count * block_size
        run_end = position + run_size
        if run_end > offset:
            start = max(offset, position)
            take = min(run_end, offset + length) - start
            if block is None:
                out.append(ZeroRun(take))
            else:
                out.extend(_map(stream._fh, block * block_size + start - position, take))
            length -= take
            offset += take
            if length == 0:
                return out
        position = run_end
    raise _ShortMap  # the runs end before the range does


def _range(stream: RangeStream, offset: int, length: int) -> list[Run]:
    """A range of another stream (``RangeStream._read``): a partition of a disk, say."""
    return _map(stream._fh, stream.offset + offset, length)


def _mapping(stream: MappingStream, offset: int, length: int) -> list[Run]:
    """Pieces of other streams laid end to end (``MappingStream._read``): an LVM logical
    volume's segments on its physical volumes, say. A gap between pieces ends a read there."""
    out: list[Run] = []
    end = offset + length
    for run_offset, run_size, fh, file_offset in stream._runs:
        if run_offset + run_size <= offset:
            continue
        if run_offset > offset:
            break
        take = min(end, run_offset + run_size) - offset
        out.extend(_map(fh, file_offset + offset - run_offset, take))
        offset += take
        if offset == end:
            return out
    raise _ShortMap


def _target_volume(volume: Any, offset: int, length: int) -> list[Run]:
    """A volume of dissect.target's volume systems: it reads and seeks its ``fh`` as it is."""
    return _map(volume.fh, offset, length)


def _raw_container(container: RawContainer, offset: int, length: int) -> list[Run]:
    """A raw image: its reads are those of the stream it keeps over the file."""
    return _map(container.fh, offset, length)


def _vhd_container(container: Any, offset: int, length: int) -> list[Run]:
    """A VHD (dissect's ``VHD``): a fixed disk is its file; a dynamic one maps blocks through
    its BAT, each block's data after its sector bitmap, a block never written as zeros."""
    from dissect.hypervisor.disk.vhd import DynamicDisk, FixedDisk

    disk = container.vhd.disk
    if type(disk) is FixedDisk:
        return _map(disk.fh, offset, length)
    if type(disk) is not DynamicDisk:
        return [StreamRun(container, offset, length)]

    def locate(block: int) -> tuple[Any, int] | None:
        first_sector = disk.bat[block]
        if not first_sector:
            return None
        return disk.fh, (first_sector + disk._sector_bitmap_size) * _VHD_SECTOR

    return block_runs(offset, length, disk._sectors_per_block * _VHD_SECTOR, locate)


_VHD_SECTOR = 512


def _merge(runs: list[Run]) -> list[Run]:
    """Join runs that follow each other: the same file at the next offset, zeros after zeros."""
    out: list[Run] = []
    for run in runs:
        last = out[-1] if out else None
        if isinstance(run, FileRun) and isinstance(last, FileRun):
            if last.file is run.file and last.offset + last.length == run.offset:
                out[-1] = FileRun(last.file, last.offset, last.length + run.length)
                continue
        elif isinstance(run, ZeroRun) and isinstance(last, ZeroRun):
            out[-1] = ZeroRun(last.length + run.length)
            continue
        elif isinstance(run, StreamRun) and isinstance(last, StreamRun):
            if last.stream is run.stream and last.offset + last.length == run.offset:
                out[-1] = StreamRun(last.stream, last.offset, last.length + run.length)
                continue
        out.append(run)
    return out


_MAPPERS: dict[type, Callable[[Any, int, int], list[Run]]] = {
    # Exact types only: a subclass (a compressed runlist, say) reads differently.
    io.BufferedReader: _host_file,
    io.FileIO: _host_file,
    RunlistStream: _runlist,
    RangeStream: _range,
    RelativeStream: _range,
    BufferedStream: _range,
    RawContainer: _raw_container,
    VhdContainer: _vhd_container,
    MappingStream: _mapping,
    TargetVolume: _target_volume,
}
