"""Files compressed by the Windows Overlay Filter (``compact /exe``, "system compression").

Windows keeps such a file's data in its alternate stream ``WofCompressedData`` and marks the file
with reparse tag ``0x80000017``; the unnamed stream is sparse, all zeros. The reparse data names the
algorithm: XPRESS with 4, 8 or 16 KiB chunks, or LZX with 32 KiB chunks. The stream starts with a
table of where each chunk but the first starts (relative to the end of the table; 4-byte entries,
8-byte for files of 4 GiB and more), then the chunks, each compressed on its own. A chunk whose
stored size equals its uncompressed size is stored as it is.

XPRESS here is "LZ77 + Huffman" of Microsoft's MS-XCA specification (section 2.2); decoded in
Python, a chunk at a time, with the last chunk kept for the next read.
"""

from __future__ import annotations

import struct
from typing import Any

from openflr.engine.errors import GuestFileUnreadable

__all__ = ["WOF_TAG", "WofStream", "open_wof"]

WOF_TAG = 0x80000017
_WOF_PROVIDER_FILE = 2
# FILE_PROVIDER_EXTERNAL_INFO_V1.Algorithm -> (name, chunk size)
_ALGORITHMS = {
    0: ("XPRESS4K", 4096),
    1: ("LZX", 32768),
    2: ("XPRESS8K", 8192),
    3: ("XPRESS16K", 16384),
}
WOF_STREAM = "WofCompressedData"


def open_wof(record: Any, guest_path: str) -> WofStream:
    """Open the data of a WOF-compressed NTFS file (a ``dissect.ntfs`` ``MftRecord``).

    Raises:
        GuestFileUnreadable: the reparse data or the compressed stream is not what Windows
            writes, or the algorithm is one openflr does not decode (LZX).
    """
    data = bytes(record.attributes.REPARSE_POINT.buffer)
    if len(data) < 20:
        raise GuestFileUnreadable(guest_path, "its WOF reparse data is too short")
    version, provider, file_version, algorithm = struct.unpack_from("<IIII", data)
    if provider != _WOF_PROVIDER_FILE or version != 1 or file_version != 1:
        raise GuestFileUnreadable(
            guest_path,
            f"it is compressed by the Windows Overlay Filter with provider {provider}, "
            "which openflr does not read (only single files compressed by compact /exe)",
        )
    name, chunk_size = _ALGORITHMS.get(algorithm, (f"algorithm {algorithm}", 0))
    if not name.startswith("XPRESS"):
        raise GuestFileUnreadable(
            guest_path,
            f"it is compressed by the Windows Overlay Filter with {name}, which openflr does "
            "not decode yet (XPRESS4K, XPRESS8K and XPRESS16K are)",
        )
    try:
        size = int(record.size())
        compressed = record.open(WOF_STREAM)
        stored = int(record.size(WOF_STREAM))
    except Exception as exc:
        raise GuestFileUnreadable(
            guest_path, f"its compressed data stream {WOF_STREAM} is missing ({exc})"
        ) from exc
    return WofStream(compressed, stored, size, chunk_size, guest_path)


