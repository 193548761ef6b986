"""Scoring primitives for causal LMs: batched greedy decoding and label log-likelihoods.

Both take a (possibly PEFT-wrapped, possibly 4-bit) causal LM and its tokenizer, tokenise prompts the
way trl's ``SFTTrainer`` does during training (``tokenizer(prompt)`` with the tokenizer's own special
tokens, the completion starting where prompt and prompt+completion token ids diverge), and batch by
length to waste little padding. Results come back in input order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import softmax
from tqdm.auto import tqdm
from transformers import GenerationConfig


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has neither a pad nor an end-of-sequence token")
    return tokenizer.eos_token_id


def _eos_ids(model, tokenizer) -> list[int]:
    """Every end-of-sequence id the model may emit (tokenizer's and the generation config's)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@torch.inference_mode()
def generate_answers(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: bool = True,
    add_special_tokens: bool = True,
    eos_token_ids: Sequence[int] = (),
) -> list[str]:
    """Greedy-decode a continuation for every prompt; returns the decoded continuation only.

    Batched with left padding and the KV cache; each sequence stops at its first end-of-sequence token
    (the text after it, and the token itself, are dropped). ``eos_token_ids`` adds stop tokens (a chat
    template's end of turn); ``add_special_tokens=False`` for prompts that carry their own (a rendered chat).
    """
    if not prompts:
        return []
    model.eval()
    device = _device(model)
    pad_id = _pad_id(tokenizer)
    eos_ids = sorted(set(_eos_ids(model, tokenizer)) | {int(i) for i in eos_token_ids})
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=eos_ids or None,
    )
    encoded = [tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # similar lengths share a batch
    answers: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc="Generating", unit="review", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        # Left padding so every prompt ends at the same position and generation continues from there.
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i]
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=gen_config
        )
        for row, i in enumerate(idx):
            new = out[row, width:].tolist()
            cut = next((k for k, t in enumerate(new) if t in eos_ids), len(new))
            answers[i] = tokenizer.decode(new[:cut], skip_special_tokens=True)
        bar.update(len(idx))
    bar.close()
    return answers


@torch.inference_mode()
def label_loglik(
    model,
    tokenizer,
    prompts: list[str],
    completions: list[str],
    batch_size: int = 16,
    progress: bool = True,
    add_special_tokens: bool = True,
) -> np.ndarray:
    """Summed log-likelihood of each completion after each prompt: shape ``[n_prompts, n_completions]``.

    The lm-evaluation-harness ``multiple_choice`` rule: pass completions as ``" " + label``. Prompt and
    prompt+completion are tokenised separately and only the completion tokens (from where the two id
    lists diverge, as in trl's SFT tokenisation) are scored, so a token merging across the boundary is
    never half-counted. ``add_special_tokens=False`` for prompts that carry their own (a rendered chat).
    """
    n_p, n_c = len(prompts), len(completions)
    scores = np.zeros((n_p, n_c), dtype=np.float64)
    if n_p == 0 or n_c == 0:
        return scores
    model.eval()
    device = _device(model)
    pad_id = _pad_id(tokenizer)
    # One sequence per (prompt, completion) pair: ids and where the completion starts.
    pairs: list[tuple[int, int, list[int], int]] = []
    for i, prompt in enumerate(prompts):
        prompt_ids = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
        for j, completion in enumerate(completions):
            full = tokenizer(prompt + completion, add_special_tokens=add_special_tokens)["input_ids"]
            start = _common_prefix_length(prompt_ids, full)
            if start >= len(full):
                raise ValueError(f"completion {completion!r} adds no tokens after prompt {i}")
            start = max(start, 1)  # the first token has no context to be scored against
            pairs.append((i, j, full, start))
    order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][2]))
    bar = tqdm(total=len(pairs), desc="Scoring labels", unit="pair", disable=not progress)
    for b in range(0, len(order), batch_size):
        batch = [pairs[k] for k in order[b : b + batch_size]]
        width = max(len(p[2]) for p in batch)
        # Right padding: positions are then the same as unpadded, and padded tokens are never scored.
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, _, ids, _) in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
        for row, (i, j, ids, start) in enumerate(batch):
            targets = torch.tensor(ids[start:], dtype=torch.long)
            # The token at position t is predicted by the logits at position t - 1.
            token_lp = logprobs[row, start - 1 : len(ids) - 1].gather(-1, targets[:, None]).squeeze(-1)
            scores[i, j] = float(token_lp.sum())
        bar.update(len(batch))
    bar.close()
    return scores


def loglik_probs(scores: np.ndarray) -> np.ndarray:
    """Softmax over the label axis of :func:`label_loglik` scores: one probability per label, rows sum to 1."""
    return softmax(scores, axis=-1)
