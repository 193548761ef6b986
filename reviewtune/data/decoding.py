"""Bytes -> text: the one way every CLI decodes an input file (encodings, byte-order mark, NFC, bad bytes).

A file in the wrong encoding is one ``DataError`` naming the byte and line; a few undecodable lines are kept
as lone surrogates so that their rows are dropped and counted (``undecodable_row``), never silently altered.
"""

from __future__ import annotations

import codecs
import gzip
import re
import unicodedata
from pathlib import Path
from typing import Any

# Share of lines that may fail to decode before the whole file is called the wrong encoding.
MAX_UNDECODABLE_SHARE = 0.01
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that did not decode (errors="surrogateescape")


class DataError(ValueError):
    """Bad input that stops preparation: a file-level problem, or any drop in strict mode."""


def decode_file(path: str | Path, encoding: str = "utf-8") -> tuple[str, dict]:
    """Read and decode a (optionally gzipped) text file; returns the text and facts for ``info``.

    A UTF-8 byte-order mark is accepted. A few undecodable lines are kept as lone surrogates (the row
    is dropped later as ``undecodable_row``); more than ``MAX_UNDECODABLE_SHARE`` of the lines means the
    file is in another encoding, and that is one ``DataError`` naming the byte offset and line.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory; give a file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    try:
        codec = codecs.lookup(encoding).name
    except LookupError as e:
        raise DataError(f"unknown --encoding {encoding!r}") from e
    is_utf8 = codec in ("utf-8", "utf-8-sig")
    info: dict[str, Any] = {"encoding": codec}
    if data.startswith(codecs.BOM_UTF8):
        if not is_utf8:
            raise DataError(f"{path}: starts with a UTF-8 byte-order mark but --encoding {encoding} was given; "
                            "use --encoding utf-8")  # fmt: skip
        data, info["bom"] = data[len(codecs.BOM_UTF8) :], True
        codec = "utf-8"
    if not is_utf8 and not data.isascii() and _decodes(data, "utf-8"):
        # CP949/EUC-KR Hangul is never valid UTF-8, so this file is UTF-8 and would turn into mojibake.
        raise DataError(f"{path}: is valid UTF-8 but --encoding {encoding} was given; use --encoding utf-8")
    try:
        return data.decode(codec), info
    except UnicodeDecodeError as e:
        first = e
    text = data.decode(codec, errors="surrogateescape")
    lines = text.split("\n")
    bad = sum(1 for line in lines if _SURROGATE.search(line))
    nonblank = sum(1 for line in lines if line.strip())
    if bad > max(1, MAX_UNDECODABLE_SHARE * nonblank):
        line_no = data.count(b"\n", 0, first.start) + 1
        hint = next((f"it decodes cleanly as {alt}: use --encoding {alt}"
                     for alt in ("utf-8", "cp949") if alt != codec and _decodes(data, alt)),
                    "try --encoding cp949 (Windows Korean) or euc-kr")  # fmt: skip
        raise DataError(
            f"{path}: not valid {encoding}: byte {first.start} (line {line_no}) cannot be decoded "
            f"({first.reason}); {bad} of {nonblank} lines fail, so the file is in another encoding - {hint}"
        )
    info["undecodable_lines"] = bad
    return text, info


def _decodes(data: bytes, encoding: str) -> bool:
    try:
        data.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def nfc(value: Any) -> tuple[Any, bool]:
    """NFC-normalise every string in ``value`` (recursively); also tell whether anything changed."""
    if isinstance(value, str):
        if unicodedata.is_normalized("NFC", value):
            return value, False
        return unicodedata.normalize("NFC", value), True
    if isinstance(value, list):
        pairs = [nfc(v) for v in value]
        return [v for v, _ in pairs], any(c for _, c in pairs)
    if isinstance(value, dict):
        pairs = {k: nfc(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(c for _, c in pairs.values())
    return value, False


def undecodable_field(fields: dict) -> str | None:
    """The first field holding bytes that did not decode (lone surrogates), if any."""
    return next((k for k, v in fields.items() if _has_surrogate(v)), None)


def _has_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list | tuple):
        return any(_has_surrogate(v) for v in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False
