"""Rows -> canonical records: every row kept or dropped with a counted reason (read = kept + sum(dropped)).

Labels are read by the column's kind: class indices or label names, 1-10 ratings (NSMC's rule), 1-5 stars,
aspect lists, scores. In strict mode any drop is a ``DataError`` naming file, line and field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from reviewtune.data.decoding import DataError, nfc, undecodable_field
from reviewtune.data.rows import Malformed, Where
from reviewtune.prompts import parse_answer
from reviewtune.records import drop_reason, make_record
from reviewtune.tasks import TaskSpec

_MAX_EXAMPLES = 3  # drop examples kept per reason in the report


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
class Columns:
    """Where a row's fields come from, and how its label column is read (``class``, ``rating``, ...)."""

    text: str
    label: str
    label_kind: str  # class (0..n-1 or a label name) | rating (1-10 stars) | stars5 (1-5) | aspects | score
    id: str | None = None
    meta: list[str] = field(default_factory=list)
    meta_dict: str | None = None  # a column holding a dict merged into meta (canonical records' "meta")


class RecordBuilder:
    """Turns raw rows into canonical records, counting every drop (or raising in strict mode)."""

    def __init__(self, task: TaskSpec, report: PrepReport, strict: bool, max_chars: int | None, scheme: str):
        self.task, self.report, self.strict, self.max_chars = task, report, strict, max_chars
        self.scheme = scheme  # rating scheme for nsmc-raw: sentiment, sentiment5 or regression
        self.seen_ids: set[str] = set()

    def drop(self, where: Where, reason: str, column: str | None, detail: str = "") -> None:
        what = f"field {column!r}: " if column else ""
        message = f"{where}: {what}{reason}" + (f" ({detail})" if detail else "")
        if self.strict:
            raise DataError(f"{message} [strict mode: no row may be dropped]")
        self.report.dropped[reason] = self.report.dropped.get(reason, 0) + 1
        examples = self.report.info.setdefault("drop_examples", {}).setdefault(reason, [])
        if len(examples) < _MAX_EXAMPLES:
            examples.append(message)

    def add(self, where: Where, fields: dict | Malformed, cols: Columns, default_id: str) -> dict | None:
        self.report.read += 1
        if isinstance(fields, Malformed):
            return self.drop(where, "malformed_row", None, fields.detail)
        bad = undecodable_field(fields)
        if bad is not None:
            return self.drop(where, "undecodable_row", bad, "bytes not valid in the file's encoding")
        fields, changed = nfc(fields)
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
            label = as_int(value)
            if label is None and isinstance(value, str) and value.strip() in self.task.label_names:
                label = self.task.label_names.index(value.strip())
            if label is None:
                return {}, "unknown_label", _short(value)
            return {"sentiment": label}, None, ""
        if kind in ("rating10", "stars5"):
            top = 10 if kind == "rating10" else 5
            rating = as_int(value)
            if rating is None or not 1 <= rating <= top:
                return {}, "unknown_label", f"rating {_short(value)} not in 1..{top}"
            return rating_label(rating, kind, self.scheme)
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


LABEL_SCHEMES = ("auto", "class", "stars5", "rating10")
SCHEME_RULES = {  # how each rating scheme becomes labels, per task (said in the prepare report and on the console)
    ("class", "sentiment"): "class indices (0 부정, 1 긍정) or label names",
    ("class", "sentiment5"): "class indices 0..4 (매우부정..매우긍정) or label names",
    ("stars5", "sentiment"): "1-5 stars: 1-2 부정, 4-5 긍정, 3 dropped as neutral (rating_out_of_scheme)",
    ("stars5", "sentiment5"): "1-5 stars: 1 매우부정, 2 부정, 3 중립, 4 긍정, 5 매우긍정",
    ("stars5", "regression"): "1-5 stars as the score",
    ("rating10", "sentiment"): "1-10 ratings, NSMC's rule: 1-4 부정, 9-10 긍정, 5-8 dropped (rating_out_of_scheme)",
    ("rating10", "sentiment5"): "1-10 ratings: 1-2, 3-4, 5-6, 7-8, 9-10 -> 매우부정..매우긍정",
    ("rating10", "regression"): "1-10 ratings as the score",
}


def rating_label(rating: int, scheme: str, task_name: str) -> tuple[dict, str | None, str]:
    """Record fields for a star rating under ``scheme`` (``stars5`` or ``rating10``) and the task, or a drop."""
    if task_name == "regression":
        return {"score": float(rating)}, None, ""
    if task_name == "sentiment5":
        return {"sentiment": rating - 1 if scheme == "stars5" else (rating - 1) // 2}, None, ""
    negative, positive = ((1, 2), (4, 5)) if scheme == "stars5" else ((1, 4), (9, 10))
    if negative[0] <= rating <= negative[1]:
        return {"sentiment": 0}, None, ""
    if positive[0] <= rating <= positive[1]:
        return {"sentiment": 1}, None, ""
    return {}, "rating_out_of_scheme", f"rating {rating}: binary uses {negative[0]}-{negative[1]} and " + (
        f"{positive[0]}-{positive[1]}"
    )


def detect_label_scheme(values: list[Any], task: TaskSpec, where: str) -> str:
    """``class``, ``stars5`` or ``rating10`` for a label column of a sentiment task, from its values: class indices
    include 0 (binary labels that are all 1 are class 1 too); 1-5 stars start at 1 and reach past the last class
    index; 1-10 ratings reach past 5. Anything else is ambiguous, and a ``DataError`` asks for ``--label_scheme``."""
    present = [v for v in values if v is not None and not (isinstance(v, str) and not v.strip())]
    numbers = [as_int(v) for v in present]
    if not present or any(n is None for n in numbers):  # label names (or junk the builder drops and counts)
        return "class"
    distinct, k = sorted(set(numbers)), len(task.label_names)
    low, high = distinct[0], distinct[-1]
    if low == 0 or (k == 2 and high <= 1):  # a 0 is never a rating (values past the classes are dropped, counted)
        return "class"
    if low >= 1 and high <= 5 and high > k - 1:
        return "stars5"
    if low >= 1 and 5 < high <= 10:
        return "rating10"
    shown = ", ".join(map(str, distinct[:12])) + (", ..." if len(distinct) > 12 else "")
    raise DataError(
        f"{where}: label values {shown} are not clearly class indices (0..{k - 1}), 1-5 stars or 1-10 ratings; "
        "say which with --label_scheme class|stars5|rating10"
    )


def as_int(value: Any) -> int | None:
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
        polarity = as_int(a.get("polarity"))
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
