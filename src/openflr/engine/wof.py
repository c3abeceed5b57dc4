"""Files compressed by the Windows Overlay Filter (``compact /exe``, "system compression").

Windows keeps such a file's data in its alternate stream ``WofCompressedData`` and marks the file
with reparse tag ``0x80000017``; the unnamed stream is sparse, all zeros. The reparse data names the
algorithm: XPRESS with 4, 8 or 16 KiB chunks, or LZX with 32 KiB chunks. The stream starts with a
table of where each chunk but the first starts (relative to the end of the table; 4-byte entries,
8-byte for files of 4 GiB and more), then the chunks, each compressed on its own. A chunk whose
stored size equals its uncompressed size is stored as it is.

XPRESS here is "LZ77 + Huffman" of Microsoft's MS-XCA specification (section 2.2); LZX is the
variant WIM files use too. Both are decoded in Python, a chunk at a time, with the last chunk kept
for the next read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
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
            writes, or the algorithm is none of the four Windows uses.
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
    if not chunk_size:
        raise GuestFileUnreadable(
            guest_path,
            f"it is compressed by the Windows Overlay Filter with {name}, which openflr does "
            "not know (XPRESS4K, XPRESS8K, XPRESS16K and LZX it decodes)",
        )
    decode = lzx_decompress if name == "LZX" else xpress_huffman_decompress
    try:
        size = int(record.size())
        compressed = record.open(WOF_STREAM)
        stored = int(record.size(WOF_STREAM))
    except Exception as exc:
        raise GuestFileUnreadable(
            guest_path, f"its compressed data stream {WOF_STREAM} is missing ({exc})"
        ) from exc
    return WofStream(compressed, stored, size, chunk_size, guest_path, decode)


class WofStream:
    """The uncompressed bytes of a WOF file, read a chunk at a time from its compressed stream.

    Args:
        compressed: The ``WofCompressedData`` stream.
        stored: Its size.
        size: The file's uncompressed size.
        chunk_size: Uncompressed bytes per chunk.
        guest_path: For messages.
        decode: Decodes one chunk: (its bytes, its uncompressed size) to its data.
    """

    def __init__(
        self,
        compressed: Any,
        stored: int,
        size: int,
        chunk_size: int,
        guest_path: str,
        decode: Callable[[bytes, int], bytes],
    ) -> None:
        self._decode = decode
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
                data = self._decode(raw, expected)
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


# -- LZX, as the Windows Overlay Filter (and WIM files) use it -----------------------------------
#
# One chunk of at most 32 KiB is one LZX stream with a 32 KiB window: blocks (verbatim, aligned
# offset or uncompressed), each with its Huffman codes sent as differences from the previous
# block's, then the "E8" call translation undone over the chunk. After the LZX format of
# Microsoft's MS-PATCH and the WIM variant's fixed block size and translation size.

_LZX_NUM_CHARS = 256
_LZX_OFFSET_SLOTS = 30  # a 32 KiB window
_LZX_MAIN_SYMBOLS = _LZX_NUM_CHARS + 8 * _LZX_OFFSET_SLOTS
_LZX_LENGTH_SYMBOLS = 249
_LZX_E8_FILE_SIZE = 12_000_000
_LZX_EXTRA_BITS = [0, 0, 0, 0] + [n // 2 for n in range(2, 2 * 14)]
_LZX_SLOT_BASE = [0]
for _bits in _LZX_EXTRA_BITS[:-1]:
    _LZX_SLOT_BASE.append(_LZX_SLOT_BASE[-1] + (1 << _bits))


class _Bits:
    """A stream of 16-bit little-endian words read most significant bit first."""

    __slots__ = ("at", "buffer", "data", "left")

    def __init__(self, data: bytes) -> None:
        self.data, self.at, self.buffer, self.left = data, 0, 0, 0

    def ensure(self, count: int) -> None:
        while self.left < count:
            word = (
                self.data[self.at] | self.data[self.at + 1] << 8
                if self.at + 1 < len(self.data)
                else 0
            )
            self.at += 2
            self.buffer = (self.buffer << 16) | word
            self.left += 16

    def read(self, count: int) -> int:
        if count == 0:
            return 0
        self.ensure(count)
        self.left -= count
        value = self.buffer >> self.left
        self.buffer &= (1 << self.left) - 1
        return value

    def symbol(self, table: list[int], lengths: list[int]) -> int:
        self.ensure(16)
        found = table[self.buffer >> (self.left - 16)]
        if found < 0:
            raise ValueError("a bit pattern that is no Huffman code")
        self.left -= lengths[found]
        self.buffer &= (1 << self.left) - 1
        return found

    def align(self) -> None:
        """Drop what is left of the current word (a whole padding word if none is)."""
        self.ensure(1)
        self.buffer = self.left = 0

    def raw(self, count: int) -> bytes:
        piece = self.data[self.at : self.at + count]
        if len(piece) != count:
            raise ValueError("the stream ends inside an uncompressed block")
        self.at += count
        return piece


def _lzx_table(lengths: list[int]) -> list[int]:
    """Canonical Huffman decoding by the next 16 bits; an empty code decodes nothing."""
    table = [-1] * (1 << 16)
    position = 0
    for length in range(1, 17):
        span = 1 << (16 - length)
        for symbol, own in enumerate(lengths):
            if own == length:
                if position + span > len(table):
                    raise ValueError("the Huffman code lengths oversubscribe the code space")
                table[position : position + span] = [symbol] * span
                position += span
    return table


def _lzx_lengths(bits: _Bits, lengths: list[int], start: int, count: int) -> None:
    """Read ``count`` code lengths from ``start`` on, sent as differences from the old ones."""
    pre_lengths = [bits.read(4) for _ in range(20)]
    pre_table = _lzx_table(pre_lengths)
    at, end = start, start + count
    while at < end:
        symbol = bits.symbol(pre_table, pre_lengths)
        if symbol < 17:
            lengths[at] = (lengths[at] - symbol) % 17
            at += 1
            continue
        if symbol == 17:
            run, value = 4 + bits.read(4), 0
        elif symbol == 18:
            run, value = 20 + bits.read(5), 0
        else:
            run = 4 + bits.read(1)
            other = bits.symbol(pre_table, pre_lengths)
            if other > 16:
                raise ValueError("a run of lengths names no length")
            value = (lengths[at] - other) % 17
        if at + run > end:
            raise ValueError("a run of code lengths runs past the code")
        lengths[at : at + run] = [value] * run
        at += run


def lzx_decompress(data: bytes, size: int) -> bytes:
    """Decode one WOF/WIM LZX chunk of ``size`` bytes (at most 32 KiB).

    Raises:
        ValueError: the data is no valid stream of that length.
    """
    bits = _Bits(data)
    out = bytearray()
    main_lengths = [0] * _LZX_MAIN_SYMBOLS
    length_lengths = [0] * _LZX_LENGTH_SYMBOLS
    recent = [1, 1, 1]
    while len(out) < size:
        kind = bits.read(3)
        block = 32768 if bits.read(1) else bits.read(16)
        if block == 0 or block > size - len(out):
            block = size - len(out) if block else 0
            if not block:
                raise ValueError("an LZX block of no size")
        if kind == 3:  # uncompressed
            bits.align()
            recent = list(struct.unpack("<III", bits.raw(12)))
            out += bits.raw(block)
            if block & 1:
                bits.raw(1)
            continue
        if kind not in (1, 2):
            raise ValueError(f"LZX block type {kind}")
        aligned_lengths = [bits.read(3) for _ in range(8)] if kind == 2 else []
        aligned_table = _lzx_table(aligned_lengths) if kind == 2 else []
        _lzx_lengths(bits, main_lengths, 0, _LZX_NUM_CHARS)
        _lzx_lengths(bits, main_lengths, _LZX_NUM_CHARS, _LZX_MAIN_SYMBOLS - _LZX_NUM_CHARS)
        main_table = _lzx_table(main_lengths)
        _lzx_lengths(bits, length_lengths, 0, _LZX_LENGTH_SYMBOLS)
        length_table = _lzx_table(length_lengths)
        end = len(out) + block
        while len(out) < end:
            symbol = bits.symbol(main_table, main_lengths)
            if symbol < _LZX_NUM_CHARS:
                out.append(symbol)
                continue
            symbol -= _LZX_NUM_CHARS
            length, slot = symbol & 7, symbol >> 3
            if length == 7:
                length += bits.symbol(length_table, length_lengths)
            length += 2
            if slot < 3:
                offset = recent[slot]
                recent[slot] = recent[0]
            else:
                extra = _LZX_EXTRA_BITS[slot]
                offset = _LZX_SLOT_BASE[slot]
                if kind == 2 and extra >= 3:
                    offset += bits.read(extra - 3) << 3
                    offset += bits.symbol(aligned_table, aligned_lengths)
                else:
                    offset += bits.read(extra)
                offset -= 2
                recent[2], recent[1] = recent[1], recent[0]
            recent[0] = offset
            if offset <= 0 or offset > len(out) or length > end - len(out):
                raise ValueError("an LZX match reaches outside the chunk")
            start = len(out) - offset
            if offset >= length:
                out += out[start : start + length]
            else:
                for i in range(length):
                    out.append(out[start + i])
    _undo_e8(out)
    return bytes(out)


def _undo_e8(out: bytearray) -> None:
    """Turn the absolute call targets the compressor wrote after each 0xE8 byte back into the
    relative ones the data held."""
    at = 0
    last = len(out) - 10
    while at < last:
        at = out.find(0xE8, at, last)
        if at < 0:
            return
        (target,) = struct.unpack_from("<i", out, at + 1)
        if 0 <= target < _LZX_E8_FILE_SIZE:
            struct.pack_into("<i", out, at + 1, target - at)
        elif -at <= target < 0:
            struct.pack_into("<i", out, at + 1, target + _LZX_E8_FILE_SIZE)
        at += 5
