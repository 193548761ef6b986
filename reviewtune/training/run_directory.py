"""A run directory's own files that both recipes write: ``run_summary.json`` (common keys), ``token_freqs.json``,
and the measurements they hold (parameters, peak memory, loss history)."""

from __future__ import annotations

import collections
import dataclasses
import math
import resource
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reviewtune.atomic import atomic_write_json, read_json
from reviewtune.provenance import provenance

SCHEMA_VERSION = 1
SUMMARY_KEYS = (
    "schema_version", "recipe", "kind", "task", "base_model", "base_model_hash", "quantization", "method",
    "train_examples", "eval_examples", "shortened_examples", "trainable_params", "total_params",
    "train_runtime_s", "train_tokens_per_s", "peak_memory_bytes", "final_train_loss", "final_eval_loss",
    "config", "provenance",
)  # fmt: skip


def peak_rss_bytes() -> int:
    """Peak resident set size of this process's own memory image.

    Linux: ``VmHWM`` from ``/proc/self/status``. ``getrusage``'s ``ru_maxrss`` would be wrong here: the
    kernel carries the high-water mark across ``exec``, so a child forked from a large parent (pytest,
    a notebook) reports the parent's peak. Elsewhere ``ru_maxrss`` (bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def peak_memory_bytes() -> int:
    """CUDA max allocated on GPU, else the process's peak resident set size."""
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.max_memory_allocated())
    except ImportError:
        pass
    return peak_rss_bytes()


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit packed weights are counted as their unpacked size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":  # bitsandbytes packs two 4-bit values per storage byte
            n *= 2 * p.element_size()  # uint8 storage by default; bf16/fp32 storage under ZeRO-3/FSDP
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def token_frequencies(texts: Iterable[str], tokenizer) -> dict[str, int]:
    """How often each token of ``tokenizer`` occurs in ``texts`` (for rare-input scoring later)."""
    counts: collections.Counter[str] = collections.Counter()
    for text in texts:
        counts.update(tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return dict(counts.most_common())


def save_token_frequencies(output_dir: str | Path, texts: Iterable[str], tokenizer) -> Path:
    counts = token_frequencies(texts, tokenizer)
    return atomic_write_json(Path(output_dir) / "token_freqs.json", {"counts": counts, "provenance": provenance()})


def write_run_summary(output_dir: str | Path, summary: dict[str, Any]) -> Path:
    """Write ``run_summary.json``; every key of ``SUMMARY_KEYS`` must be present (``None`` allowed)."""
    summary = {"schema_version": SCHEMA_VERSION, **summary}
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise ValueError(f"run_summary is missing keys: {', '.join(missing)}")
    return atomic_write_json(Path(output_dir) / "run_summary.json", summary)


def loss_history(trainer) -> list[tuple[int, float]]:
    """(step, training loss) of every logged step, resumed steps included (the checkpoint's log history)."""
    return [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]


def tokens_seen(log_history: list[dict]) -> int:
    """Non-padding tokens trained on, from trl's logged ``num_tokens``: trl counts from zero again after a resume,
    so each restart's count is added to what the checkpoint's history had reached."""
    total = previous = 0
    for entry in log_history:
        if "num_tokens" in entry:
            if entry["num_tokens"] < previous:  # a resumed run counting from zero again
                total += previous
            previous = entry["num_tokens"]
    return int(total + previous)


def resolved_config(*argument_objects, training_args) -> dict[str, Any]:
    """The run's whole configuration, flat like the YAML (the recipes' dataclasses' field names do not overlap)."""
    return {k: v for obj in argument_objects for k, v in dataclasses.asdict(obj).items()} | training_args.to_dict()


def checkpoint_step(checkpoint: str | Path) -> int:
    """The optimizer step a Trainer checkpoint was saved at (its trainer_state.json)."""
    return int(read_json(Path(checkpoint) / "trainer_state.json")["global_step"])


def planned_steps(trainer) -> int:
    """The optimizer steps this training is to reach: ``max_steps``, or what the Trainer computes from the epochs
    (its own rule: ceil(epochs x optimizer steps per epoch))."""
    args = trainer.args
    if args.max_steps > 0:
        return args.max_steps
    batches, accumulation = len(trainer.get_train_dataloader()), args.gradient_accumulation_steps
    per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
    return math.ceil(args.num_train_epochs * per_epoch)


def resume_plan(output_dir: str | Path, resume_from: str | None, planned: int) -> tuple[str | None, dict | None]:
    """Where training continues, and the kept ``run_summary.json`` when a re-launched run is already complete.

    transformers, resumed from a checkpoint that reached the last step mid-epoch, trains one step more; so a
    complete run (its checkpoint at ``planned`` and its summary written) is not resumed at all. A run that reached
    its last step but was stopped before writing its outputs resumes from the checkpoint before (the same
    steps again: resuming reproduces them), or from the start.
    """
    if resume_from is None or checkpoint_step(resume_from) < planned:
        return resume_from, None
    summary = Path(output_dir) / "run_summary.json"
    if summary.is_file():
        return resume_from, read_json(summary)
    earlier = [c for c in Path(output_dir).glob("checkpoint-*") if c.is_dir() and checkpoint_step(c) < planned]
    return (str(max(earlier, key=checkpoint_step)) if earlier else None), None
