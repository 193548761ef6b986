"""Merge labelled selections back into the training records, so the recipes can be re-run on them.

    python data_prep/merge_labels.py --train data/train/records.jsonl --labelled to_label.jsonl \
        --task aspects --out data/round2/train/records.jsonl

``--labelled`` files are what ``data_prep/select_for_labeling.py`` wrote, with labels filled in
(``sentiment`` / ``aspects`` / ``score``); the ``selection`` field is dropped and ``meta.labelled_in``
names the file a record came from. Records still without a valid label are dropped and counted by
reason (``missing_label``, ``unknown_keyword``, ...). An id that is already in the training records, or
repeated across the labelled files, is a duplicate: by default the merge is refused (exit status 2, with
the count and the first ids; nothing written); ``--on_duplicate skip`` leaves the labelled copy out and
``--on_duplicate replace`` lets it replace the training record (corrections), both counted. Labelled
read = added + replaced + dropped, per file, in ``<out>.merge_report.json``.

New records go after the training records (``--new_first`` puts them first: useful when the recipe's
``max_train_samples`` caps the training set).
"""

from __future__ import annotations

import collections
import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from transformers import HfArgumentParser

from reviewtune.atomic import atomic_write_json
from reviewtune.cli import argument_parser, run_cli
from reviewtune.provenance import provenance
from reviewtune.records import drop_reason, read_records, sort_aspects, write_records
from reviewtune.tasks import TASKS, TaskSpec, get_task


@dataclass
class MergeArguments:
    train: str = field(metadata={"help": "Training records.jsonl the labelled records join."})
    labelled: list[str] = field(metadata={"help": "One or more labelled selection files (JSONL records)."})
    out: str = field(metadata={"help": "Output records.jsonl (may be --train itself; written atomically)."})
    task: str | None = field(default=None, metadata={"help": f"Task the labels are for: {', '.join(TASKS)}."})
    run: str | None = field(
        default=None, metadata={"help": "Take the task (keywords, labels) from this run's task_spec."}
    )
    keywords: list[str] | None = field(default=None, metadata={"help": "Aspect keywords, if not the defaults."})
    label_names: list[str] | None = field(default=None, metadata={"help": "Class names, if not the defaults."})
    on_duplicate: Literal["error", "skip", "replace"] = field(
        default="error", metadata={"help": "Duplicate ids: refuse the merge, skip the labelled copy, or replace."}
    )
    new_first: bool = field(default=False, metadata={"help": "Put the labelled records before the training ones."})


class MergeError(ValueError):
    pass


def merge(
    train: list[dict], labelled: dict[str, list[dict]], task: TaskSpec, on_duplicate: str = "error",
    new_first: bool = False,
) -> tuple[list[dict], dict]:  # fmt: skip
    """Merged records and the counts. ``labelled`` maps a file name to its records. Raises :class:`MergeError`
    naming the duplicate count when ``on_duplicate == "error"`` and there are duplicates."""
    train_ids = {str(r["id"]) for r in train}
    seen: set[str] = set()
    added, replacements = [], {}
    per_file = {}
    dup_train, dup_labelled = [], []
    for name, rows in labelled.items():
        counts = {"read": len(rows), "added": 0, "replaced": 0, "dropped": collections.Counter()}
        for r in rows:
            rid = str(r["id"])
            record = {k: v for k, v in r.items() if k != "selection"}
            record["meta"] = {**(record.get("meta") or {}), "labelled_in": name}
            reason = drop_reason(record, task)
            if reason is None and rid in seen:
                reason = "duplicate_id_in_labelled"
                dup_labelled.append(rid)
            elif reason is None and rid in train_ids:
                dup_train.append(rid)
                if on_duplicate != "replace":
                    reason = "duplicate_id_in_train"
            if reason is not None:
                counts["dropped"][reason] += 1
                continue
            seen.add(rid)
            if record.get("aspects"):
                record["aspects"] = sort_aspects(record["aspects"], task)
            if rid in train_ids:
                replacements[rid] = record
                counts["replaced"] += 1
            else:
                added.append(record)
                counts["added"] += 1
        counts["dropped"] = dict(counts["dropped"])
        per_file[name] = counts
    if on_duplicate == "error" and (dup_train or dup_labelled):
        parts = []
        if dup_train:
            parts.append(
                f"{len(dup_train)} labelled id(s) already in the training records (e.g. {', '.join(dup_train[:5])})"
            )
        if dup_labelled:
            parts.append(f"{len(dup_labelled)} repeated across the labelled files (e.g. {', '.join(dup_labelled[:5])})")
        raise MergeError(f"refused: {'; '.join(parts)}; nothing written (--on_duplicate skip or replace to go on)")
    base = [replacements.get(str(r["id"]), r) for r in train]
    merged = added + base if new_first else base + added
    report = {
        "train": len(train),
        "labelled": per_file,
        "added": len(added),
        "replaced": len(replacements),
        "dropped": sum(sum(c["dropped"].values()) for c in per_file.values()),
        "duplicates": {"in_train": len(dup_train), "in_labelled": len(dup_labelled)},
        "out": len(merged),
        "on_duplicate": on_duplicate,
    }
    return merged, report


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    usage = "python data_prep/merge_labels.py --train FILE --labelled FILE [FILE ...] --out FILE [--OPTION VALUE]"
    (args,) = argument_parser(HfArgumentParser, MergeArguments, usage).parse_args_into_dataclasses(args=argv)
    if args.run:
        task = TaskSpec.load(args.run)
    elif args.task:
        task = get_task(args.task, keywords=args.keywords, label_names=args.label_names)
    else:
        raise MergeError("give --task or --run (the task the labels are for)")
    train = read_records(args.train)
    labelled = {}
    for path in args.labelled:
        if Path(path).name in labelled:
            raise MergeError(f"two labelled files are named {Path(path).name}; rename one")
        labelled[Path(path).name] = read_records(path)
    merged, report = merge(train, labelled, task, args.on_duplicate, args.new_first)
    out = Path(args.out)
    files = {"train": args.train, **{f"labelled:{p}": p for p in args.labelled}}
    # Provenance hashes the inputs before --out (which may be --train) is written.
    report = {**report, "arguments": asdict(args), "provenance": provenance(data_files=files)}
    write_records(out, merged)
    report_path = atomic_write_json(out.with_name(out.stem + ".merge_report.json"), report)
    for name, c in report["labelled"].items():
        print(f"{name}: read {c['read']}, added {c['added']}, replaced {c['replaced']}, dropped {c['dropped'] or 0}")
    print(f"{out}: {report['out']} records ({report['train']} training + {report['added']} new, "
          f"{report['replaced']} replaced); report {report_path}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
