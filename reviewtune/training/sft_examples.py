"""Records -> prompt/completion datasets for ``trl.SFTTrainer``, plus the SFT recipe's own arguments.

Reviews are cut to a token budget when the prompt is built (``reviewtune.prompts.to_instruction``), never
the answer; shortened examples are counted, and an example whose answer alone cannot fit is dropped
and counted. Only ``prompt`` and ``completion`` columns reach the trainer, so trl appends the
end-of-sequence token to the completion (or, for the chat prompt format, renders both turns with the tokenizer's
chat template) and computes the loss on the completion only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from datasets import Dataset

from reviewtune.prompt_format import example_ids
from reviewtune.prompts import to_instruction
from reviewtune.tasks import TaskSpec

logger = logging.getLogger(__name__)

TOO_LONG = "answer_exceeds_max_length"


@dataclass
class ShorteningStats:
    """How the records became examples: kept = total - dropped; ``shortened`` reviews were cut."""

    total: int = 0
    kept: int = 0
    shortened: int = 0
    dropped: dict[str, int] = field(default_factory=dict)


def _to_example(record: dict, task: TaskSpec, tokenizer, max_length: int | None) -> dict:
    example = to_instruction(record, task, tokenizer, max_length)
    too_long = False
    if example["shortened"]:
        # The review was cut to nothing and the answer still does not fit: trl would cut the answer.
        too_long = len(example_ids(tokenizer, example)[1]) > max_length
    return {**example, "too_long": too_long}


def instruction_dataset(
    records: list[dict], task: TaskSpec, tokenizer, max_length: int | None, desc: str = "Building prompts"
) -> tuple[Dataset, ShorteningStats]:
    """``Dataset`` with exactly the columns ``prompt`` and ``completion`` (+ the shortening statistics)."""
    base = Dataset.from_dict({"text": [r["text"] for r in records], "_idx": list(range(len(records)))})
    labelled = base.map(
        lambda ex: _to_example({**records[ex["_idx"]], "text": ex["text"]}, task, tokenizer, max_length),
        remove_columns=["text", "_idx"],
        desc=desc,
    )
    flags = list(zip(labelled["shortened"], labelled["too_long"], strict=True))
    kept = labelled.filter(lambda ex: not ex["too_long"], desc="Dropping over-long answers")
    stats = ShorteningStats(total=len(records), kept=len(kept), shortened=sum(s and not t for s, t in flags))
    if len(kept) < len(records):
        stats.dropped[TOO_LONG] = len(records) - len(kept)
        logger.warning("%d example(s) dropped: the answer alone exceeds max_length=%s", stats.dropped[TOO_LONG],
                       max_length)  # fmt: skip
    return kept.select_columns(["prompt", "completion"]), stats


@torch.no_grad()
def packing_keeps_examples_apart(model, tokenizer, examples: list[dict], atol: float = 1e-4) -> tuple[bool, float]:
    """Whether a padding-free (packed) batch gives each example the same loss as running it alone.

    Packing relies on the attention implementation to keep examples apart: FlashAttention reads the
    sequence boundaries, and transformers' sdpa/eager masks derive a block-diagonal mask from the
    position ids for models that build their masks with ``create_causal_mask``. Other models would let
    examples attend to each other, so the recipe checks this on real examples before packing.
    Returns (ok, largest absolute difference of the per-example mean losses).
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seqs = []
    for ex in examples:
        prompt_ids, ids = example_ids(tokenizer, ex)
        labels = [-100] * len(prompt_ids) + ids[len(prompt_ids) :]
        seqs.append({"input_ids": ids, "labels": labels})

    def per_example_losses(logits, labels, spans):
        losses = []
        for start, end in spans:
            lg, lb = logits[start : end - 1], labels[start + 1 : end]
            losses.append(torch.nn.functional.cross_entropy(lg.float(), lb, ignore_index=-100).item())
        return losses

    alone = []
    for s in seqs:
        batch = {k: torch.tensor([v], device=device) for k, v in s.items()}
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        alone += per_example_losses(logits, batch["labels"][0], [(0, len(s["input_ids"]))])
    collator = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)
    packed = collator(seqs)
    # use_cache=False as in training (trl sets it): with a cache, transformers does not look for packed sequences.
    packed_inputs = {k: packed[k].to(device) for k in ("input_ids", "position_ids")}
    logits = model(**packed_inputs, use_cache=False).logits[0]
    bounds = packed["cu_seq_lens_q"].tolist()
    together = per_example_losses(logits, torch.tensor(sum((s["labels"] for s in seqs), []), device=device),
                                  list(zip(bounds[:-1], bounds[1:], strict=True)))  # fmt: skip
    model.train(was_training)
    diff = max(abs(a - b) for a, b in zip(alone, together, strict=True))
    return diff <= atol, diff


FLASH_ATTENTION = ("flash_attention_2", "flash_attention_3")


def check_packing(model, tokenizer, dataset) -> None:
    """Before training with ``packing`` / ``padding_free``: stop with one clear message unless the attention keeps
    packed examples apart (FlashAttention always does; sdpa/eager are checked on three real examples)."""
    attn = model.config._attn_implementation  # transformers has no public accessor for the resolved implementation
    if attn in FLASH_ATTENTION:
        return
    ok, diff = packing_keeps_examples_apart(model, tokenizer, dataset.select(range(min(3, len(dataset)))).to_list())
    if not ok:
        raise ValueError(
            f"packing/padding_free with attn_implementation={attn!r} lets packed examples attend to each "
            f"other (per-example loss differs by {diff:.3g} from unpacked): use flash_attention_2 on a GPU "
            "or set packing: false and padding_free: false."
        )
    logger.info("packing check with %s: per-example losses match unpacked (max diff %.2e)", attn, diff)
