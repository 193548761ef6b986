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

from reviewtune.prompt_format import PLAIN, answer_end_ids

# Attention implementations that honour a custom 4D attention mask (transformers passes a 4D mask through
# as-is); label trees need one. Others (flash attention) score one sequence per (prompt, label) pair.
TREE_ATTENTION = ("sdpa", "eager")


def sliding_window(config) -> int | None:
    """The attention window of the model's sliding-window layers (Gemma 2/3, Mistral, the embedded causal base),
    ``None`` when every layer attends to the whole sequence.

    transformers uses a custom 4D mask as-is in every layer, window or not: a label tree's mask is only right for
    such a model while every sequence fits in the window, and longer ones are scored one sequence per pair.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None)
    return window if window is not None and (not layer_types or "sliding_attention" in layer_types) else None


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


def greedy_config(max_new_tokens: int, pad_id: int, eos_ids: Sequence[int] | None) -> GenerationConfig:
    """The harness's decoding: greedy, one beam, with the KV cache, stopping at ``eos_ids``."""
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                            pad_token_id=pad_id, eos_token_id=list(eos_ids) if eos_ids else None)  # fmt: skip


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
    gen_config = greedy_config(max_new_tokens, pad_id, eos_ids)
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
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


def _label_tree(
    prompt_ids: list[int], fulls: list[list[int]], end: list[int], completions: Sequence[str], i: int
) -> _LabelTree:
    """Prompt ``i``'s tree from its ids and each prompt+completion's ids (``fulls``), ``end`` after each."""
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


@torch.inference_mode()
def label_loglik(
    model,
    tokenizer,
    prompts: list[str],
    completions: list[str],
    end_ids: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    add_special_tokens: bool = True,
) -> np.ndarray:
    """Summed log-likelihood of each completion, followed by ``end_ids``, after each prompt: shape
    ``[n_prompts, n_completions]``.

    The lm-evaluation-harness ``multiple_choice`` rule: pass completions as ``" " + label``. ``end_ids`` are the
    tokens training puts after the answer (``reviewtune.prompt_format.answer_end_ids``; default: the
    end-of-sequence token the plain format's training appends; ``()`` scores the completion alone), so a label
    that is a prefix of another one pays for stopping. ``add_special_tokens=False`` for prompts that carry their
    own (a rendered chat). Prompt and prompt+completion are tokenised separately and only the tokens from where
    the two id lists diverge (as in trl's SFT tokenisation) are scored, so a token merging across the boundary is
    never half-counted.

    Each prompt is read once: one forward pass per batch of ``batch_size`` prompts reads every prompt followed
    by its labels as a token tree (shared label prefixes once), each label attending to the prompt and its own
    earlier tokens only, and only the scored positions are projected to the vocabulary. Attention
    implementations that take no custom mask, and batches longer than a sliding-window model's window, read one
    right-padded sequence per (prompt, label) pair instead (same scores).
    """
    n_p, n_c = len(prompts), len(completions)
    scores = np.zeros((n_p, n_c), dtype=np.float64)
    if n_p == 0 or n_c == 0:
        return scores
    model.eval()
    end = answer_end_ids(tokenizer, PLAIN) if end_ids is None else [int(t) for t in end_ids]
    pad_id = _pad_id(tokenizer)
    tree_attention = getattr(model.config, "_attn_implementation", "eager") in TREE_ATTENTION
    window = sliding_window(model.config)
    prompt_ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    order = sorted(range(n_p), key=lambda i: len(prompt_ids[i]))  # similar lengths share a batch
    bar = tqdm(total=n_p, desc="Scoring labels", unit="review", disable=not progress)
    for start in range(0, n_p, batch_size):
        idx = order[start : start + batch_size]
        fulls = tokenizer([prompts[i] + c for i in idx for c in completions], add_special_tokens=add_special_tokens)[
            "input_ids"
        ]
        trees = [_label_tree(prompt_ids[i], fulls[k * n_c : (k + 1) * n_c], end, completions, i)
                 for k, i in enumerate(idx)]  # fmt: skip
        longest = max(len(seq) for tree in trees for seq in tree.sequences)
        use_tree = tree_attention and (window is None or longest <= window)
        scores[idx] = (_tree_scores if use_tree else _pair_scores)(model, pad_id, trees, batch_size)
        bar.update(len(idx))
    bar.close()
    return scores


