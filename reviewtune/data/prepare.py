"""``prepare``: one source read, validated (nothing lost: read = kept + dropped), optionally split, and written
as records + instruction text + ``prep_report.json``. The logic of ``data_prep/prepare.py``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from reviewtune.atomic import atomic_write_json, atomic_write_jsonl, read_json
from reviewtune.data.decoding import DataError
from reviewtune.data.readers import read_source
from reviewtune.data.splits import label_counts, parse_split_spec, split_records, text_info
from reviewtune.prompts import to_instruction
from reviewtune.provenance import provenance
from reviewtune.tasks import TaskSpec, get_task

logger = logging.getLogger(__name__)

__all__ = ["DataError", "prepare", "summary_line"]


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
    label_scheme: str = "auto",
) -> dict:
    """Read ``source``, validate, optionally split, and write ``out``; returns the report written.

    Writes ``out/records.jsonl``, ``out/instructions.jsonl`` (id, prompt, completion) and
    ``out/prep_report.json``; with splits (``split="train=0.8,validation=0.1,test=0.1"``, or a source
    that has its own) the first two go under ``out/<split>/`` and the one report holds per-split counts.
    Comma-separated strings are accepted for ``meta_columns``, ``keywords`` and ``label_names``. Outputs of an
    earlier run into ``out`` that this one does not write again (another split) are removed, so ``out`` holds one
    preparation. An input with no rows, or none usable, is a ``DataError`` (the report is written first).
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
        hf_split=hf_split, hf_config=hf_config, label_scheme=label_scheme,
    )  # fmt: skip
    if report.read == 0:
        raise DataError(f"{input or source}: no records (an empty file, or a header and nothing else)")
    if fractions:
        if list(splits) != [None]:
            raise DataError(f"{input} already has splits ({', '.join(map(str, splits))}); "
                            "pick one with --hf_split to split it again")  # fmt: skip
        splits, stratified, pooled = split_records(splits[None], fractions, seed, task)
        report.info["split_stratified"] = stratified
        if pooled:
            report.info["split_pooled_labels"] = pooled
    report.info.update(text_info(splits, task))

    out = Path(out)
    _remove_stale_outputs(out, list(splits))
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
            "hf_split": hf_split, "hf_config": hf_config, "label_scheme": label_scheme,
        },
        "provenance": provenance(seed, data_files),
    }  # fmt: skip
    if list(splits) != [None]:
        result["splits"] = {name: {"kept": len(rs), "labels": label_counts(rs, task)} for name, rs in splits.items()}
    atomic_write_json(out / "prep_report.json", result)
    logger.info("prepared %s: read %d, kept %d, dropped %s", input or source, report.read, report.kept, report.dropped)
    if report.kept == 0:
        raise DataError(f"{input or source}: none of {report.read} rows is usable ({summary_line(result)}); "
                        f"see {out / 'prep_report.json'}")  # fmt: skip
    return result


OUTPUT_FILES = ("records.jsonl", "instructions.jsonl")


def _remove_stale_outputs(out: Path, split_names: list[str | None]) -> None:
    """Remove what an earlier ``prepare`` into ``out`` wrote that this one will not overwrite: the split folders
    its ``prep_report.json`` names (only our files in them), or top-level records when splits are written now."""
    old_report = out / "prep_report.json"
    if not old_report.is_file():
        return
    old_splits = list((read_json(old_report).get("splits") or {}).keys()) or [None]
    for name in set(old_splits) - set(split_names):
        folder = out / name if name is not None else out
        for file_name in OUTPUT_FILES:
            (folder / file_name).unlink(missing_ok=True)
        if name is not None and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def summary_line(report: dict) -> str:
    """One human line: ``read N = kept K + dropped D (reason n, ...)``."""
    dropped = report["dropped"]
    detail = ", ".join(f"{k} {v}" for k, v in dropped.items())
    line = f"read {report['read']} = kept {report['kept']} + dropped {sum(dropped.values())}"
    line += f" ({detail})" if detail else ""
    if "splits" in report:
        line += "; " + ", ".join(f"{k} {v['kept']}" for k, v in report["splits"].items())
    return line