class WofStream:
    """The uncompressed bytes of a WOF file, read a chunk at a time from its compressed stream.

    Args:
        compressed: The ``WofCompressedData`` stream.
        stored: Its size.
        size: The file's uncompressed size.
        chunk_size: Uncompressed bytes per chunk.
        guest_path: For messages.
    """

    def __init__(
        self, compressed: Any, stored: int, size: int, chunk_size: int, guest_path: str
    ) -> None:
        self._fh = compressed
        self._stored = stored
        self.size = size
        self._chunk = chunk_size
        self._path = guest_path
        self._pos = 0
        count = -(-size // chunk_size)
        entry = 8 if size >= 1 << 32 else 4
        table_size = entry * max(count - 1, 0)
        if table_size > stored:
            raise GuestFileUnreadable(guest_path, "its compressed stream is shorter than its table")
        compressed.seek(0)
        table = compressed.read(table_size)
        fmt = "<Q" if entry == 8 else "<I"
        starts = [0, *(v for (v,) in struct.iter_unpack(fmt, table))]
        self._starts = [table_size + s for s in starts] + [stored]
        if any(b < a for a, b in zip(self._starts, self._starts[1:], strict=False)):
            raise GuestFileUnreadable(guest_path, "its compressed stream's chunk table is damaged")
        self._cached: tuple[int, bytes] | None = None

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 0:
            self._pos = offset
        elif whence == 1:
            self._pos += offset
        else:
            self._pos = self.size + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        parts = []
        while self._pos < end:
            index, within = divmod(self._pos, self._chunk)
            data = self._chunk_data(index)
            piece = data[within : within + end - self._pos]
            if not piece:
                break
            parts.append(piece)
            self._pos += len(piece)
        return b"".join(parts)

    def _chunk_data(self, index: int) -> bytes:
        if self._cached is not None and self._cached[0] == index:
            return self._cached[1]
        expected = min(self._chunk, self.size - index * self._chunk)
        start, stop = self._starts[index], self._starts[index + 1]
        self._fh.seek(start)
        raw = bytes(self._fh.read(stop - start))
        if len(raw) != stop - start:
            raise GuestFileUnreadable(self._path, f"compressed chunk {index} is cut short")
        if len(raw) == expected:
            data = raw  # stored as it is: compression would not have made it smaller
        else:
            try:
                data = xpress_huffman_decompress(raw, expected)
            except (IndexError, ValueError) as exc:
                raise GuestFileUnreadable(
                    self._path, f"compressed chunk {index} does not decode ({exc})"
                ) from exc
        self._cached = (index, data)
        return data


def xpress_huffman_decompress(data: bytes, size: int) -> bytes:
    """Decode ``size`` bytes of "LZ77 + Huffman" (MS-XCA 2.2.4) from ``data``.

    Raises:
        ValueError: the data is no valid stream of that length.
    """
    out = bytearray()
    at = 0
    end = len(data)

    def word(position: int) -> int:
        if position + 2 <= end:
            return data[position] | data[position + 1] << 8
        return data[position] if position < end else 0  # past the end: zeros

    while len(out) < size:
        if at + 256 > end:
            raise ValueError("the stream ends inside a Huffman table")
        table, lengths = _decoding_table(data[at : at + 256])
        at += 256
        bits = (word(at) << 16) | word(at + 2)
        at += 4
        extra = 16
        block_end = min(len(out) + 65536, size)
        while len(out) < block_end:
            symbol = table[bits >> 17]
            if symbol < 0:
                raise ValueError("a bit pattern that is no Huffman code")
            length = lengths[symbol]
            bits = (bits << length) & 0xFFFFFFFF
            extra -= length
            if extra < 0:
                bits |= word(at) << -extra
                at += 2
                extra += 16
            if symbol < 256:
                out.append(symbol)
                continue
            symbol -= 256
            match_length = symbol & 15
            offset_bits = symbol >> 4
            if match_length == 15:
                match_length = data[at]
                at += 1
                if match_length == 255:
                    match_length = word(at)
                    at += 2
                    if match_length == 0:
                        (match_length,) = struct.unpack_from("<I", data, at)
                        at += 4
                    if match_length < 15:
                        raise ValueError("a match length below 15 in its long form")
                    match_length -= 15
                match_length += 15
            match_length += 3
            if match_length > size - len(out):
                raise ValueError("a match runs past the end of the chunk")
            offset = ((bits >> (32 - offset_bits)) if offset_bits else 0) + (1 << offset_bits)
            bits = (bits << offset_bits) & 0xFFFFFFFF
            extra -= offset_bits
            if extra < 0:
                bits |= word(at) << -extra
                at += 2
                extra += 16
            if offset > len(out):
                raise ValueError("a match reaches before the start of the data")
            start = len(out) - offset
            if offset >= match_length:
                out += out[start : start + match_length]
            else:
                for i in range(match_length):  # overlapping: a run
                    out.append(out[start + i])
        if len(out) > size:
            del out[size:]
    return bytes(out)


def _decoding_table(header: bytes) -> tuple[list[int], list[int]]:
    """The 2**15-entry table from 15-bit prefixes to symbols, and each symbol's code length."""
    lengths = [0] * 512
    for i, byte in enumerate(header):
        lengths[2 * i] = byte & 15
        lengths[2 * i + 1] = byte >> 4
    table = [-1] * (1 << 15)
    position = 0
    for length in range(1, 16):
        span = 1 << (15 - length)
        for symbol in range(512):
            if lengths[symbol] == length:
                if position + span > len(table):
                    raise ValueError("the Huffman code lengths oversubscribe the code space")
                table[position : position + span] = [symbol] * span
                position += span
    if position == 0:
        raise ValueError("the Huffman table is empty")
    return table, lengths
