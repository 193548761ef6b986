"""Predictions of any run directory (generative or classifier) on a records file, one JSON line per record.

    python eval/predict.py --run runs/sft_qlora_default --input test.jsonl --out predictions.jsonl
    python eval/predict.py --run runs/sft_nsmc --input test.jsonl --out loglik.jsonl --scoring loglik
    python eval/predict.py --run runs/sft_qlora_default --input test.jsonl --out c.jsonl --scoring constrained

Each line: ``{"id", "label", "probs", "aspects", "score", "invalid", "invalid_reason", "raw"}`` (the
harness's format; ``eval/compare.py`` uses the same code). Only ``id`` and ``text`` are needed per record:
gold labels are not read. An answer the model's parser cannot read is ``invalid`` with its reason.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from reviewtune.atomic import atomic_write_jsonl
from reviewtune.records import read_records
from reviewtune.scoring import load_system, predict

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


def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = HfArgumentParser(PredictArguments).parse_args_into_dataclasses(argv if argv is not None else sys.argv[1:])
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    records = read_records(args.input)
    empty = [i for i, r in enumerate(records, 1) if not isinstance(r["text"], str) or not r["text"].strip()]
    if empty:
        raise ValueError(f"{args.input}: record {empty[0]} has an empty or non-text 'text' field ({len(empty)} such)")
    system = load_system(args.run, merged=args.merged)
    scoring = args.scoring
    if system.kind == "classifier" and scoring in ("generate", "loglik", "constrained"):
        logger.warning("%s is a classifier: scoring %r ignored", args.run, scoring)
        scoring = None
    predictions = predict(system, records, scoring=scoring, batch_size=args.batch_size, progress=True)
    atomic_write_jsonl(args.out, predictions)
    invalid = Counter(p["invalid_reason"] for p in predictions if p["invalid"])
    print(f"{len(predictions)} predictions written to {args.out}; invalid: {sum(invalid.values())} {dict(invalid)}")
    return predictions


if __name__ == "__main__":
    main()
