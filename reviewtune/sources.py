"""Input readers -> canonical records, validated with nothing lost, and ``prepare`` (the data CLI's logic).

Sources: ``nsmc`` (NSMC TSV), ``nsmc-raw`` (NSMC raw crawl JSON), ``csv``, ``jsonl``, ``hf`` (any
``datasets`` dataset) and ``synthetic`` (the bundled generator). Every row read is either kept or
dropped with a counted reason (``read == kept + sum(dropped)``); ``strict=True`` turns any drop into
an error naming file, line and field. A file in the wrong encoding is one file-level ``DataError``.
"""

from __future__ import annotations

import bisect
import codecs
import collections
import csv
import gzip
import io
import json
import logging
import math
import re
import tempfile
import unicodedata
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reviewtune.atomic import atomic_write_json, atomic_write_jsonl
from reviewtune.prompts import parse_answer, to_instruction
from reviewtune.provenance import provenance
from reviewtune.records import drop_reason, make_record
from reviewtune.tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)

SOURCES = ("nsmc", "nsmc-raw", "csv", "jsonl", "hf", "synthetic")
# Every reason a row can be dropped for (``records.drop_reason`` adds unknown_keyword, duplicate_keyword).
DROP_REASONS = (
    "empty_text", "missing_label", "unknown_label", "unknown_keyword", "duplicate_keyword", "duplicate_id",
    "missing_id", "undecodable_row", "malformed_row", "over_length", "rating_out_of_scheme",
)  # fmt: skip
NSMC_HEADER = ["id", "document", "label"]
NSMC_URLS = {
    "ratings_train.txt": "https://raw.githubusercontent.com/e9t/nsmc/master/ratings_train.txt",
    "ratings_test.txt": "https://raw.githubusercontent.com/e9t/nsmc/master/ratings_test.txt",
}
# Share of lines that may fail to decode before the whole file is called the wrong encoding.
MAX_UNDECODABLE_SHARE = 0.01
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that did not decode (errors="surrogateescape")
_MAX_EXAMPLES = 3


class DataError(ValueError):
    """Bad input that stops preparation: a file-level problem, or any drop in strict mode."""


@dataclass
class PrepReport:
    """Rows read, kept and dropped (reason -> count), plus information that drops nothing."""

    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Assert the count identity ``read == kept + sum(dropped)``."""
        dropped = sum(self.dropped.values())
        if self.read != self.kept + dropped:  # raised, not ``assert``: must hold under ``python -O`` too
            raise AssertionError(f"count identity broken: read {self.read} != kept {self.kept} + dropped {dropped}")

    def to_dict(self) -> dict:
        self.check()
        return {"read": self.read, "kept": self.kept, "dropped": dict(sorted(self.dropped.items())), "info": self.info}


@dataclass
class _Where:
    """Location of a row, for drop examples and strict-mode errors."""

    file: str
    line: int | None = None
    item: str | None = None  # "item3" in a JSON array, "row 3" in a datasets dataset

    def __str__(self) -> str:
        if self.item is not None:
            return f"{self.file}, {self.item}" + (f" (line {self.line})" if self.line else "")
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass
class _Malformed:
    detail: str


@dataclass
class _Columns:
    """Where a row's fields come from, and how its label column is read (``class``, ``rating``, ...)."""

    text: str
    label: str
    label_kind: str  # class (0..n-1 or a label name) | rating (1-10 stars) | stars5 (1-5) | aspects | score
    id: str | None = None
    meta: list[str] = field(default_factory=list)
    meta_dict: str | None = None  # a column holding a dict merged into meta (canonical records' "meta")


# ---------------------------------------------------------------------------------------------------------------
# Decoding


def decode_file(path: str | Path, encoding: str = "utf-8") -> tuple[str, dict]:
    """Read and decode a (optionally gzipped) text file; returns the text and facts for ``info``.

    A UTF-8 byte-order mark is accepted. A few undecodable lines are kept as lone surrogates (the row
    is dropped later as ``undecodable_row``); more than ``MAX_UNDECODABLE_SHARE`` of the lines means the
    file is in another encoding, and that is one ``DataError`` naming the byte offset and line.
    """
    path = Path(path)
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


