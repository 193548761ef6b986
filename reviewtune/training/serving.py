"""What a run directory holds so that the tools users already know load what the harness scored.

- Generative runs: ``generation_config.json`` with the harness's greedy decoding
  (``reviewtune.evaluation.as_scored.harness_generation_config``) in every model directory (``merged/``, a full
  fine-tune) and beside an adapter (transformers takes an adapter's generation config from its base: the model card
  says which arguments to pass).
- Classifier runs: every model directory is a complete model, ``config.json`` with the label names and
  safetensors weights, that ``pipeline("text-classification", model=DIR)`` loads (a keyword-attention aspect
  model: ``AutoModelForTokenClassification``, pooled by ``reviewtune.evaluation.keyword_attention``); a LoRA run
  is merged into it and keeps its adapter in ``DIR/adapter/``. An ``adapter_config.json`` in ``DIR`` itself would
  make transformers load the base model's head instead (a ``KeyError`` with 14 labels, silently ``LABEL_0/1`` with 2).
- ``push_to_hub`` (the training arguments' fields): the run directory, model card included, without checkpoints.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from transformers import GenerationConfig

from reviewtune.atomic import atomic_files, atomic_write_text

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"  # a LoRA classifier's adapter, beside (not in) the loadable merged model
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
GENERATION_CONFIG = "generation_config.json"
# Not pushed: checkpoints (resume state), pickles (training_args.bin; run_summary.json holds the config), and the
# temporary files of atomic writes.
PUSH_IGNORE = ("checkpoint-*", "*/checkpoint-*", "*.bin", ".*", "*/.*")


def save_generation_config(directory: str | Path, config: GenerationConfig) -> Path:
    """Write ``directory/generation_config.json`` atomically (what ``GenerationConfig.save_pretrained`` writes)."""
    return atomic_write_text(Path(directory) / GENERATION_CONFIG, config.to_json_string(use_diff=True))


def save_merged_classifier(peft_model, directory: str | Path, tokenizer) -> Path:
    """A LoRA sequence classifier merged into its base and written into ``directory`` as a complete model
    (``config.json`` with id2label, ``model.safetensors``, tokenizer), each file replaced atomically; adapter files
    left in ``directory`` itself (a Trainer pushing to the hub saves there) are removed: the adapter is in
    ``directory/adapter/``."""
    directory = Path(directory)
    merged = copy.deepcopy(peft_model).merge_and_unload()
    with atomic_files(directory) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    for name in ADAPTER_FILES:
        (directory / name).unlink(missing_ok=True)
    return directory


def files_to_push(run_dir: str | Path) -> list[str]:
    """The run directory's files that :func:`push_run` uploads (paths relative to it), filtered exactly as
    ``huggingface_hub.upload_folder`` filters them."""
    from huggingface_hub.utils import filter_repo_objects

    run_dir = Path(run_dir)
    paths = sorted(p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file())
    return list(filter_repo_objects(paths, ignore_patterns=list(PUSH_IGNORE)))


def push_run(run_dir: str | Path, training_args) -> str | None:
    """With ``push_to_hub: true``, upload the run directory (model card, weights, tokenizer, run files; no
    checkpoints) to ``hub_model_id`` (default: the directory's name in your namespace), honouring
    ``hub_token``, ``hub_private_repo`` and ``hub_revision``. Runs after the model card is written, so the card
    the Trainer pushes while saving is replaced by the run's own. Returns the commit URL, or None."""
    if not training_args.push_to_hub:
        return None
    from huggingface_hub import create_repo, upload_folder

    run_dir = Path(run_dir)
    repo = create_repo(training_args.hub_model_id or run_dir.resolve().name, token=training_args.hub_token,
                       private=training_args.hub_private_repo, exist_ok=True)  # fmt: skip
    commit = upload_folder(repo_id=repo.repo_id, folder_path=run_dir, ignore_patterns=list(PUSH_IGNORE),
                           token=training_args.hub_token, revision=training_args.hub_revision,
                           commit_message="reviewtune run: model card, weights, run files")  # fmt: skip
    logger.info("pushed %s to %s", run_dir, commit.commit_url)
    return commit.commit_url
