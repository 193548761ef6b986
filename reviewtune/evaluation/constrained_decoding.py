"""Constrained greedy decoding: answers restricted, token by token, to the task's answer language.

The answer language of each task (``reviewtune.evaluation.answer_languages``) is a small automaton over UTF-8
bytes. :class:`TokenConstraint` maps it onto the tokenizer's own vocabulary: a token is allowed when its bytes keep
the answer a prefix of a valid answer that can still be finished, with the end token(s), within the answer's
token budget; the end token only when the answer is complete. :class:`ConstrainedLogitsProcessor` applies this
inside ``model.generate`` (greedy: the most likely allowed token), so every answer parses with ``parse_answer``
by construction, whatever tokenisation the model takes. Written here rather than taken from ``outlines`` or a
regex-to-DFA library: the aspect language ("no keyword twice") is not a small regular expression, and
the constraint needs nothing beyond transformers' ``LogitsProcessor`` hook.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode  # the ByteLevel alphabet tokenizers use

from reviewtune.evaluation.answer_languages import INF, AnswerLanguage, State
from reviewtune.evaluation.generation import _device, _pad_id, greedy_config, left_padded_batches
from reviewtune.prompt_format import PLAIN, answer_end_ids


def token_bytes(tokenizer) -> list[bytes | None]:
    """The bytes each token id stands for (``None``: a special token, or one whose bytes are unknown).

    Byte-level BPE (GPT-2, Llama 3, Qwen, the suite's own tokenizer) maps each character of a token back to
    one byte; SentencePiece vocabularies write a space as ``▁`` and raw bytes as ``<0xAB>``. Any other
    tokenizer: a token's own decoded text, where it decodes to whole characters.
    """
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    out: list[bytes | None] = [None] * size
    special = set(tokenizer.all_special_ids)
    added = set(getattr(tokenizer, "added_tokens_decoder", {}))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = (json.loads(backend.to_str()).get("decoder") or {}) if backend is not None else {}
    types = {decoder.get("type"), *(d.get("type") for d in decoder.get("decoders") or [])}
    decoder_type = None
    if "ByteLevel" in types:
        decoder_type = "bytelevel"
    elif types & {"ByteFallback", "Metaspace", "Replace"}:
        decoder_type = "sentencepiece"
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}  # GPT-2's byte-level alphabet, inverted
    for token, i in vocab.items():
        if i in special:
            continue
        if i in added:  # added (non-special) tokens are stored as plain text
            out[i] = token.encode("utf-8")
        elif decoder_type == "bytelevel" and all(c in byte_of for c in token):
            out[i] = bytes(byte_of[c] for c in token)
        elif decoder_type == "sentencepiece":
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                out[i] = bytes((int(token[3:5], 16),))
            else:
                out[i] = token.replace("▁", " ").encode("utf-8")
        else:
            text = tokenizer.decode([i])
            out[i] = text.encode("utf-8") if text and "\ufffd" not in text else None
    return [b or None for b in out]


class TokenConstraint:
    """``language`` over the tokenizer's vocabulary: which tokens may come next, and from which state.

    Transitions are found by walking a byte trie of the vocabulary along the language (only viable branches
    are visited) and cached per state, so states met again (the same label prefix in another review) cost
    a dictionary lookup. ``end_ids`` (``reviewtune.prompt_format.answer_end_ids``; default the end-of-sequence
    token) close every answer.
    """

    def __init__(self, tokenizer, language: AnswerLanguage, end_ids: Sequence[int] | None = None) -> None:
        self.language = language
        ends = answer_end_ids(tokenizer, PLAIN) if end_ids is None else end_ids  # default: the plain format's EOS
        self.end_ids = tuple(int(t) for t in ends)
        if not self.end_ids:
            raise ValueError("constrained decoding needs at least one end token")
        self.token_bytes = token_bytes(tokenizer)
        for t in self.end_ids:  # an end token is never part of an answer, so it is never ambiguous
            if t < len(self.token_bytes):
                self.token_bytes[t] = None
        self.vocab_size = len(self.token_bytes)
        self._children: list[dict[int, int]] = [{}]
        self._ids: list[list[int]] = [[]]
        for t, data in enumerate(self.token_bytes):
            if data is None:
                continue
            node = 0
            for byte in data:
                nxt = self._children[node].get(byte)
                if nxt is None:
                    nxt = len(self._children)
                    self._children[node][byte] = nxt
                    self._children.append({})
                    self._ids.append([])
                node = nxt
            self._ids[node].append(t)
        # With every byte a token of its own, an answer n bytes from complete is at most n tokens from it.
        self._single_bytes = all(b in self._children[0] and self._ids[self._children[0][b]] for b in range(256))
        self._transitions: dict[State, dict[int, State]] = {}
        self._min_tokens: dict[State, tuple[float, int]] = {}  # state -> (fewest tokens, depth searched)
        self._allowed: dict[tuple[State, int], torch.Tensor] = {}

    def transitions(self, state: State) -> dict[int, State]:
        """Token id -> next state, for every token whose bytes the language accepts from ``state``."""
        out = self._transitions.get(state)
        if out is None:
            out = {}
            stack = [(0, state)]
            while stack:
                node, current = stack.pop()
                for byte, child in self._children[node].items():
                    nxt = self.language.step(current, byte)
                    if nxt is None:
                        continue
                    for t in self._ids[child]:
                        out[t] = nxt
                    if self._children[child]:
                        stack.append((child, nxt))
            self._transitions[state] = out
        return out

    def min_tokens(self, state: State, limit: int) -> float:
        """Fewest tokens from ``state`` to a complete answer (``inf`` if more than ``limit``), breadth-first."""
        if self.language.accepts(state):
            return 0
        if self.language.min_bytes(state) == INF:
            return INF
        found, searched = self._min_tokens.get(state, (INF, -1))
        if found != INF or searched >= limit:
            return found
        frontier, seen, depth, found = {state}, {state}, 0, INF
        while frontier and depth < limit and found == INF:
            depth += 1
            nxt_frontier = set()
            for s in frontier:
                for nxt in self.transitions(s).values():
                    if self.language.accepts(nxt):
                        found = depth
                        break
                    if nxt not in seen and self.language.min_bytes(nxt) != INF:
                        seen.add(nxt)
                        nxt_frontier.add(nxt)
                if found != INF:
                    break
            frontier = nxt_frontier
        self._min_tokens[state] = (found, limit)
        return found

    def _fits(self, state: State, budget: int) -> bool:
        """Can ``state`` be completed within ``budget`` tokens (end tokens not counted)?"""
        if budget < 0:
            return False
        need = self.language.min_bytes(state)
        if need == INF:
            return False
        if self._single_bytes and need <= budget:
            return True
        return self.min_tokens(state, budget) <= budget

    def allowed(self, state: State, remaining: int) -> torch.Tensor:
        """Token ids allowed from ``state`` when ``remaining`` tokens (this one and the end tokens included) are
        left: tokens after which the answer still fits, and the first end token once the answer is complete."""
        key = (state, remaining)
        ids = self._allowed.get(key)
        if ids is None:
            n_end = len(self.end_ids)
            allowed = [self.end_ids[0]] if self.language.accepts(state) and remaining >= n_end else []
            allowed += [t for t, nxt in self.transitions(state).items() if self._fits(nxt, remaining - 1 - n_end)]
            if not allowed:
                raise RuntimeError(f"constrained decoding reached a state with no way out: {state!r}")
            ids = self._allowed[key] = torch.tensor(sorted(allowed), dtype=torch.long)
        return ids

    def fits_budget(self, max_new_tokens: int) -> bool:
        return self._fits(self.language.start, max_new_tokens - len(self.end_ids))

    def answer_text(self, ids: Sequence[int]) -> str:
        """The answer of generated ``ids``: the bytes of the tokens before the first end token."""
        out = []
        for t in ids:
            if t == self.end_ids[0]:
                break
            out.append(self.token_bytes[t] or b"")
        return b"".join(out).decode("utf-8", errors="replace")


_DONE = ("done",)


class ConstrainedLogitsProcessor(LogitsProcessor):
    """Masks every token the constraint does not allow, row by row, in one batch of ``generate``.

    A row's state is found from its generated ids (prompt width known), memoised by id prefix, so rows may
    finish or be padded in any order. Finished rows (end tokens all emitted) are left unconstrained.
    """

    def __init__(self, constraint: TokenConstraint, prompt_width: int, max_new_tokens: int) -> None:
        self.constraint = constraint
        self.width = prompt_width
        self.max_new_tokens = max_new_tokens
        self._states: dict[tuple[int, ...], tuple] = {(): (constraint.language.start, 0)}

    def state(self, ids: tuple[int, ...]) -> tuple:
        """``(language state, end tokens emitted)`` after generated ``ids``, or ``_DONE``."""
        known = self._states.get(ids)
        if known is None:
            parent = self.state(ids[:-1])
            token = ids[-1]
            end = self.constraint.end_ids
            if parent is _DONE:
                known = _DONE
            elif parent[1] or token == end[0]:  # in (or entering) the end sequence: forced
                emitted = parent[1] + 1
                known = _DONE if emitted == len(end) else (parent[0], emitted)
            else:
                known = (self.constraint.transitions(parent[0])[token], 0)
            self._states[ids] = known
        return known

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        blocked = torch.ones_like(scores, dtype=torch.bool)
        end = self.constraint.end_ids
        for row, generated in enumerate(input_ids[:, self.width :].tolist()):
            state = self.state(tuple(generated))
            if state is _DONE:
                blocked[row] = False
            elif state[1]:
                blocked[row, end[state[1]]] = False
            else:
                ids = self.constraint.allowed(state[0], self.max_new_tokens - len(generated))
                blocked[row, ids.to(scores.device)] = False
        return scores.masked_fill(blocked, -math.inf)


class _ConstraintDone(StoppingCriteria):
    """Per row: the end sequence has been emitted (multi-token end sequences; one token stops natively)."""

    def __init__(self, processor: ConstrainedLogitsProcessor) -> None:
        self.processor = processor

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        width = self.processor.width
        done = [self.processor.state(tuple(row)) is _DONE for row in input_ids[:, width:].tolist()]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@functools.lru_cache(maxsize=8)
def cached_constraint(tokenizer, language: AnswerLanguage, end_ids: tuple[int, ...] | None) -> TokenConstraint:
    """One :class:`TokenConstraint` per (tokenizer, language, end ids): its trie and transitions are reused."""
    return TokenConstraint(tokenizer, language, end_ids)


@torch.inference_mode()
def constrained_answers(
    model,
    tokenizer,
    prompts: list[str],
    language: AnswerLanguage,
    max_new_tokens: int,
    end_ids: Sequence[int] | None = None,
    batch_size: int = 16,
    progress: bool = True,
    add_special_tokens: bool = True,
) -> list[str]:
    """Greedy-decode an answer for every prompt, restricted to ``language`` and closed by ``end_ids`` within
    ``max_new_tokens`` (end tokens included). Returns each answer's text (without the end tokens), in order."""
    if not prompts:
        return []
    constraint = cached_constraint(tokenizer, language, None if end_ids is None else tuple(end_ids))
    if not constraint.fits_budget(max_new_tokens):
        raise ValueError(f"no valid answer fits in max_new_tokens={max_new_tokens} (end tokens included)")
    model.eval()
    device = _device(model)
    pad_id = _pad_id(tokenizer)
    single_end = len(constraint.end_ids) == 1
    # One end token: generate stops rows at it natively. Longer end sequences: the stopping criterion.
    gen_config = greedy_config(max_new_tokens, pad_id, constraint.end_ids[:1] if single_end else None)
    encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
    answers: list[str] = [""] * len(prompts)
    bar = tqdm(total=len(prompts), desc="Constrained decoding", unit="review", disable=not progress)
    for idx, input_ids, attention_mask in left_padded_batches(encoded, batch_size, pad_id):
        width = input_ids.shape[1]
        processor = ConstrainedLogitsProcessor(constraint, width, max_new_tokens)
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            generation_config=gen_config,
            logits_processor=LogitsProcessorList([processor]),
            stopping_criteria=StoppingCriteriaList([] if single_end else [_ConstraintDone(processor)]),
        )
        for row, i in enumerate(idx):
            answers[i] = constraint.answer_text(out[row, width:].tolist())
        bar.update(len(idx))
    bar.close()
    return answers