def _nfc(value: Any) -> tuple[Any, bool]:
    """NFC-normalise every string in ``value`` (recursively); also tell whether anything changed."""
    if isinstance(value, str):
        if unicodedata.is_normalized("NFC", value):
            return value, False
        return unicodedata.normalize("NFC", value), True
    if isinstance(value, list):
        pairs = [_nfc(v) for v in value]
        return [v for v, _ in pairs], any(c for _, c in pairs)
    if isinstance(value, dict):
        pairs = {k: _nfc(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, any(c for _, c in pairs.values())
    return value, False


def _undecodable_field(fields: dict) -> str | None:
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


# ---------------------------------------------------------------------------------------------------------------
# Row readers: yield (where, fields | _Malformed); header and structural problems of the file raise DataError.


def _iter_delimited(
    text: str, path: Path, delimiter: str, quoting: int, info: dict
) -> tuple[list[str], Iterator[tuple[_Where, dict | _Malformed]]]:
    """Header and rows of a delimited file (``csv`` handles quoting; one row may span lines when quoted).

    Unquoted files (``csv.QUOTE_NONE``, NSMC) get one physical line per row, so a stray carriage return
    inside a line makes that row malformed instead of shifting every later line number.
    """
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

    def rows() -> Iterator[tuple[_Where, dict | _Malformed]]:
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
                yield _Where(str(path), start), _Malformed(f"csv: {e}")
                continue
            prev = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                blank += 1
                continue
            if len(row) != len(header):
                yield _Where(str(path), start), _Malformed(f"{len(row)} fields, expected {len(header)}")
                continue
            yield _Where(str(path), start), dict(zip(header, row, strict=True))
        if blank:
            info["blank_lines"] = info.get("blank_lines", 0) + blank

    return header, rows()


def _iter_json(text: str, path: Path) -> Iterator[tuple[_Where, dict | _Malformed]]:
    """Objects of a JSON array file or a JSON-lines file, each with its line number."""
    stripped = text.lstrip()
    if not stripped.startswith("["):
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield _Where(str(path), lineno), _Malformed(f"invalid JSON ({e.msg})")
                continue
            yield _Where(str(path), lineno), obj if isinstance(obj, dict) else _Malformed("not a JSON object")
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
            where = _Where(str(path), bisect.bisect_right(newlines, pos - 1) + 1, f"item{item}")
            yield where, obj if isinstance(obj, dict) else _Malformed("not a JSON object")
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


def _require_columns(path: Any, available: Iterable[str], cols: _Columns, hint: str) -> None:
    available = list(available)
    wanted = [("text", cols.text), ("label", cols.label)] + [("id", cols.id)] * bool(cols.id)
    wanted += [("meta", m) for m in cols.meta]
    missing = [f"{what} column {name!r}" for what, name in wanted if name not in available]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} (columns: {', '.join(map(str, available))}){hint}")


# ---------------------------------------------------------------------------------------------------------------
# Rows -> records


class _Builder:
    """Turns raw rows into canonical records, counting every drop (or raising in strict mode)."""

    def __init__(self, task: TaskSpec, report: PrepReport, strict: bool, max_chars: int | None, scheme: str):
        self.task, self.report, self.strict, self.max_chars = task, report, strict, max_chars
        self.scheme = scheme  # rating scheme for nsmc-raw: sentiment, sentiment5 or regression
        self.seen_ids: set[str] = set()

    def drop(self, where: _Where, reason: str, column: str | None, detail: str = "") -> None:
        what = f"field {column!r}: " if column else ""
        message = f"{where}: {what}{reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise DataError(f"{message} [strict mode: no row may be dropped]")
        self.report.dropped[reason] = self.report.dropped.get(reason, 0) + 1
        examples = self.report.info.setdefault("drop_examples", {}).setdefault(reason, [])
        if len(examples) < _MAX_EXAMPLES:
            examples.append(message)

    def add(self, where: _Where, fields: dict | _Malformed, cols: _Columns, default_id: str) -> dict | None:
        self.report.read += 1
        if isinstance(fields, _Malformed):
            return self.drop(where, "malformed_row", None, fields.detail)
        bad = _undecodable_field(fields)
        if bad is not None:
            return self.drop(where, "undecodable_row", bad, "bytes not valid in the file's encoding")
        fields, changed = _nfc(fields)
        if changed:
            self.report.info["nfc_normalised"] = self.report.info.get("nfc_normalised", 0) + 1

        if cols.id:
            rid = fields.get(cols.id)
            if rid is None or (isinstance(rid, str) and not rid.strip()):
                return self.drop(where, "missing_id", cols.id)
            rid = str(rid).strip()
        else:
            rid = default_id
        text = fields.get(cols.text)
        if isinstance(text, int | float) and not isinstance(text, bool):
            text = str(text)
        if text is not None and not isinstance(text, str):
            return self.drop(where, "malformed_row", cols.text, f"text is a {type(text).__name__}")

        if text is None or not text.strip():
            return self.drop(where, "empty_text", cols.text)
        labels, reason, detail = self._label(fields.get(cols.label), cols.label_kind)
        if reason is not None:
            return self.drop(where, reason, cols.label, detail)
        meta = dict(fields[cols.meta_dict]) if cols.meta_dict and isinstance(fields.get(cols.meta_dict), dict) else {}
        meta.update({m: _jsonable(fields.get(m)) for m in cols.meta})
        record = make_record(rid, text, meta=meta, **labels)
        reason = drop_reason(record, self.task)  # the task's own checks: label range, keywords, polarities
        if reason is not None:
            return self.drop(where, reason, cols.label, _short(fields.get(cols.label)))
        if self.max_chars is not None and len(text) > self.max_chars:
            return self.drop(where, "over_length", cols.text, f"{len(text)} > --max_chars {self.max_chars}")
        if rid in self.seen_ids:
            return self.drop(where, "duplicate_id", cols.id, f"id {rid!r} seen before")
        self.seen_ids.add(rid)
        self.report.kept += 1
        return record

    def _label(self, value: Any, kind: str) -> tuple[dict, str | None, str]:
        """Parse a label cell into record fields, or give a drop reason and detail."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return {}, "missing_label", ""
        if kind == "class":
            label = _as_int(value)
            if label is None and isinstance(value, str) and value.strip() in self.task.label_names:
                label = self.task.label_names.index(value.strip())
            if label is None:
                return {}, "unknown_label", _short(value)
            return {"sentiment": label}, None, ""
        if kind == "rating":  # NSMC raw crawl: 1-10 stars
            rating = _as_int(value)
            if rating is None or not 1 <= rating <= 10:
                return {}, "unknown_label", f"rating {_short(value)} not in 1..10"
            if self.scheme == "regression":
                return {"score": float(rating)}, None, ""
            if self.scheme == "sentiment5":
                return {"sentiment": (rating - 1) // 2}, None, ""
            if 5 <= rating <= 8:
                return {}, "rating_out_of_scheme", f"rating {rating}: binary uses 1-4 and 9-10"
            return {"sentiment": int(rating >= 9)}, None, ""
        if kind == "stars5":
            stars = _as_int(value)
            if stars is None or not 1 <= stars <= 5:
                return {}, "unknown_label", f"rating {_short(value)} not in 1..5"
            return {"sentiment": stars - 1}, None, ""
        if kind == "score":
            score = _as_float(value)
            if score is None:
                return {}, "unknown_label", _short(value)
            return {"score": score}, None, ""
        if kind == "aspects":
            aspects, error = _parse_aspects_cell(value, self.task)
            if error:
                return {}, error, _short(value)
            return {"aspects": aspects}, None, ""
        raise ValueError(f"unknown label kind {kind!r}")


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d{1,18}(\.0*)?\s*", value):
        return int(float(value)) if "." in value else int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _parse_aspects_cell(value: Any, task: TaskSpec) -> tuple[list[dict] | None, str | None]:
    """A JSON list (or ``{keyword: polarity}``), or answer text ``디자인1, 배송-1`` -> aspects."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None, "unknown_label"
    if isinstance(value, str):
        parsed = parse_answer(value, task)
        if not parsed.valid:
            return None, parsed.reason if parsed.reason in ("unknown_keyword", "duplicate_keyword") else "unknown_label"
        return parsed.aspects, None
    if isinstance(value, dict):
        value = [{"keyword": k, "polarity": p} for k, p in value.items()]
    if not isinstance(value, list):
        return None, "unknown_label"
    aspects = []
    for a in value:
        if not isinstance(a, dict) or "keyword" not in a:
            return None, "unknown_label"
        polarity = _as_int(a.get("polarity"))
        aspects.append({"keyword": a["keyword"], "polarity": a.get("polarity") if polarity is None else polarity})
    return aspects, None  # keyword/polarity/duplicate checks: records.drop_reason


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def _short(value: Any, n: int = 40) -> str:
    s = repr(value)
    return s if len(s) <= n else s[: n - 3] + "..."


def _progress(rows: Iterable, desc: str) -> Iterable:
    return tqdm(rows, desc=desc, unit=" rows", mininterval=1.0, leave=False)


# ---------------------------------------------------------------------------------------------------------------
# Sources


def _task_columns(
    task: TaskSpec,
    available: Iterable[str],
    text_column: str | None,
    label_column: str | None,
    id_column: str | None,
    aspects_column: str | None,
    score_column: str | None,
    meta_columns: list[str] | None,
) -> _Columns:
    """Columns for user-named sources: the task's target column is the task-specific option,
    else ``label_column``, else the first of the usual names that the input has."""
    available = set(available)
    kind, option, candidates = {
        "sentiment": ("class", None, ("label", "sentiment")),
        "sentiment5": ("class", None, ("label", "sentiment")),
        "aspects": ("aspects", aspects_column, ("aspects",)),
        "regression": ("score", score_column, ("score", "label")),
    }[task.name]
    label = option or label_column or next((c for c in candidates if c in available), candidates[0])
    rid = id_column or ("id" if "id" in available else None)
    meta_dict = "meta" if "meta" in available and "meta" not in (meta_columns or []) else None
    return _Columns(text=text_column or "text", label=label, label_kind=kind, id=rid, meta=list(meta_columns or []),
                    meta_dict=meta_dict)  # fmt: skip


_HINT = "; name them with --text_column / --label_column / --aspects_column / --score_column / --id_column"


def read_source(
    source: str,
    input: str | Path | None,
    task: TaskSpec,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    aspects_column: str | None = None,
    score_column: str | None = None,
    meta_columns: list[str] | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    strict: bool = False,
    max_chars: int | None = None,
    seed: int = 0,
    n: int = 10000,
    hf_split: str | None = None,
    hf_config: str | None = None,
) -> tuple[dict[str | None, list[dict]], PrepReport]:
    """Read one source into canonical records.

    Returns ``{split: records}`` (key ``None`` when the source has no splits of its own; ``synthetic``
    and multi-split ``datasets`` keep theirs) and the ``PrepReport``.
    """
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    report = PrepReport()
    builder = _Builder(task, report, strict, max_chars, scheme=task.name)
    out: dict[str | None, list[dict]] = {}
    col_opts = dict(text_column=text_column, label_column=label_column, id_column=id_column,
                    aspects_column=aspects_column, score_column=score_column, meta_columns=meta_columns)  # fmt: skip

    if source == "synthetic":
        from reviewtune.synthetic import synthetic_splits

        keywords = task.keywords if task.name == "aspects" else None
        splits = synthetic_splits(n=n, seed=seed, keywords=keywords)
        for name, rows in splits.items():
            cols = _task_columns(task, rows[0].keys() if rows else ("id", "text"), text_column="text",
                                 label_column=None, id_column="id", aspects_column="aspects", score_column="score",
                                 meta_columns=None)  # fmt: skip
            if task.name == "sentiment":
                cols.label = "sentiment"
            elif task.name == "sentiment5":  # the generator's 1-5 star rating (its `sentiment` is binary)
                cols.label, cols.label_kind = "score", "stars5"
            kept = (builder.add(_Where(f"synthetic[{name}]", item=f"row {i}"), dict(r), cols, f"{name}-{i}")
                    for i, r in enumerate(rows, 1))  # fmt: skip
            out[name] = [r for r in kept if r is not None]
        report.check()
        return out, report

    if input is None:
        raise DataError(f"--input is required for source {source}")

    if source == "hf":
        for name, ds in _load_hf(str(input), hf_split, hf_config).items():
            cols = _task_columns(task, ds.column_names, **col_opts)
            _require_columns(f"{input}" + (f"[{name}]" if name else ""), ds.column_names, cols, _HINT)
            label = f"{input}[{name}]" if name else str(input)
            kept = (builder.add(_Where(label, item=f"row {i}"), row, cols, f"{name or 'row'}-{i}")
                    for i, row in enumerate(_progress(ds, f"reading {label}"), 1))  # fmt: skip
            out[name] = [r for r in kept if r is not None]
        report.check()
        return out, report

    path = Path(input)
    text, info = decode_file(path, encoding)
    report.info.update(info)
    stem = path.name.split(".")[0]
    if source == "nsmc":
        if task.name not in ("sentiment", "sentiment5"):
            raise DataError(
                f"source nsmc has 0/1 (or 0..4) labels: use --task sentiment or sentiment5, not {task.name}"
            )
        header, rows = _iter_delimited(text, path, "\t", csv.QUOTE_NONE, report.info)
        if header != NSMC_HEADER:
            raise DataError(f"{path}:1: expected the NSMC header 'id<TAB>document<TAB>label', got {header!r}; "
                            "for other tab-separated files use --source csv --delimiter '\\t'")  # fmt: skip
        cols = _Columns(text="document", label="label", label_kind="class", id="id")
    elif source == "csv":
        sep = delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
        sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)
        header, rows = _iter_delimited(text, path, sep, csv.QUOTE_MINIMAL, report.info)
        cols = _task_columns(task, header, **col_opts)
        _require_columns(path, header, cols, _HINT)
    else:  # nsmc-raw, jsonl
        items = list(_iter_json(text, path))
        keys = dict.fromkeys(k for _, f in items if isinstance(f, dict) for k in f)
        if source == "nsmc-raw":
            if task.name == "aspects":
                raise DataError("source nsmc-raw has star ratings: use --task sentiment, sentiment5 or regression")
            cols = _Columns(text=text_column or "review", label=label_column or score_column or "rating",
                            label_kind="rating", id=id_column or ("id" if "id" in keys else None),
                            meta=list(meta_columns or []))  # fmt: skip
        else:
            cols = _task_columns(task, keys, **col_opts)
        if items:
            _require_columns(path, keys, cols, _HINT)
        rows = iter(items)
    kept = (builder.add(where, fields, cols, f"{stem}-{where.line}" if where.item is None else f"{stem}-{where.item}")
            for where, fields in _progress(rows, f"reading {path.name}"))  # fmt: skip
    out[None] = [r for r in kept if r is not None]
    report.check()
    return out, report


