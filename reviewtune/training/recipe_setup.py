"""What both fine-tuning recipes do before training: parse a YAML config plus overrides, set up logging, find the
checkpoint to resume, read the records of each split (one loader, one split), and resolve the base model.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import torch
import transformers
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from trl import ModelConfig, SFTConfig, TrlParser

from reviewtune import defaults
from reviewtune.cli import argument_parser
from reviewtune.data.splits import hold_out_validation
from reviewtune.provenance import model_hash
from reviewtune.records import load_task_records
from reviewtune.tasks import TaskSpec, get_task
from reviewtune.training import run_directory

logger = logging.getLogger(__name__)


@dataclass
class SFTTrainingConfig(SFTConfig):
    """trl's ``SFTConfig`` unchanged; the subclass only heads its options in ``--help``, after the suite's own."""

    _argument_group_name = "trl SFTConfig (transformers TrainingArguments and trl's SFT options)"


@dataclass
class ClassifierTrainingArguments(TrainingArguments):
    """transformers' ``TrainingArguments`` unchanged; the subclass only heads its options in ``--help``."""

    _argument_group_name = "transformers TrainingArguments"


@dataclass
class ModelArguments(ModelConfig):
    """trl's ``ModelConfig`` unchanged (model, LoRA and 4-bit options); named for ``--help`` only."""

    _argument_group_name = "trl ModelConfig (model, LoRA, 4-bit)"


def parse_recipe_args(dataclass_types: tuple, default_config: Path, argv: list[str] | None, **defaults_: Any):
    """The recipe's dataclasses from ``--config FILE`` (the recipe's default config without one) plus
    command-line overrides; unknown keys are an error that names the file they came from, a bad value one line.

    Hardware-dependent defaults come first (a config or the command line still overrides them): trl and
    transformers default to bf16, which ``TrainingArguments`` rejects on a machine without a bf16-capable GPU.
    ``--help`` lists the suite's own options first (the dataclasses without a group name).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" not in argv:
        argv = ["--config", str(default_config), *argv]
    script = f"recipes/{Path(sys.argv[0]).name}" if sys.argv and sys.argv[0].endswith(".py") else "RECIPE"
    usage = f"accelerate launch {script} [--config FILE] [--OPTION VALUE ...]"
    parser = argument_parser(TrlParser, dataclass_types, usage, allow_abbrev=False)
    on_gpu = torch.cuda.is_available()
    parser.set_defaults(use_cpu=not on_gpu, bf16=on_gpu and torch.cuda.is_bf16_supported(), **defaults_)
    config_path = argv[argv.index("--config") + 1]
    if not Path(config_path).is_file():
        raise FileNotFoundError(f"--config {config_path}: no such file")
    try:
        return parser.parse_args_and_config(argv)
    except ValueError as e:  # unknown keys: trl names them, we name the file they came from
        raise ValueError(f"{config_path}: {e}" if "config file" in str(e) else f"command line: {e}") from e


def setup_logging(training_args, *loggers: logging.Logger) -> None:
    """Log to stdout at the process's level (main process: info; others: warnings), as alignment-handbook does."""
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    for lib_logger in (*loggers, logging.getLogger("reviewtune")):
        lib_logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def checkpoint_to_resume(output_dir: str | Path, resume_from_checkpoint: str | None = None) -> str | None:
    """The checkpoint to resume from: the one named, else the last one in ``output_dir`` (a re-launch)."""
    last = get_last_checkpoint(str(output_dir)) if os.path.isdir(output_dir) else None
    return resume_from_checkpoint or last


def plan_training(trainer, output_dir: str | Path, resume_from: str | None) -> tuple[str | None, dict | None]:
    """(checkpoint to resume from, kept summary of a run that is already complete); says which on the console."""
    planned = run_directory.planned_steps(trainer)
    resume_from, kept = run_directory.resume_plan(output_dir, resume_from, planned)
    if not trainer.is_world_process_zero():
        return resume_from, kept
    if kept is not None:
        print(f"{output_dir} is already complete ({planned} steps): nothing to train, its outputs are kept as they are")
    elif resume_from is not None:
        step = run_directory.checkpoint_step(resume_from)
        print(f"Resuming {output_dir} from {resume_from} (step {step} of {planned})", flush=True)
    return resume_from, kept


def task_from_args(data_args) -> TaskSpec:
    return get_task(
        data_args.task,
        instruction=data_args.instruction,
        label_names=data_args.task_label_names,
        keywords=data_args.keywords,
    )


@dataclass
class RecipeData:
    """The records a recipe trains, evaluates and samples on, where they came from and what was dropped."""

    files: dict[str, str | None]
    records: dict[str, list[dict]]
    reports: dict[str, dict] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)  # run_summary.json "split"

    @property
    def test_or_validation(self) -> list[dict]:
        return self.records.get("test") or self.records["validation"]


def load_recipe_data(data_args, task: TaskSpec, training_args) -> RecipeData:
    """Records of train / validation / test for ``task``: the files given, else the embedded default data.

    Without a validation file a seeded share of train is held out (``data.splits.hold_out_validation``, the
    same records in both recipes). ``max_train_samples`` / ``max_eval_samples`` then cut train / validation.
    """
    with training_args.main_process_first(desc="embedded default data"):
        embedded = data_args.train_file is None
        files = {
            "train": data_args.train_file or defaults.default_file("train"),
            "validation": data_args.validation_file or (defaults.default_file("validation") if embedded else None),
            "test": data_args.test_file or (defaults.default_file("test") if embedded else None),
        }
    records, reports = {}, {}
    for split, path in files.items():
        if path:
            records[split], reports[split] = load_task_records(path, task)
    if "validation" not in records:
        records["train"], records["validation"] = hold_out_validation(
            records["train"], data_args.validation_fraction, training_args.seed
        )
        reports["validation"] = {"from": "train", "fraction": data_args.validation_fraction}
    split = {
        "train": len(records["train"]),
        "validation": len(records["validation"]),
        "validation_ids_sha256": _ids_sha256(records["validation"]),
    }
    records["train"] = records["train"][: data_args.max_train_samples]
    records["validation"] = records["validation"][: data_args.max_eval_samples]
    logger.info("records: %s", {name: len(r) for name, r in records.items()})
    return RecipeData(files=files, records=records, reports=reports, split=split)


def _ids_sha256(records: list[dict]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(sorted(str(r["id"]) for r in records)).encode()).hexdigest()


def load_tokenizer(model_path: str, model_args, trust_remote_code: bool, **kwargs):
    """The base model's tokenizer (at the run's revision); models without a padding token pad with EOS."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        model_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code, **kwargs
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def resolve_base_model(kind: str, model_args, train_file: str) -> tuple[str, str | None]:
    """(path or hub id, hash) of the base: the suite's embedded base pre-trained on ``train_file`` when
    ``model_name_or_path`` is ``embedded`` (or unset), else the named model."""
    if model_args.model_name_or_path in (None, defaults.EMBEDDED):
        from reviewtune.base_models import ensure_base_model

        path, base_hash = ensure_base_model(kind, train_file)
        return str(path), base_hash
    name = model_args.model_name_or_path
    looks_like_a_path = Path(name).is_absolute() or name.startswith((".", "~")) or name.count("/") > 1
    if looks_like_a_path and not Path(name).expanduser().is_dir():
        raise FileNotFoundError(f"--model_name_or_path {name}: no such directory")
    return name, model_hash(name, model_args.model_revision)
