"""Sources -> records: ``nsmc`` (NSMC TSV), ``nsmc-raw`` (crawl JSON with 1-10 ratings), ``csv``, ``jsonl``,
``hf`` (any ``datasets`` dataset) and ``synthetic`` (the bundled generator), through one decoder and one
record builder, with the ``PrepReport`` of what was read, kept and dropped.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from reviewtune.data.decoding import DataError, decode_file
from reviewtune.data.record_builder import (
    LABEL_SCHEMES,
    SCHEME_RULES,
    Columns,
    PrepReport,
    RecordBuilder,
    detect_label_scheme,
)
from reviewtune.data.rows import Where, iter_delimited, iter_json
from reviewtune.tasks import TaskSpec

SOURCES = ("nsmc", "nsmc-raw", "csv", "jsonl", "hf", "synthetic")
# Every reason a row can be dropped for (``records.drop_reason`` adds unknown_keyword, duplicate_keyword).
DROP_REASONS = (
    "empty_text", "missing_label", "unknown_label", "unknown_keyword", "duplicate_keyword", "duplicate_id",
    "missing_id", "undecodable_row", "malformed_row", "over_length", "rating_out_of_scheme",
)  # fmt: skip
NSMC_HEADER = ["id", "document", "label"]


def progress(rows: Iterable, desc: str) -> Iterable:
    return tqdm(rows, desc=desc, unit=" rows", mininterval=1.0, leave=False)


def require_columns(path: Any, available: Iterable[str], cols: Columns, hint: str) -> None:
    available = list(available)
    wanted = [("text", cols.text), ("label", cols.label)] + [("id", cols.id)] * bool(cols.id)
    wanted += [("meta", m) for m in cols.meta]
    missing = [f"{what} column {name!r}" for what, name in wanted if name not in available]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} (columns: {', '.join(map(str, available))}){hint}")


def task_columns(
    task: TaskSpec,
    available: Iterable[str],
    text_column: str | None,
    label_column: str | None,
    id_column: str | None,
    aspects_column: str | None,
    score_column: str | None,
    meta_columns: list[str] | None,
) -> Columns:
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
    return Columns(text=text_column or "text", label=label, label_kind=kind, id=rid, meta=list(meta_columns or []),
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
    label_scheme: str = "auto",
) -> tuple[dict[str | None, list[dict]], PrepReport]:
    """Read one source into canonical records.

    Returns ``{split: records}`` (key ``None`` when the source has no splits of its own; ``synthetic``
    and multi-split ``datasets`` keep theirs) and the ``PrepReport``. ``label_scheme`` says how a sentiment
    label column is read (``class`` indices/names, ``stars5``, ``rating10``); ``auto`` detects it from the values
    and the report says what was chosen.
    """
    if label_scheme not in LABEL_SCHEMES:
        raise DataError(f"unknown --label_scheme {label_scheme!r}; choose one of {', '.join(LABEL_SCHEMES)}")
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    report = PrepReport()
    builder = RecordBuilder(task, report, strict, max_chars, scheme=task.name)
    out: dict[str | None, list[dict]] = {}
    col_opts = dict(text_column=text_column, label_column=label_column, id_column=id_column,
                    aspects_column=aspects_column, score_column=score_column, meta_columns=meta_columns)  # fmt: skip

    if source == "synthetic":
        from reviewtune.data.synthetic import synthetic_splits

        keywords = task.keywords if task.name == "aspects" else None
        splits = synthetic_splits(n=n, seed=seed, keywords=keywords)
        for name, rows in splits.items():
            cols = task_columns(task, rows[0].keys() if rows else ("id", "text"), text_column="text",
                                 label_column=None, id_column="id", aspects_column="aspects", score_column="score",
                                 meta_columns=None)  # fmt: skip
            if task.name == "sentiment":
                cols.label = "sentiment"
            elif task.name == "sentiment5":  # the generator's 1-5 star rating (its `sentiment` is binary)
                cols.label, cols.label_kind = "score", "stars5"
            kept = (builder.add(Where(f"synthetic[{name}]", item=f"row {i}"), dict(r), cols, f"{name}-{i}")
                    for i, r in enumerate(rows, 1))  # fmt: skip
            out[name] = [r for r in kept if r is not None]
        report.check()
        return out, report

    if input is None:
        raise DataError(f"--input is required for source {source}")

    if source == "hf":
        loaded = _load_hf(str(input), hf_split, hf_config)
        values = []  # every split's labels: one label scheme for the whole dataset
        for name, ds in loaded.items():
            cols = task_columns(task, ds.column_names, **col_opts)
            require_columns(f"{input}[{name}]" if name else str(input), ds.column_names, cols, _HINT)
            values += list(ds[cols.label])
        choose_label_scheme(cols, task, label_scheme, values, str(input), report)
        for name, ds in loaded.items():
            label = f"{input}[{name}]" if name else str(input)
            kept = (builder.add(Where(label, item=f"row {i}"), row, cols, f"{name or 'row'}-{i}")
                    for i, row in enumerate(progress(ds, f"reading {label}"), 1))  # fmt: skip
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
        header, rows = iter_delimited(text, path, "\t", csv.QUOTE_NONE, report.info)
        if header != NSMC_HEADER:
            raise DataError(f"{path}:1: expected the NSMC header 'id<TAB>document<TAB>label', got {header!r}; "
                            "for other tab-separated files use --source csv --delimiter '\\t'")  # fmt: skip
        if label_scheme not in ("auto", "class"):
            raise DataError(f"source nsmc has class labels (0/1 or 0..4): --label_scheme {label_scheme} does not apply")
        cols = Columns(text="document", label="label", label_kind="class", id="id")
    elif source == "csv":
        sep = delimiter or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
        sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)
        header, rows = iter_delimited(text, path, sep, csv.QUOTE_MINIMAL, report.info)
        cols = task_columns(task, header, **col_opts)
        require_columns(path, header, cols, _HINT)
        rows = list(rows)
        values = [f.get(cols.label) for _, f in rows if isinstance(f, dict)]
        choose_label_scheme(cols, task, label_scheme, values, str(path), report)
    else:  # nsmc-raw, jsonl
        items = list(iter_json(text, path))
        keys = dict.fromkeys(k for _, f in items if isinstance(f, dict) for k in f)
        if source == "nsmc-raw":
            if task.name == "aspects":
                raise DataError("source nsmc-raw has star ratings: use --task sentiment, sentiment5 or regression")
            cols = Columns(text=text_column or "review", label=label_column or score_column or "rating",
                            label_kind="rating10", id=id_column or ("id" if "id" in keys else None),
                            meta=list(meta_columns or []))  # fmt: skip
            if label_scheme not in ("auto", "rating10"):
                raise DataError(f"source nsmc-raw has 1-10 ratings; --label_scheme {label_scheme} does not apply")
        else:
            cols = task_columns(task, keys, **col_opts)
        if items:
            require_columns(path, keys, cols, _HINT)
            if source == "jsonl":
                values = [f.get(cols.label) for _, f in items if isinstance(f, dict)]
                choose_label_scheme(cols, task, label_scheme, values, str(path), report)
        rows = iter(items)
    kept = (builder.add(where, fields, cols, f"{stem}-{where.line}" if where.item is None else f"{stem}-{where.item}")
            for where, fields in progress(rows, f"reading {path.name}"))  # fmt: skip
    out[None] = [r for r in kept if r is not None]
    report.check()
    return out, report


def choose_label_scheme(
    cols: Columns, task: TaskSpec, scheme: str, values: list[Any], where: str, report: PrepReport
) -> None:
    """Set how a label column is read: for the sentiment tasks as given, or detected from ``values`` (``auto``);
    a regression score stays a number unless a rating scheme is named (then its range is checked). The report
    (``info["label_scheme"]``) says which rule turned the values into labels."""
    if cols.label_kind == "score":
        if scheme == "class":
            raise DataError(f"{where}: --label_scheme class does not apply to task {task.name} (its label is a score)")
        if scheme == "auto":
            return
        chosen = scheme
    elif cols.label_kind == "class":
        chosen = detect_label_scheme(values, task, f"{where}: column {cols.label!r}") if scheme == "auto" else scheme
    else:
        return
    cols.label_kind = chosen
    report.info["label_scheme"] = {
        "column": cols.label,
        "scheme": chosen,
        "chosen": "detected from the values" if scheme == "auto" else "given",
        "rule": SCHEME_RULES[(chosen, task.name)],
    }


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