def _load_hf(name_or_path: str, split: str | None, config: str | None) -> dict[str | None, Any]:
    """``load_from_disk`` for a saved dataset directory, else ``load_dataset``; returns ``{split: Dataset}``."""
    import datasets

    p = Path(name_or_path)
    builders = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
    if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
        ds = datasets.load_from_disk(str(p))
        if split is not None and isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{p}: no split {split!r} (splits: {', '.join(ds)})")
            ds = ds[split]
    elif p.is_file() and p.suffix.lower() in builders:  # one local data file
        ds = datasets.load_dataset(builders[p.suffix.lower()], data_files=str(p), split=split or "train")
    else:
        ds = datasets.load_dataset(name_or_path, config, split=split)
    if isinstance(ds, datasets.DatasetDict):
        if len(ds) == 1:
            return {None: next(iter(ds.values()))}
        return dict(ds.items())
    return {None: ds}


def download_nsmc(dest: str | Path, overwrite: bool = False) -> dict[str, Path]:
    """Download NSMC's ``ratings_train.txt`` and ``ratings_test.txt`` (CC0, github e9t/nsmc) into ``dest``.

    For users who are online; then ``prepare("nsmc", dest / "ratings_train.txt", ...)``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, url in NSMC_URLS.items():
        target = dest / name
        paths[name.removesuffix(".txt")] = target
        if target.is_file() and not overwrite:
            continue
        with urllib.request.urlopen(url, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".tmp")
            try:
                with open(fd, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
                    while block := resp.read(1 << 16):
                        f.write(block)
                        bar.update(len(block))
                Path(tmp).replace(target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    return paths


# ---------------------------------------------------------------------------------------------------------------
# Splits and information


def parse_split_spec(spec: str) -> dict[str, float]:
    """``"train=0.8,validation=0.1,test=0.1"`` -> ``{"train": 0.8, ...}`` (fractions must sum to 1)."""
    fractions: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            frac = float(value)
        except ValueError:
            frac = -1.0
        if not sep or not name or not 0 < frac <= 1 or name in fractions or not re.fullmatch(r"[\w.-]+", name):
            raise DataError(f"bad --split {spec!r}: expected name=fraction,... like train=0.8,validation=0.1,test=0.1")
        fractions[name] = frac
    if not math.isclose(sum(fractions.values()), 1.0, abs_tol=1e-6):
        raise DataError(f"bad --split {spec!r}: fractions sum to {sum(fractions.values()):g}, not 1")
    return fractions


def stratify_key(record: dict, task: TaskSpec) -> str:
    """The label a split is stratified by: the class; for aspects the overall polarity sign."""
    if task.name in ("sentiment", "sentiment5"):
        return str(record["sentiment"])
    if task.name == "aspects":
        total = sum(a["polarity"] for a in record["aspects"])
        return "none" if not record["aspects"] else ("neg" if total < 0 else "pos" if total > 0 else "neutral")
    return ""  # regression: binned by rank in split_records


def split_records(
    records: list[dict], fractions: dict[str, float], seed: int, task: TaskSpec
) -> tuple[dict[str, list[dict]], bool, list[str]]:
    """Seeded split stratified by label (``sklearn.model_selection.train_test_split``).

    Returns ``({name: records}, stratified, pooled)``; input order is kept inside each split. When a
    label is too rare to spread over the splits, the rare labels are pooled into one stratum (listed in
    ``pooled``), and as a last resort the split is not stratified (``stratified=False``).
    """
    import numpy as np
    from sklearn.model_selection import train_test_split

    n = len(records)
    # Exact integer sizes (largest remainder), so sizes do not depend on sklearn's rounding.
    raw = [f * n for f in fractions.values()]
    sizes = [int(x) for x in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - sizes[i], reverse=True)[: n - sum(sizes)]:
        sizes[i] += 1
    if task.name == "regression":
        scores = np.array([r["score"] for r in records], dtype=float)
        ranks = scores.argsort(kind="stable").argsort(kind="stable")
        keys = [str(int(r * 5 // max(n, 1))) for r in ranks]
    else:
        keys = [stratify_key(r, task) for r in records]
    counts = collections.Counter(keys)
    rare = sorted(k for k, c in counts.items() if c < 2 * len(fractions))
    pooled = [k if k not in rare else "rare" for k in keys] if rare and len(rare) < len(counts) else None

    stratified, pooled_used = True, False
    remaining = np.arange(n)
    out: dict[str, list[dict]] = {}
    for name, size in zip(fractions, sizes, strict=True):
        if size == len(remaining) or size == 0:  # the last split takes the rest
            take, remaining = remaining[:size], remaining[size:]
        else:
            options = [keys, pooled, None] if pooled else [keys, None]
            for strata in options:
                try:
                    take, remaining = train_test_split(
                        remaining,
                        train_size=size,
                        random_state=seed,
                        stratify=strata and [strata[j] for j in remaining],
                    )
                    break
                except ValueError:  # a stratum too small for the requested sizes
                    continue
            stratified = stratified and strata is not None
            pooled_used = pooled_used or strata is pooled
        out[name] = [records[j] for j in sorted(take)]
    return out, stratified, rare if stratified and pooled_used else []


def label_counts(records: list[dict], task: TaskSpec) -> dict:
    """Label distribution of kept records, for the report."""
    if task.name in ("sentiment", "sentiment5"):
        c = collections.Counter(r["sentiment"] for r in records)
        return {task.label_names[k]: c[k] for k in range(len(task.label_names))}
    if task.name == "aspects":
        kw = collections.Counter(a["keyword"] for r in records for a in r["aspects"])
        pol = collections.Counter(a["polarity"] for r in records for a in r["aspects"])
        return {
            "keywords": {k: kw[k] for k in task.keywords},
            "polarities": {str(p): pol[p] for p in task.polarities},
            "no_aspects": sum(1 for r in records if not r["aspects"]),
        }
    scores = [r["score"] for r in records]
    if not scores:
        return {"n": 0}
    return {"n": len(scores), "mean": sum(scores) / len(scores), "min": min(scores), "max": max(scores)}


def text_overlap(a: list[dict], b: list[dict]) -> int:
    """How many records of ``b`` have a text (stripped) that also occurs in ``a``."""
    texts = {r["text"].strip() for r in a}
    return sum(1 for r in b if r["text"].strip() in texts)


def _text_info(splits: dict[str | None, list[dict]], task: TaskSpec) -> dict:
    """Duplicate texts and texts shared between splits: reported, never dropped (comparability)."""
    info: dict[str, Any] = {}
    seen: dict[str, Any] = {}
    dup = conflicting = 0
    label_key = {"sentiment": "sentiment", "sentiment5": "sentiment", "aspects": "aspects", "regression": "score"}
    for records in splits.values():
        for r in records:
            t = r["text"].strip()
            label = json.dumps(r[label_key[task.name]], sort_keys=True)
            if t in seen:
                dup += 1
                conflicting += seen[t] != label
            else:
                seen[t] = label
    info["duplicate_texts"] = dup
    info["duplicate_texts_with_other_label"] = conflicting
    names = [s for s in splits if s is not None]
    if len(names) > 1:
        info["split_overlap"] = {
            f"{a}/{b}": text_overlap(splits[a], splits[b]) for i, a in enumerate(names) for b in names[i + 1 :]
        }
        if "train" in splits and "test" in splits:
            info["train_test_overlap"] = info["split_overlap"].get("train/test")
    return info


# ---------------------------------------------------------------------------------------------------------------
# prepare: the data CLI's logic


def _csv_list(value: str | list[str] | None) -> list[str] | None:
    if value is None or isinstance(value, list):
        return value
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def prepare(
    source: str,
    input: str | Path | None,
    task: str | TaskSpec,
    out: str | Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    id_column: str | None = None,
    aspects_column: str | None = None,
    score_column: str | None = None,
    meta_columns: str | list[str] | None = None,
    delimiter: str | None = None,
    encoding: str = "utf-8",
    strict: bool = False,
    seed: int = 0,
    n: int = 10000,
    keywords: str | list[str] | None = None,
    label_names: str | list[str] | None = None,
    instruction: str | None = None,
    max_chars: int | None = None,
    split: str | None = None,
    hf_split: str | None = None,
    hf_config: str | None = None,
) -> dict:
    """Read ``source``, validate, optionally split, and write ``out``; returns the report written.

    Writes ``out/records.jsonl``, ``out/instructions.jsonl`` (id, prompt, completion) and
    ``out/prep_report.json``; with splits (``split="train=0.8,validation=0.1,test=0.1"``, or a source
    that has its own) the first two go under ``out/<split>/`` and the one report holds per-split counts.
    Comma-separated strings are accepted for ``meta_columns``, ``keywords`` and ``label_names``.
    """
    if isinstance(task, str):
        task = get_task(task, instruction=instruction, label_names=_csv_list(label_names), keywords=_csv_list(keywords))
    fractions = parse_split_spec(split) if split else None
    if fractions and source == "synthetic":
        raise DataError("the synthetic source writes its own train/validation/test (its test set uses phrasings "
                        "never seen in training); do not pass --split")  # fmt: skip
    if max_chars is not None and max_chars < 1:
        raise DataError(f"--max_chars must be positive, got {max_chars}")
    splits, report = read_source(
        source, input, task, text_column=text_column, label_column=label_column, id_column=id_column,
        aspects_column=aspects_column, score_column=score_column, meta_columns=_csv_list(meta_columns),
        delimiter=delimiter, encoding=encoding, strict=strict, max_chars=max_chars, seed=seed, n=n,
        hf_split=hf_split, hf_config=hf_config,
    )  # fmt: skip
    if fractions:
        if list(splits) != [None]:
            raise DataError(f"{input} already has splits ({', '.join(map(str, splits))}); "
                            "pick one with --hf_split to split it again")  # fmt: skip
        splits, stratified, pooled = split_records(splits[None], fractions, seed, task)
        report.info["split_stratified"] = stratified
        if pooled:
            report.info["split_pooled_labels"] = pooled
    report.info.update(_text_info(splits, task))

    out = Path(out)
    data_files: dict[str, Any] = {"input": input} if input is not None and Path(input).is_file() else {}
    for name, records in splits.items():
        d = out / name if name is not None else out
        atomic_write_jsonl(d / "records.jsonl", records)
        instructions = ({"id": r["id"], **{k: v for k, v in to_instruction(r, task).items() if k != "shortened"}}
                        for r in records)  # fmt: skip
        atomic_write_jsonl(d / "instructions.jsonl", instructions)
        data_files[f"{name}/records.jsonl" if name else "records.jsonl"] = d / "records.jsonl"

    result = {
        **report.to_dict(),
        "labels": label_counts([r for rs in splits.values() for r in rs], task),
        "source": source,
        "input": None if input is None else str(input),
        "task": task.to_dict(),
        "options": {
            "text_column": text_column, "label_column": label_column, "id_column": id_column,
            "aspects_column": aspects_column, "score_column": score_column,
            "meta_columns": _csv_list(meta_columns), "delimiter": delimiter, "encoding": encoding, "strict": strict,
            "max_chars": max_chars, "split": split, "n": n if source == "synthetic" else None,
            "hf_split": hf_split, "hf_config": hf_config,
        },
        "provenance": provenance(seed, data_files),
    }  # fmt: skip
    if list(splits) != [None]:
        result["splits"] = {name: {"kept": len(rs), "labels": label_counts(rs, task)} for name, rs in splits.items()}
    atomic_write_json(out / "prep_report.json", result)
    logger.info("prepared %s: read %d, kept %d, dropped %s", input or source, report.read, report.kept, report.dropped)
    if report.kept == 0:
        logger.warning("no record kept from %s; see %s", input or source, out / "prep_report.json")
    return result


def summary_line(report: dict) -> str:
    """One human line: ``read N = kept K + dropped D (reason n, ...)``."""
    dropped = report["dropped"]
    detail = ", ".join(f"{k} {v}" for k, v in dropped.items())
    line = f"read {report['read']} = kept {report['kept']} + dropped {sum(dropped.values())}"
    line += f" ({detail})" if detail else ""
    if "splits" in report:
        line += "; " + ", ".join(f"{k} {v['kept']}" for k, v in report["splits"].items())
    return line
