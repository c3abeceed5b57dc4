"""Reading QCOW2 images in runs of clusters instead of one cluster at a time.

dissect.hypervisor works out the type of every cluster (and subcluster) of a read through its
generic enum machinery, then reads each cluster on its own: reading a file from a QCOW2 image
ran at about 500 MB/s where the same file in a VHDX ran at 1.7 GB/s. For the common image (no
backing file, no external data file, no extended L2 entries, no encryption) this stream maps a
read through the L1 and L2 tables itself, with each L2 table unpacked at once, and reads
clusters that lie side by side in the image file with a single read. Compressed clusters are
left to dissect's stream, and other images keep dissect's stream altogether.

References:
    - QCOW2 image format (qemu ``docs/interop/qcow2.txt``): header, L1 and L2 tables of
      big-endian 64-bit entries, ``QCOW_OFLAG_COMPRESSED`` (bit 62), ``QCOW_OFLAG_ZERO`` (bit 0),
      host offset in bits 9 to 55.
"""

from __future__ import annotations

import logging
import sys
from array import array
from collections import OrderedDict
from typing import Any

from dissect.util.stream import AlignedStream

from openflr.engine.extents import Run, block_runs

log = logging.getLogger(__name__)

__all__ = ["cluster_run_stream"]

_OFFSET_MASK = 0x00FFFFFFFFFFFE00
_COMPRESSED = 1 << 62
_ZERO = 1
_ALIGN = 4096
# L2 tables kept per image: each maps cluster_size / 8 clusters (512 MiB of disk for 64 KiB
# clusters) and takes one cluster of memory.
_L2_TABLES = 64


def cluster_run_stream(qcow2: Any, fallback: Any) -> Any:
    """The faster stream of a parsed QCOW2 image where the image allows it, else ``fallback``.

    Images with a backing file, an external data file, subclusters or encryption keep dissect's
    own stream.
    """
    header = qcow2.header
    if (
        qcow2.needs_backing_file
        or qcow2.needs_data_file
        or qcow2.has_subclusters
        or getattr(header, "crypt_method", 0)
    ):
        return fallback
    return ClusterRunStream(qcow2, fallback)


class ClusterRunStream(AlignedStream):  # type: ignore[misc]
    """The guest disk of a QCOW2 image, read in runs of adjacent clusters.

    Args:
        qcow2: The parsed image (dissect.hypervisor ``QCow2``): header, L1 table, file.
        fallback: dissect's own stream of the image, used for compressed clusters.
    """

    def __init__(self, qcow2: Any, fallback: Any) -> None:
        # Align to 4 KiB, not to the cluster: a small read (an inode, a small file) then fills a
        # 4 KiB buffer instead of a whole 64 KiB cluster; large reads pass through whole.
        super().__init__(qcow2.size, align=min(_ALIGN, qcow2.cluster_size))
        self._fh = qcow2.fh
        self._fallback = fallback
        self._cluster_bits = qcow2.cluster_bits
        self._cluster_size = qcow2.cluster_size
        self._l2_bits = qcow2.cluster_bits - 3
        self._l1 = [int(entry) & _OFFSET_MASK for entry in qcow2.l1_table]
        self._l2: OrderedDict[int, array[int]] = OrderedDict()
        # The table of the last lookup, at hand without the LRU's bookkeeping: a run of clusters
        # mostly stays in one table (a GiB of 64 KiB clusters is 16,384 lookups).
        self._last_l2: tuple[int, array[int]] | None = None

    def _l2_table(self, offset: int) -> array[int]:
        if self._last_l2 is not None and self._last_l2[0] == offset:
            return self._last_l2[1]
        table = self._l2.get(offset)
        if table is not None:
            self._last_l2 = (offset, table)
            self._l2.move_to_end(offset)
            return table
        self._fh.seek(offset)
        table = array("Q")
        table.frombytes(self._fh.read(self._cluster_size))
        if sys.byteorder == "little":
            table.byteswap()
        self._l2[offset] = table
        if len(self._l2) > _L2_TABLES:
            self._l2.popitem(last=False)
        self._last_l2 = (offset, table)
        return table

    def _entry(self, cluster: int) -> int:
        """The L2 entry of a guest cluster; 0 for a cluster no table maps."""
        l1_index, l2_index = divmod(cluster, 1 << self._l2_bits)
        l2_offset = self._l1[l1_index] if l1_index < len(self._l1) else 0
        if not l2_offset:
            return 0
        return int(self._l2_table(l2_offset)[l2_index])

    def _read(self, offset: int, length: int) -> bytes:
        parts: list[bytes] = []
        size, bits = self._cluster_size, self._cluster_bits
        end = min(offset + length, self.size)
        while offset < end:
            cluster = offset >> bits
            entry = self._entry(cluster)
            host = entry & _OFFSET_MASK
            # Grow the run while the next clusters are of the same kind and, for data, follow
            # each other in the image file.
            run_end = min((cluster + 1) << bits, end)
            while run_end < end:
                following = self._entry(run_end >> bits)
                if entry & _COMPRESSED or following & _COMPRESSED:
                    break
                if _is_zero(entry):
                    if not _is_zero(following):
                        break
                elif _is_zero(following) or (following & _OFFSET_MASK) != host + (
                    run_end - (offset - offset % size)
                ):
                    break
                run_end = min(run_end + size, end)
            count = run_end - offset
            if entry & _COMPRESSED:
                self._fallback.seek(offset)
                parts.append(self._fallback.read(count))
            elif _is_zero(entry):
                parts.append(bytes(count))
            else:
                self._fh.seek(host + offset % size)
                parts.append(self._fh.read(count))
            offset = run_end
        return b"".join(parts)

    def map_runs(self, offset: int, length: int) -> list[Run]:
        """Where ``length`` bytes from ``offset`` lie, as :meth:`_read` reads them."""

        def locate(cluster: int) -> Any:
            entry = self._entry(cluster)
            if entry & _COMPRESSED:
                return self._fallback
            if _is_zero(entry):
                return None
            return self._fh, entry & _OFFSET_MASK

        length = max(0, min(length, self.size - offset))
        return block_runs(offset, length, self._cluster_size, locate)


def _is_zero(entry: int) -> bool:
    """A cluster that reads as zeros: marked so, or never written (no backing file here)."""
    return bool(entry & _ZERO) or not entry & _OFFSET_MASK
