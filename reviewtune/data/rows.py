"""Text -> rows: delimited files (CSV/TSV, NSMC) and JSON (array or lines), each row with where it came from.

Readers yield ``(Where, fields | Malformed)``; a row that cannot be read is ``Malformed`` (dropped and counted
later), a problem of the whole file (no header, broken JSON array) raises ``DataError``.
"""

from __future__ import annotations

import bisect
import csv
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from reviewtune.data.decoding import DataError


@dataclass
class Where:
    """Location of a row, for drop examples and strict-mode errors."""

    file: str
    line: int | None = None
    item: str | None = None  # "item3" in a JSON array, "row 3" in a datasets dataset

    def __str__(self) -> str:
        if self.item is not None:
            return f"{self.file}, {self.item}" + (f" (line {self.line})" if self.line else "")
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class Malformed:
    """A row that could not be read, and why."""

    detail: str


def iter_delimited(
    text: str, path: Path, delimiter: str, quoting: int, info: dict
) -> tuple[list[str], Iterator[tuple[Where, dict | Malformed]]]:
    """Header and rows of a delimited file (``csv`` handles quoting; one row may span lines when quoted).

    Unquoted files (``csv.QUOTE_NONE``, NSMC) get one physical line per row, so a stray carriage return
    inside a line makes that row malformed instead of shifting every later line number.
    """
    # csv's default field limit (131,072 characters) would drop a long review as a malformed row: take any length.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    lines = text.removesuffix("\n").split("\n") if quoting == csv.QUOTE_NONE else io.StringIO(text, newline="")
    reader = csv.reader(lines, delimiter=delimiter, quoting=quoting, strict=False)
    header = None
    prev = 0
    while header is None:
        try:
            row = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file (no header)") from None
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: cannot read the header ({e})") from e
        prev = reader.line_num
        if row and any(c.strip() for c in row):
            header = [c.strip() for c in row]

    def rows() -> Iterator[tuple[Where, dict | Malformed]]:
        nonlocal prev
        blank = 0
        while True:
            start = prev + 1
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as e:  # the reader resumes on the next line
                prev = reader.line_num
                yield Where(str(path), start), Malformed(f"csv: {e}")
                continue
            prev = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                blank += 1
                continue
            if len(row) != len(header):
                yield Where(str(path), start), Malformed(f"{len(row)} fields, expected {len(header)}")
                continue
            yield Where(str(path), start), dict(zip(header, row, strict=True))
        if blank:
            info["blank_lines"] = info.get("blank_lines", 0) + blank

    return header, rows()


def iter_json(text: str, path: Path) -> Iterator[tuple[Where, dict | Malformed]]:
    """Objects of a JSON array file or a JSON-lines file, each with its line number."""
    stripped = text.lstrip()
    if not stripped.startswith("["):
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield Where(str(path), lineno), Malformed(f"invalid JSON ({e.msg})")
                continue
            yield Where(str(path), lineno), obj if isinstance(obj, dict) else Malformed("not a JSON object")
        return
    # A JSON array: decode element by element with ``raw_decode`` so every object keeps its line number
    # (``json.loads`` of the whole array gives the objects but not where they were).
    newlines = [m.start() for m in re.finditer("\n", text)]
    decoder = json.JSONDecoder()
    ws = re.compile(r"\s*")
    pos = ws.match(text, len(text) - len(stripped) + 1).end()
    item = 0
    if text[pos : pos + 1] == "]":
        pos += 1
    else:
        while True:
            try:
                obj, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
            item += 1
            where = Where(str(path), bisect.bisect_right(newlines, pos - 1) + 1, f"item{item}")
            yield where, obj if isinstance(obj, dict) else Malformed("not a JSON object")
            pos = ws.match(text, end).end()
            if text[pos : pos + 1] == ",":
                pos = ws.match(text, pos + 1).end()
            elif text[pos : pos + 1] == "]":
                pos += 1
                break
            else:
                line = bisect.bisect_right(newlines, pos - 1) + 1
                raise DataError(f"{path}:{line}: invalid JSON array (expected ',' or ']')")
    if text[pos:].strip():
        line = bisect.bisect_right(newlines, pos - 1) + 1
        raise DataError(f"{path}:{line}: extra data after the JSON array")