def _attention_dtype(model) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _tree_scores(model, pad_id: int, trees: list[_LabelTree], batch_size: int) -> np.ndarray:
    """``[len(trees), n_labels]`` scores from one forward pass over the prompts + label trees.

    Written by hand because transformers has no tree (shared-prefix) scoring: each row is the left-padded
    shared prompt prefix followed by the tree's read nodes, with explicit position ids (a node's position is the
    one it has in its own unpadded sequence) and a 4D mask (prompt: causal over its real tokens; node: the
    prompt's real tokens, its ancestors and itself). The KV of the prompt is computed once and read by every
    label; ``logits_to_keep`` (a boolean mask) projects only the last prompt position and the read nodes.
    """
    device = _device(model)
    feds = [tree.fed for tree in trees]
    width = max(len(tree.shared) for tree in trees)
    n_cols = width + max(len(f) for f in feds)
    input_ids = np.full((len(trees), n_cols), pad_id, dtype=np.int64)
    position_ids = np.zeros((len(trees), n_cols), dtype=np.int64)
    allowed = np.zeros((len(trees), n_cols, n_cols), dtype=bool)
    keep = np.zeros((len(trees), n_cols), dtype=bool)
    rows, targets, owners = [], [], []
    kept = 0  # logits come back flattened in (row, column) order
    for b, (tree, fed) in enumerate(zip(trees, feds, strict=True)):
        n, off = len(tree.shared), width - len(tree.shared)
        input_ids[b, off:width] = tree.shared
        position_ids[b, off:width] = np.arange(n)
        allowed[b, off:width, off:width] = np.tri(n, dtype=bool)
        col = {node: width + k for k, node in enumerate(fed)}
        for node, c in col.items():
            input_ids[b, c] = tree.tokens[node]
            position_ids[b, c] = n + tree.depths[node] - 1
            allowed[b, c, off:width] = True
            m = node
            while m >= 0:  # ancestors (all read: they have children) and itself
                allowed[b, c, col[m]] = True
                m = tree.parents[m]
        pads = np.r_[0:off, width + len(fed) : n_cols]
        allowed[b, pads, pads] = True  # padding attends to itself only: no fully masked row
        keep[b, width - 1 : width + len(fed)] = True
        logit_row = {-1: kept, **{node: kept + 1 + k for k, node in enumerate(fed)}}
        for j, node, token in tree.scored:
            rows.append(logit_row[node])
            targets.append(token)
            owners.append(b * len(tree.sequences) + j)
        kept += 1 + len(fed)
    mask = torch.from_numpy(allowed)[:, None]
    if getattr(model.config, "_attn_implementation", "eager") != "sdpa":  # eager adds the mask to its scores
        dtype = _attention_dtype(model)
        mask = torch.zeros(mask.shape, dtype=dtype).masked_fill_(~mask, torch.finfo(dtype).min)
    logits = model(
        input_ids=torch.from_numpy(input_ids).to(device),
        attention_mask=mask.to(device),
        position_ids=torch.from_numpy(position_ids).to(device),
        logits_to_keep=torch.from_numpy(keep).to(device),
        use_cache=False,
    ).logits
    return _sum_logprobs(logits.reshape(kept, -1), rows, targets, owners, (len(trees), len(trees[0].sequences)))


def _sum_logprobs(logits: torch.Tensor, rows: list[int], targets: list[int], owners: list[int], shape) -> np.ndarray:
    """Sum of ``log_softmax(logits)[rows, targets]`` per owner (a flat index into ``shape``)."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    token_lp = logprobs[torch.tensor(rows, device=logits.device), torch.tensor(targets, device=logits.device)]
    flat = torch.zeros(int(np.prod(shape)), dtype=torch.float64)
    flat.index_add_(0, torch.tensor(owners), token_lp.double().cpu())
    return flat.numpy().reshape(shape)


def _pair_scores(model, pad_id: int, trees: list[_LabelTree], batch_size: int) -> np.ndarray:
    """``[len(trees), n_labels]`` scores from one right-padded sequence per (prompt, label) pair, ``batch_size``
    pairs per forward pass: for attention implementations that take no custom 4D mask. Only the scored
    positions are projected to the vocabulary."""
    device = _device(model)
    n_c = len(trees[0].sequences)
    pairs = [(b * n_c + j, seq, tree.starts[j]) for b, tree in enumerate(trees) for j, seq in enumerate(tree.sequences)]
    pairs.sort(key=lambda pair: len(pair[1]))
    out = np.zeros((len(trees), n_c), dtype=np.float64)
    for b in range(0, len(pairs), batch_size):
        batch = pairs[b : b + batch_size]
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
        out += _sum_logprobs(logits.reshape(len(targets), -1), list(range(len(targets))), targets, owners, out.shape)
    return out


def loglik_probs(scores: np.ndarray) -> np.ndarray:
    """Softmax over the label axis of :func:`label_loglik` scores: one probability per label, rows sum to 1."""
    shifted = scores - scores.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)
