"""Pre-train a small base model from scratch: a byte-level BPE tokenizer plus a Llama (causal LM) or a
RoBERTa (masked LM), saved as a standard model directory that ``AutoModelForCausalLM`` /
``AutoModelForSequenceClassification`` load.

Launch (the corpus is training text only: records.jsonl, .txt, .txt.gz or NSMC TSV)::

    python recipes/pretrain.py --config recipes/configs/pretrain_causal.yaml  # -> runs/pretrain_causal
    python recipes/pretrain.py --config recipes/configs/pretrain_roberta.yaml \
        --corpus_file data/train/records.jsonl --output_dir runs/base-roberta --max_minutes 5

Without ``corpus_file`` the train split of the embedded default data is used. The recipes build the same
models themselves on first use (``model_name_or_path: embedded``, see ``reviewtune.base_models``).
"""

from __future__ import annotations

import reviewtune  # noqa: F401  (first: its __init__ sets OpenMP and warning defaults before torch loads)

# isort: split

import logging
import sys
from pathlib import Path

import transformers
from trl import TrlParser

from reviewtune.atomic import atomic_write_json, read_json
from reviewtune.cli import argument_parser, run_cli
from reviewtune.models.pretraining import pretrain
from reviewtune.provenance import provenance
from reviewtune.training.arguments import PretrainArguments

logger = logging.getLogger(__name__)


def main(args: PretrainArguments) -> dict:
    # Logging (the seed is set inside ``pretrain`` before anything random happens)
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        handlers=[logging.StreamHandler(sys.stdout)],
        level=logging.INFO,
    )
    transformers.utils.logging.set_verbosity_info()
    logger.info("pre-training arguments %s", args)

    # Output directory: a finished model is never overwritten (adapters may have been trained on it)
    output_dir = Path(args.output_dir or f"runs/pretrain_{args.kind}")
    if (output_dir / "pretrain_summary.json").is_file():
        print(f"{output_dir} already holds a pre-trained model: kept as it is (choose another --output_dir to train)")
        return read_json(output_dir / "pretrain_summary.json")
    if (output_dir / "config.json").exists():
        raise FileExistsError(f"{output_dir} already holds a model; choose another --output_dir or remove it")

    # Data: the embedded default's train split unless a corpus is given
    if args.corpus_file is None:
        from reviewtune.defaults import default_file

        args.corpus_file = default_file("train")
        logger.info("no corpus_file given: using the embedded default train split %s", args.corpus_file)

    # Tokenizer, model, Trainer, train and save (reviewtune.pretraining.pretrain)
    summary = pretrain(args, output_dir)

    # Summary with provenance
    result = {
        "recipe": "pretrain",
        **summary,
        "provenance": provenance(seed=args.seed, data_files={"corpus": args.corpus_file}),
    }
    atomic_write_json(output_dir / "pretrain_summary.json", result)
    logger.info(
        "saved %s model to %s: loss %.3f -> %.3f in %d steps, %.2f min (loss curve: %s)",
        args.kind,
        output_dir,
        summary["first_loss"],
        summary["last_loss"],
        summary["steps"],
        summary["total_minutes"],
        output_dir / "pretrain_loss.png",
    )
    return result


def parse_and_run(argv: list[str] | None = None) -> dict:
    usage = "python recipes/pretrain.py --config FILE [--output_dir DIR] [--OPTION VALUE ...]"
    (pretrain_args,) = argument_parser(TrlParser, PretrainArguments, usage).parse_args_and_config(argv)
    return main(pretrain_args)


if __name__ == "__main__":
    sys.exit(run_cli(parse_and_run))
