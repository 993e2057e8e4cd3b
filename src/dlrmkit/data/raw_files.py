"""Raw input files as streams of whole lines: plain text, or gzip (several members allowed),
read in pieces so memory stays bounded whatever the file's size."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Iterator

from dlrmkit.errors import DatasetError

GZIP_MAGIC = b"\x1f\x8b"
READ_BYTES = 1 << 20


def corrupt_gzip(where: str, detail: str) -> DatasetError:
    """The error for a gzip stream whose data is damaged (not merely cut short): neither policy
    keeps its lines, since any of them may be wrong."""
    return DatasetError(f"{where}: the gzip stream is corrupt ({detail}); its lines cannot be trusted, so it is "
                        f"not skipped under either --on-bad-line policy: fetch or compress the file again")


def truncated_gzip(where: str, lines: int) -> DatasetError:
    """The error, under ``--on-bad-line error``, for a gzip stream that ends inside a member."""
    return DatasetError(f"{where}: the gzip stream is truncated after line {lines} "
                        f"(use --on-bad-line skip to keep the {lines} complete lines)")


def _raw_chunks(path: Path, piece: int = READ_BYTES, on_read=None) -> Iterator[tuple[bytes, bool]]:
    """The file's bytes in pieces, gunzipped when it is gzip (several members allowed).

    Yields (data, truncated); when the file ends inside a gzip member (a cut-off download), the
    last piece comes with truncated=True, after every byte that could still be decoded. Damaged
    gzip data (a bad header or deflate block, a CRC or length mismatch, bytes after a member that
    are no gzip member) raises `corrupt_gzip`. Zero bytes after the last member (padding) are
    ignored, as gzip ignores them.
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
        decoder, fed, padding = zlib.decompressobj(wbits=31), False, False
        while raw := f.read(piece):
            if on_read:
                on_read(len(raw))
            while raw:
                padding = padding or (not fed and raw[0] == 0)  # a member would start with 0x1f
                if padding:
                    if raw.strip(b"\0"):
                        raise corrupt_gzip(str(path), f"from compressed byte {f.tell() - len(raw):,} on, after a "
                                                      f"gzip member, neither another member nor zero padding")
                    break
                try:
                    out = decoder.decompress(raw)
                except zlib.error as e:
                    raise corrupt_gzip(str(path), f"{e}, in compressed bytes {f.tell() - len(raw):,}-{f.tell():,}") \
                        from None
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
