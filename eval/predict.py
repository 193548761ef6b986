"""Predictions of any run directory (generative or classifier) on a records file, one JSON line per record.

    python eval/predict.py --run runs/sft_qlora_default --input test.jsonl --out predictions.jsonl
    python eval/predict.py --run runs/sft_nsmc --input test.jsonl --out loglik.jsonl --scoring loglik
    python eval/predict.py --run runs/sft_qlora_default --input test.jsonl --out c.jsonl --scoring constrained

Each line: ``{"id", "label", "probs", "aspects", "score", "invalid", "invalid_reason", "raw"}`` (the
harness's format; ``eval/compare.py`` uses the same code). Only ``id`` and ``text`` are needed per record:
gold labels are not read. An answer the model's parser cannot read is ``invalid`` with its reason.
"""

from __future__ import annotations

import reviewtune  # noqa: F401  (first: its __init__ sets OpenMP and warning defaults before torch loads)

# isort: split

import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from reviewtune.atomic import atomic_write_jsonl
from reviewtune.cli import argument_parser, run_cli
from reviewtune.evaluation.predict import predict
from reviewtune.evaluation.systems import load_system
from reviewtune.records import load_task_records

logger = logging.getLogger("reviewtune.predict")


@dataclass
class PredictArguments:
    run: str = field(metadata={"help": "Run directory written by recipes/sft_qlora.py or recipes/classify_roberta.py."})
    input: str = field(metadata={"help": "records.jsonl to predict (fields id and text)."})
    out: str = field(metadata={"help": "predictions.jsonl to write (atomically)."})
    scoring: str | None = field(
        default=None,
        metadata={
            "help": "generate, loglik or constrained for generative runs (default generate); classifiers ignore it."
        },
    )
    batch_size: int = field(default=16, metadata={"help": "Reviews per batch."})
    merged: bool = field(default=False, metadata={"help": "Generative runs: use merged/ instead of base + adapter."})
    encoding: str = field(default="utf-8", metadata={"help": "Input encoding: utf-8 (BOM accepted), cp949, euc-kr."})


def main(argv: list[str] | None = None) -> list[dict]:
    usage = "python eval/predict.py --run RUN --input FILE --out FILE [--scoring MODE]"
    parser = argument_parser(HfArgumentParser, PredictArguments, usage)
    (args,) = parser.parse_args_into_dataclasses(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Records with a text; empty texts and repeated ids are dropped and counted (read = kept + dropped).
    records, report = load_task_records(args.input, None, encoding=args.encoding)
    system = load_system(args.run, merged=args.merged)
    scoring = args.scoring
    if system.kind == "classifier" and scoring in ("generate", "loglik", "constrained"):
        logger.warning("%s is a classifier: scoring %r ignored", args.run, scoring)
        scoring = None
    predictions = predict(system, records, scoring=scoring, batch_size=args.batch_size, progress=True)
    atomic_write_jsonl(args.out, predictions)
    invalid = Counter(p["invalid_reason"] for p in predictions if p["invalid"])
    shortened = sum(p["shortened"] for p in predictions)
    dropped = ", ".join(f"{k} {v}" for k, v in report["dropped"].items())
    print(f"{args.input}: read {report['read']} = kept {report['kept']} + dropped {report['read'] - report['kept']}"
          + (f" ({dropped})" if dropped else ""))  # fmt: skip
    print(f"{len(predictions)} predictions written to {args.out}; invalid: {sum(invalid.values())} {dict(invalid)}; "
          f"reviews cut to the model's input limit: {shortened} (field 'shortened')")  # fmt: skip
    return predictions


if __name__ == "__main__":
    sys.exit(run_cli(main))
