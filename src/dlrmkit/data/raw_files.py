"""Raw input files as streams of whole lines: plain text, or gzip (several members allowed),
read in pieces so memory stays bounded whatever the file's size."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator

GZIP_MAGIC = b"\x1f\x8b"
READ_BYTES = 1 << 20


def _raw_chunks(path: Path, piece: int = READ_BYTES, on_read=None) -> Iterator[tuple[bytes, bool]]:
    """The file's bytes in pieces, gunzipped when it is gzip (several members allowed).

    Yields (data, truncated); the last piece of a gzip stream that breaks off comes with
    truncated=True, after every byte that could still be decoded.
    """
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            f.seek(0)
            while data := f.read(piece):
                if on_read:
                    on_read(len(data))
                yield data, False
            return
        f.seek(0)
        decoder, fed = zlib.decompressobj(wbits=31), False
        while raw := f.read(piece):
            if on_read:
                on_read(len(raw))
            while raw:
                try:
                    out = decoder.decompress(raw)
                except zlib.error:
                    yield b"", True
                    return
                fed = True
                if out:
                    yield out, False
                if not decoder.eof:
                    break
                raw = decoder.unused_data  # a member ended; the rest may be another member
                decoder, fed = zlib.decompressobj(wbits=31), False
        if fed and not decoder.eof:
            yield b"", True


def read_blocks(path: Path, block_bytes: int, on_read=None) -> Iterator[tuple[bytes, bool]]:
    """Blocks of whole lines; a last line without a newline gets one. Yields (block, truncated)
    where ``truncated`` marks the end of a gzip stream that broke off (the partial line dropped)."""
    pending: list[bytes] = []
    size = 0
    for data, truncated in _raw_chunks(path, min(READ_BYTES, block_bytes), on_read):
        if truncated:
            rest = b"".join(pending)
            cut = rest.rfind(b"\n") + 1
            if cut:
                yield rest[:cut], False
            yield b"", True
            return
        pending.append(data)
        size += len(data)
        if size >= block_bytes:
            joined = b"".join(pending)
            cut = joined.rfind(b"\n") + 1
            if cut:
                yield joined[:cut], False
            pending, size = [joined[cut:]], len(joined) - cut
    rest = b"".join(pending)
    if rest:
        yield rest if rest.endswith(b"\n") else rest + b"\n", False
