"""Turn review data into canonical records and trl prompt/completion pairs.

    python data_prep/prepare.py --source nsmc --input ratings_train.txt --task sentiment --out data/nsmc \
        --split train=0.9,validation=0.1

Sources: nsmc (NSMC TSV), nsmc-raw (NSMC raw crawl JSON, ratings 1-10), csv, jsonl, hf (a ``datasets``
name or local path) and synthetic (the bundled shopping reviews; always train/validation/test).
Writes DIR/records.jsonl, DIR/instructions.jsonl (id, prompt, completion) and DIR/prep_report.json
(read, kept, dropped: reason -> count, info, provenance); with --split, DIR/<split>/ per split.
Exit status 2 on bad input (wrong encoding, missing column, any drop under --strict).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from typing import Literal

from transformers import HfArgumentParser

from reviewtune.cli import argument_parser, run_cli
from reviewtune.data.prepare import prepare, summary_line


@dataclass
class PrepareArguments:
    # --- what to read
    source: Literal["nsmc", "nsmc-raw", "csv", "jsonl", "hf", "synthetic"] = field(metadata={"help": "Input format."})
    task: Literal["sentiment", "sentiment5", "aspects", "regression"] = field(metadata={"help": "Target task."})
    out: str = field(metadata={"help": "Output directory."})
    input: str | None = field(default=None, metadata={"help": "Input file, or datasets name/path (not synthetic)."})
    # --- columns (csv, jsonl, hf; nsmc-raw: text/label/id)
    text_column: str | None = field(default=None, metadata={"help": "Review text column, if not text."})
    label_column: str | None = field(
        default=None, metadata={"help": "Label column (class, star rating or score), if not label or sentiment."}
    )
    label_scheme: Literal["auto", "class", "stars5", "rating10"] = field(
        default="auto",
        metadata={
            "help": "How a sentiment label column is read: class (0..n-1 or label names), stars5 (1-5 stars: 1-2 "
            "negative, 4-5 positive, 3 dropped; five levels: 1..5), rating10 (NSMC's 1-10 rule); auto detects it "
            "from the values and says which."
        },
    )
    id_column: str | None = field(
        default=None, metadata={"help": "Id column, if not id (no id column: file name + line)."}
    )
    aspects_column: str | None = field(
        default=None, metadata={"help": "Aspects column (JSON list or answer text '디자인1, 배송-1'), if not aspects."}
    )
    score_column: str | None = field(
        default=None, metadata={"help": "Regression target column, if not score or label."}
    )
    meta_columns: str | None = field(default=None, metadata={"help": "Extra columns kept in meta, e.g. shop,category."})
    delimiter: str | None = field(default=None, metadata={"help": "csv delimiter; unset: ',' ('\\t' for .tsv)."})
    hf_split: str | None = field(default=None, metadata={"help": "hf: the split to read; unset: all of them."})
    hf_config: str | None = field(default=None, metadata={"help": "hf: dataset configuration name."})
    # --- validation
    encoding: str = field(default="utf-8", metadata={"help": "File encoding: utf-8 (BOM accepted), cp949, euc-kr."})
    strict: bool = field(default=False, metadata={"help": "Any dropped row is an error naming file, line, field."})
    max_chars: int | None = field(default=None, metadata={"help": "Drop reviews longer than this (over_length)."})
    # --- task text
    instruction: str | None = field(default=None, metadata={"help": "Override the task's instruction."})
    keywords: str | None = field(default=None, metadata={"help": "Aspect keywords, comma-separated."})
    label_names: str | None = field(default=None, metadata={"help": "Class names, comma-separated."})
    # --- splitting and synthetic data
    split: str | None = field(default=None, metadata={"help": "e.g. train=0.8,validation=0.1,test=0.1 (stratified)."})
    seed: int = field(default=0, metadata={"help": "Seed for --split and the synthetic generator."})
    n: int = field(default=10000, metadata={"help": "synthetic: number of reviews."})


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    usage = "python data_prep/prepare.py --source SOURCE --input FILE --task TASK --out DIR [--OPTION VALUE ...]"
    (args,) = argument_parser(HfArgumentParser, PrepareArguments, usage).parse_args_into_dataclasses(args=argv)
    report = prepare(**asdict(args))
    scheme = report["info"].get("label_scheme")
    if scheme:
        print(f"label column {scheme['column']!r} read as {scheme['rule']} ({scheme['chosen']}; --label_scheme to set)")
    print(f"{args.out}: {summary_line(report)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
