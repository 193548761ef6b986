"""Scoring primitives for causal LMs: batched greedy decoding and label log-likelihoods.

Both take a (possibly PEFT-wrapped, possibly 4-bit) causal LM and its tokenizer, tokenise prompts the
way trl's ``SFTTrainer`` does during training (``tokenizer(prompt)`` with the tokenizer's own special
tokens, the completion starting where prompt and prompt+completion token ids diverge), and batch by
length to waste little padding. Results come back in input order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig

# Attention implementations that honour a custom 4D attention mask (transformers passes a 4D mask through
# as-is); label trees need one. Others (flash attention) score one sequence per (prompt, label) pair.
TREE_ATTENTION = ("sdpa", "eager")


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


def answer_end_ids(tokenizer) -> list[int]:
    """The tokens training puts after every answer: the tokenizer's end-of-sequence token (the SFT recipe and
    trl append ``tokenizer.eos_token`` to each completion). A chat template's end-of-turn tokens go in its place."""
    if tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no end-of-sequence token; pass the answer's end token ids explicitly")
    return [int(tokenizer.eos_token_id)]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def left_padded_batches(
    encoded: list[list[int]], batch_size: int, pad_id: int
) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
    """Batches of similar length (indices, ``input_ids``, ``attention_mask``), left-padded so that every prompt
    ends at the same position and decoding continues from there."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i]
            if ids:
                input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                attention_mask[row, width - len(ids) :] = 1
        yield idx, input_ids, attention_mask


@torch.inference_mode()
def generate_answers(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    progress: bool = True,
) -> list[str]:
    """Greedy-decode a continuation for every prompt; returns the decoded continuation only.

    Batched with left padding and the KV cache; each sequence stops at its first end-of-sequence token
    (the text after it, and the token itself, are dropped).
    """
    if not prompts:
        return []
    model.eval()
    device = _device(model)
    pad_id = _pad_id(tokenizer)
    eos_ids = _eos_ids(model, tokenizer)
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_id,
        eos_token_id=eos_ids or None,
    )
    encoded = tokenizer(list(prompts))["input_ids"]
    answers: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc="Generating", unit="review", disable=not progress)
    for idx, input_ids, attention_mask in left_padded_batches(encoded, batch_size, pad_id):
        width = input_ids.shape[1]
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


# ------------------------------------------------------------------------------------- label log-likelihood


@dataclass
class _LabelTree:
    """One prompt's labels as a token tree read after the prompt's shared prefix.

    ``shared`` (the prompt ids every prompt+label sequence starts with) is read once; each label sequence
    (label tokens + end tokens) continues from it as a path of tree ``nodes``, common label prefixes once.
    """

    shared: list[int]
    tokens: list[int] = field(default_factory=list)  # token of each node
    parents: list[int] = field(default_factory=list)  # parent node, -1 = the last token of ``shared``
    depths: list[int] = field(default_factory=list)  # 1 for a child of the root
    scored: list[tuple[int, int, int]] = field(default_factory=list)  # (label, predicting node or -1, token)
    sequences: list[list[int]] = field(default_factory=list)  # each label's prompt + label + end ids
    starts: list[int] = field(default_factory=list)  # where each sequence's scored tokens start

    @property
    def fed(self) -> list[int]:
        """Nodes the model reads: those with children (a leaf is only ever a target). Ancestors come first."""
        return sorted({p for p in self.parents if p >= 0})


def _label_tree(prompt_ids: list[int], fulls: list[list[int]], end: list[int], completions: Sequence[str],
                i: int) -> _LabelTree:  # fmt: skip
    starts = []
    for j, full in enumerate(fulls):
        start = _common_prefix_length(prompt_ids, full)
        if start >= len(full):
            raise ValueError(f"completion {completions[j]!r} adds no tokens after prompt {i}")
        starts.append(start)
    # Where a label's first token merges with the prompt's last (prompt and prompt+label ids diverge before
    # the label), only the common prefix is shared; the label's path re-reads the rest, unscored.
    shared = min(starts)
    if shared == 0:
        raise ValueError(f"prompt {i} shares no token with prompt+completion: nothing to condition the label on")
    tree = _LabelTree(shared=list(prompt_ids[:shared]), starts=starts)
    nodes: dict[tuple[int, int], int] = {}
    for j, (full, start) in enumerate(zip(fulls, starts, strict=True)):
        seq = full + end
        tree.sequences.append(seq)
        node = -1
        for t in range(shared, len(seq)):
            if t >= start:
                tree.scored.append((j, node, seq[t]))  # token at t is predicted by the position t - 1
            key = (node, seq[t])
            if key not in nodes:
                nodes[key] = len(tree.tokens)
                tree.tokens.append(seq[t])
                tree.parents.append(node)
                tree.depths.append(t - shared + 1)
            node = nodes[key]
    return tree


def _tokenize_pairs(tokenizer, prompts: list[str], completions: list[str]) -> tuple[list, list]:
    prompt_ids = tokenizer(list(prompts))["input_ids"]
    fulls = tokenizer([p + c for p in prompts for c in completions])["input_ids"]
    n_c = len(completions)
    return prompt_ids, [fulls[i * n_c : (i + 1) * n_c] for i in range(len(prompts))]


@torch.inference_mode()
def label_loglik(
    model,
    tokenizer,
    prompts: list[str],
    completions: list[str],
    end_ids: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """Summed log-likelihood of each completion, followed by ``end_ids``, after each prompt: shape
    ``[n_prompts, n_completions]``.

    The lm-evaluation-harness ``multiple_choice`` rule: pass completions as ``" " + label``. ``end_ids`` are the
    tokens training puts after the answer (default :func:`answer_end_ids`, the end-of-sequence token; ``()``
    scores the completion alone), so a label that is a prefix of another one pays for stopping. Prompt and
    prompt+completion are tokenised separately and only the tokens from where the two id lists diverge (as in
    trl's SFT tokenisation) are scored, so a token merging across the boundary is never half-counted.

    Each prompt is read once: one forward pass per batch of ``batch_size`` prompts reads every prompt followed
    by its labels as a token tree (shared label prefixes once), each label attending to the prompt and its own
    earlier tokens only, and only the scored positions are projected to the vocabulary.
    """
    n_p, n_c = len(prompts), len(completions)
    scores = np.zeros((n_p, n_c), dtype=np.float64)
    if n_p == 0 or n_c == 0:
        return scores
    model.eval()
    end = answer_end_ids(tokenizer) if end_ids is None else [int(t) for t in end_ids]
    prompt_ids, fulls = _tokenize_pairs(tokenizer, prompts, completions)
    trees = [_label_tree(prompt_ids[i], fulls[i], end, completions, i) for i in range(n_p)]
    if getattr(model.config, "_attn_implementation", "eager") in TREE_ATTENTION:
        flat = _tree_scores(model, tokenizer, trees, n_c, batch_size, progress)
    else:
        flat = _pair_scores(model, tokenizer, trees, n_c, batch_size, progress)
    return flat.reshape(n_p, n_c)


def _attention_dtype(model) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _tree_scores(model, tokenizer, trees: list[_LabelTree], n_c: int, batch_size: int, progress: bool) -> np.ndarray:
    """Scores of every (prompt, label) pair, flat, from one forward pass per batch of prompt + label trees.

    Written by hand because transformers has no tree (shared-prefix) scoring: each row is the left-padded
    shared prompt prefix followed by the tree's read nodes, with explicit position ids (a node's position is the
    one it has in its own unpadded sequence) and a 4D mask (prompt: causal over its real tokens; node: the
    prompt's real tokens, its ancestors and itself). The KV of the prompt is computed once and read by every
    label; ``logits_to_keep`` (a boolean mask) projects only the last prompt position and the read nodes.
    """
    device = _device(model)
    pad_id = _pad_id(tokenizer)
    sdpa = getattr(model.config, "_attn_implementation", "eager") == "sdpa"
    dtype = _attention_dtype(model)
    flat = torch.zeros(len(trees) * n_c, dtype=torch.float64)
    order = sorted(range(len(trees)), key=lambda i: (len(trees[i].shared), len(trees[i].fed)))
    bar = tqdm(total=len(trees), desc="Scoring labels", unit="review", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = [trees[i] for i in idx]
        feds = [tree.fed for tree in batch]
        width = max(len(tree.shared) for tree in batch)
        n_cols = width + max(len(f) for f in feds)
        input_ids = torch.full((len(batch), n_cols), pad_id, dtype=torch.long)
        position_ids = torch.zeros((len(batch), n_cols), dtype=torch.long)
        allowed = torch.zeros((len(batch), n_cols, n_cols), dtype=torch.bool)
        keep = torch.zeros((len(batch), n_cols), dtype=torch.bool)
        rows, targets, pairs = [], [], []
        kept = 0  # logits rows come back flattened in (row, column) order
        for b, (i, tree, fed) in enumerate(zip(idx, batch, feds, strict=True)):
            n, off = len(tree.shared), width - len(tree.shared)
            input_ids[b, off:width] = torch.tensor(tree.shared, dtype=torch.long)
            position_ids[b, off:width] = torch.arange(n)
            allowed[b, off:width, off:width] = torch.ones(n, n, dtype=torch.bool).tril()
            col = {node: width + k for k, node in enumerate(fed)}
            for node, c in col.items():
                input_ids[b, c] = tree.tokens[node]
                position_ids[b, c] = n + tree.depths[node] - 1
                allowed[b, c, off:width] = True
                m = node
                while m >= 0:  # ancestors (all read: they have children) and itself
                    allowed[b, c, col[m]] = True
                    m = tree.parents[m]
            for c in [*range(off), *range(width + len(fed), n_cols)]:
                allowed[b, c, c] = True  # padding attends to itself only: no fully masked row
            keep[b, width - 1] = True
            keep[b, width : width + len(fed)] = True
            logit_row = {-1: kept, **{node: kept + 1 + k for k, node in enumerate(fed)}}
            for j, node, token in tree.scored:
                rows.append(logit_row[node])
                targets.append(token)
                pairs.append(i * n_c + j)
            kept += 1 + len(fed)
        mask = allowed[:, None]
        if not sdpa:  # eager attention adds the mask to its scores
            mask = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=mask.to(device),
            position_ids=position_ids.to(device),
            logits_to_keep=keep.to(device),
            use_cache=False,
        ).logits
        logprobs = torch.log_softmax(logits.float().reshape(kept, -1), dim=-1)
        token_lp = logprobs[torch.tensor(rows, device=logprobs.device), torch.tensor(targets, device=logprobs.device)]
        flat.index_add_(0, torch.tensor(pairs), token_lp.double().cpu())
        bar.update(len(batch))
    bar.close()
    return flat.numpy()


def _pair_scores(model, tokenizer, trees: list[_LabelTree], n_c: int, batch_size: int, progress: bool) -> np.ndarray:
    """Scores of every (prompt, label) pair, flat, one right-padded sequence per pair: for attention
    implementations that take no custom 4D mask. Only the scored positions are projected to the vocabulary."""
    device = _device(model)
    pad_id = _pad_id(tokenizer)
    pairs = [(i * n_c + j, seq, tree.starts[j]) for i, tree in enumerate(trees) for j, seq in enumerate(tree.sequences)]
    order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][1]))
    flat = torch.zeros(len(pairs), dtype=torch.float64)
    bar = tqdm(total=len(pairs), desc="Scoring labels", unit="pair", disable=not progress)
    for b in range(0, len(order), batch_size):
        batch = [pairs[k] for k in order[b : b + batch_size]]
        width = max(len(seq) for _, seq, _ in batch)
        # Right padding: positions are then the same as unpadded, and padded tokens are never scored.
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        keep = torch.zeros((len(batch), width), dtype=torch.bool)
        targets, owners = [], []
        for row, (pair, seq, start) in enumerate(batch):
            input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
            attention_mask[row, : len(seq)] = 1
            keep[row, start - 1 : len(seq) - 1] = True  # the token at t is predicted by the position t - 1
            targets += seq[start:]
            owners += [pair] * (len(seq) - start)
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            logits_to_keep=keep.to(device),
            use_cache=False,
        ).logits
        logprobs = torch.log_softmax(logits.float().reshape(len(targets), -1), dim=-1)
        rows = torch.arange(len(targets), device=logprobs.device)
        token_lp = logprobs[rows, torch.tensor(targets, device=logprobs.device)]
        flat.index_add_(0, torch.tensor(owners), token_lp.double().cpu())
        bar.update(len(batch))
    bar.close()
    return flat.numpy()


def loglik_probs(scores: np.ndarray) -> np.ndarray:
    """Softmax over the label axis of :func:`label_loglik` scores: one probability per label, rows sum to 1."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
