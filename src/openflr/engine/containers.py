"""Disk image containers (VHD, VHDX, VMDK, QCOW2, raw), opened read-only as plain disk streams.

Most containers open through ``dissect.target``'s container layer. Three need more care, and
this module gives it:

- VHDX: ``dissect.hypervisor`` 3.21 reads a run of sectors that starts inside one payload block
  and ends in the next as if it all lay in the first block. Data after a block in the zero or
  not-present state then reads as zeros, and data after a present block reads from whatever
  follows it in the file. Reads are cut at block boundaries here.
- VMDK: the same library fails (``IndexError``) on the aligned read that covers the end of a disk
  whose size is no multiple of 64 KiB, and follows a descriptor's file names wherever they lead.
  Every file a descriptor names must be in the image's own folder, and a missing one is named.
- QCOW2: a backing file is looked up by its name in the overlay's folder (the path the overlay
  stores is one of the machine it was made on), a chain of overlays included.

References:
    - Microsoft, "[MS-VHDX]: Virtual Hard Disk v2 (VHDX) File Format", sections 2.5 (BAT) and
      2.5.1 (payload block states).
    - VMware, "Virtual Disk Format 5.0": descriptor file, extent lines, ``parentFileNameHint``.
    - QEMU, "qcow2 image format" (``docs/interop/qcow2.txt``): the backing file name field.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from dissect.util.stream import AlignedStream

from openflr.engine.errors import BackupError
from openflr.engine.extents import Run, StreamRun, block_runs

log = logging.getLogger(__name__)

__all__ = ["open_disk_image"]

_SECTOR = 512

# How deep a chain of QCOW2 overlays or VMDK snapshots may go: deeper is a loop or a mistake.
_MAX_CHAIN = 64

# An extent line of a VMDK descriptor: access, size in sectors, type, "file name" [offset].
_VMDK_EXTENT = re.compile(r'^\s*(RW|RDONLY|NOACCESS)\s+\d+\s+(\w+)\s+"([^"]*)"', re.M)
_VMDK_PARENT_HINT = re.compile(r'^\s*parentFileNameHint\s*=\s*"([^"]*)"', re.M)
_VMDK_PARENT_CID = re.compile(r"^\s*parentCID\s*=\s*(\w+)", re.M)


class _SectorStream(AlignedStream):  # type: ignore[misc]
    """A disk read through its container's ``read_sectors``, in pieces that never cross a
    block boundary and never pass the disk's end.

    Args:
        read_sectors: The container's reader: ``(first sector, sector count) -> bytes``.
        size: The disk's size in bytes.
        sector_size: The container's logical sector size.
        block_size: Reads are cut at multiples of this (``None``: not cut).
        locate: Where a block lies in the image (``None``: no block is mapped), as
            :func:`~openflr.engine.extents.block_runs` takes it; it is given, as
            ``read_through``, this stream, which reads the blocks the file does not hold as
            they are.
    """

    def __init__(
        self,
        read_sectors: Callable[[int, int], bytes],
        size: int,
        sector_size: int = _SECTOR,
        block_size: int | None = None,
        locate: Callable[..., Any] | None = None,
    ) -> None:
        self._read_sectors = read_sectors
        self._sector_size = sector_size
        self._block_size = block_size
        self._locate = None if locate is None else functools.partial(locate, read_through=self)
        super().__init__(size)

    def map_runs(self, offset: int, length: int) -> list[Run]:
        """Where ``length`` bytes from ``offset`` lie (see :mod:`openflr.engine.extents`)."""
        if self._locate is None or not self._block_size:
            return [StreamRun(self, offset, length)]
        return block_runs(offset, length, self._block_size, self._locate)

    def _read(self, offset: int, length: int) -> bytes:
        length = max(0, min(length, self.size - offset))
        pieces = []
        end = offset + length
        while offset < end:
            stop = end
            if self._block_size:
                stop = min(end, (offset // self._block_size + 1) * self._block_size)
            first = offset // self._sector_size
            count = -(-(stop - first * self._sector_size) // self._sector_size)
            data = self._read_sectors(first, count)
            skip = offset - first * self._sector_size
            pieces.append(data[skip : skip + stop - offset])
            offset = stop
        return b"".join(pieces)


def open_disk_image(path: Path) -> tuple[BinaryIO, int, Any]:
    """Open one disk image file as a stream of its disk's bytes.

    Returns:
        The stream, the disk's size in bytes, and the object to close when done (its image
        files are found and closed by the caller).

    Raises:
        BackupError: the image, or a file it needs (an extent, a parent, a backing file), is
            missing or cannot be read; the message names the file.
    """
    with path.open("rb") as fh:
        head = fh.read(8)
    suffix = path.suffix.lower()
    try:
        if head == b"vhdxfile":
            return _open_vhdx(path)
        if suffix == ".vmdk" or head[:4] in (b"KDMV", b"COWD", b"# Di"):
            return _open_vmdk(path)
        if head[:4] == b"QFI\xfb":
            return _open_qcow2(path)
        from dissect.target import container

        disk = container.open(path)
        return disk, int(disk.size or 0), disk
    except BackupError:
        raise
    except Exception as exc:
        raise BackupError(f"{path.name}: cannot open disk image ({exc})") from exc


def _open_vhdx(path: Path) -> tuple[BinaryIO, int, Any]:
    from dissect.hypervisor.disk.vhdx import VHDX

    vhdx = VHDX(path.open("rb"))
    # _sectors_per_block is the block size the BAT maps; dissect keeps it private.
    block = int(vhdx._sectors_per_block) * int(vhdx.sector_size)
    stream = _SectorStream(
        vhdx.read_sectors,
        int(vhdx.size),
        int(vhdx.sector_size),
        block,
        functools.partial(_vhdx_block, vhdx),
    )
    return stream, int(vhdx.size), vhdx


def _vhdx_block(vhdx: Any, block: int, read_through: Any) -> Any:
    """Where a VHDX payload block lies, as ``VHDX.read_sectors`` reads it ([MS-VHDX] 2.5.1)."""
    from dissect.hypervisor.disk.c_vhdx import c_vhdx

    entry = vhdx.bat.pb(block)
    if entry.state == c_vhdx.PAYLOAD_BLOCK_FULLY_PRESENT:
        return vhdx.fh, int(entry.file_offset_mb) * (1 << 20)
    if entry.state == c_vhdx.PAYLOAD_BLOCK_NOT_PRESENT and vhdx.parent is None:
        return None
    if entry.state in (
        c_vhdx.PAYLOAD_BLOCK_UNDEFINED,
        c_vhdx.PAYLOAD_BLOCK_ZERO,
        c_vhdx.PAYLOAD_BLOCK_UNMAPPED,
    ):
        return None
    return read_through  # in a parent disk, or partly present: read through dissect


def _open_vmdk(path: Path) -> tuple[BinaryIO, int, Any]:
    from dissect.hypervisor.disk.vmdk import VMDK

    _check_vmdk_files(path)
    vmdk = VMDK(path)
    size = int(vmdk.size)
    return _SectorStream(vmdk.read_sectors, size), size, vmdk


def _check_vmdk_files(path: Path, depth: int = 0) -> None:
    """Check that every file a VMDK descriptor names is in its folder, parents included.

    Raises:
        BackupError: naming the descriptor and the file it names that is missing.
    """
    if depth > _MAX_CHAIN:
        raise BackupError(f"{path.name}: VMDK snapshot chain deeper than {_MAX_CHAIN} files")
    text = _vmdk_descriptor(path)
    if text is None:
        return
    for _access, _kind, name in _VMDK_EXTENT.findall(text):
        _sibling(path, name, "extent")
    cid = _VMDK_PARENT_CID.search(text)
    hint = _VMDK_PARENT_HINT.search(text)
    if cid is not None and cid.group(1).lower() != "ffffffff" and hint is not None:
        _check_vmdk_files(_sibling(path, hint.group(1), "parent disk"), depth + 1)


def _vmdk_descriptor(path: Path) -> str | None:
    """The descriptor text of a VMDK: the whole file, or the one a sparse extent embeds."""
    with path.open("rb") as fh:
        head = fh.read(512)
        if head[:4] == b"# Di":
            return (head + fh.read(1 << 20)).decode("utf-8", "replace")
        if head[:4] != b"KDMV":
            return None
        # Sparse extent header: descriptorOffset and descriptorSize (sectors) at bytes 28..44.
        offset = int.from_bytes(head[28:36], "little")
        size = int.from_bytes(head[36:44], "little")
        if not offset or not size or size > 2048:
            return None
        fh.seek(offset * _SECTOR)
        return fh.read(size * _SECTOR).split(b"\x00", 1)[0].decode("utf-8", "replace")


def _sibling(image: Path, name: str, what: str) -> Path:
    """The file ``name`` (a path as the guest's host wrote it) in ``image``'s own folder.

    Only the last part of the name counts: a descriptor or overlay written on another host
    names files by that host's paths, and nothing outside the restore point is read.
    """
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    found = image.with_name(base) if base not in ("", ".", "..") else None
    if found is None or not found.is_file():
        raise BackupError(
            f"{image.name}: its {what} {base or name!r} is missing from the restore point's folder"
        )
    return found


def _open_qcow2(path: Path, depth: int = 0) -> tuple[BinaryIO, int, Any]:
    from dissect.hypervisor.disk.qcow2 import QCow2

    from openflr.engine.qcow2 import cluster_run_stream

    if depth > _MAX_CHAIN:
        raise BackupError(f"{path.name}: QCOW2 backing chain deeper than {_MAX_CHAIN} files")
    backing = _qcow2_backing_name(path)
    backing_stream: BinaryIO | None = None
    if backing is not None:
        backing_path = _sibling(path, backing, "backing file")
        with backing_path.open("rb") as fh:
            is_qcow2 = fh.read(4) == b"QFI\xfb"
        if is_qcow2:
            backing_stream, _, _ = _open_qcow2(backing_path, depth + 1)
        else:
            backing_stream = backing_path.open("rb")
    qcow2 = QCow2(path.open("rb"), backing_file=backing_stream)
    stream = cluster_run_stream(qcow2, qcow2.open())
    return stream, int(qcow2.size), qcow2


def _qcow2_backing_name(path: Path) -> str | None:
    with path.open("rb") as fh:
        header = fh.read(20)
        offset = int.from_bytes(header[8:16], "big")
        size = int.from_bytes(header[16:20], "big")
        if not offset or not 0 < size < 4096:
            return None
        fh.seek(offset)
        return fh.read(size).decode("utf-8", "replace")
