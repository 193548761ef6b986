"""Constrained greedy decoding: answers restricted, token by token, to the task's answer language.

The answer language of each task (what ``reviewtune.prompts.format_answer`` writes after the prompt, as
``" " + answer``) is a small automaton over UTF-8 bytes:

- closed label sets (``sentiment``, ``sentiment5``): one of the labels;
- ``aspects``: ``없음``, or ``keyword+polarity`` items from the task's lists joined by ``", "``, no keyword twice;
- ``regression``: a number (``-?\\d+(\\.\\d+)?(e[+-]?\\d+)?``, what ``:g`` and ``repr`` write; finite).

:class:`TokenConstraint` maps it onto the tokenizer's own vocabulary: a token is allowed when its bytes keep
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
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from reviewtune.generation import _device, _pad_id, answer_end_ids, left_padded_batches
from reviewtune.tasks import EMPTY_ASPECTS_ANSWER, TaskSpec

State = Hashable
INF = math.inf
ANSWER_LEAD = " "  # completion = " " + answer (reviewtune.prompts.to_instruction)


# ---------------------------------------------------------------------------------------------- languages


class AnswerLanguage:
    """A deterministic automaton over bytes. ``step`` returns ``None`` for a byte that leaves the language;
    ``min_bytes`` is the exact number of bytes still needed to reach an accepting state (``inf``: none)."""

    start: State

    def step(self, state: State, byte: int) -> State | None:
        raise NotImplementedError

    def accepts(self, state: State) -> bool:
        raise NotImplementedError

    def min_bytes(self, state: State) -> float:
        raise NotImplementedError


@dataclass(frozen=True)
class ChoiceLanguage(AnswerLanguage):
    """Exactly one of ``choices`` (e.g. ``" 긍정"``); a choice may be a prefix of another."""

    choices: tuple[str, ...]
    _rest: dict = field(default_factory=dict, compare=False, hash=False, repr=False)  # prefix -> min bytes left
    _accept: set = field(default_factory=set, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if not self.choices or any(not c for c in self.choices):
            raise ValueError(f"choices must be non-empty strings: {self.choices!r}")
        for choice in self.choices:
            data = choice.encode("utf-8")
            self._accept.add(data)
            for n in range(len(data) + 1):
                self._rest[data[:n]] = min(self._rest.get(data[:n], INF), len(data) - n)

    @property
    def start(self) -> bytes:
        return b""

    def step(self, state: bytes, byte: int) -> bytes | None:
        nxt = state + bytes((byte,))
        return nxt if nxt in self._rest else None

    def accepts(self, state: bytes) -> bool:
        return state in self._accept

    def min_bytes(self, state: bytes) -> float:
        return self._rest.get(state, INF)


_DIGIT = "digit"
_NUMBER = {  # phase -> {character (or _DIGIT) -> next phase}
    "start": {"-": "sign", _DIGIT: "int"},
    "sign": {_DIGIT: "int"},
    "int": {_DIGIT: "int", ".": "dot", "e": "e"},
    "dot": {_DIGIT: "frac"},
    "frac": {_DIGIT: "frac", "e": "e"},
    "e": {"+": "esign", "-": "esign", _DIGIT: "exp"},
    "esign": {_DIGIT: "exp"},
    "exp": {_DIGIT: "exp"},
}
_NUMBER_REST = {"start": 1, "sign": 1, "int": 0, "dot": 1, "frac": 0, "e": 1, "esign": 1, "exp": 0}  # 0: accepts
# Most digits per part: what ``format_answer`` writes (``repr`` has at most 16 integer digits before it switches
# to an exponent), and never a float overflow (``float("9" * 400)`` and ``float("1e999")`` are ``inf``: invalid).
_NUMBER_DIGITS = {"int": 16, "frac": 20, "exp": 2}


@dataclass(frozen=True)
class NumberLanguage(AnswerLanguage):
    """``lead`` then a decimal number as ``format_answer`` writes scores: ``-?\\d+(\\.\\d+)?(e[+-]?\\d+)?``, with
    at most 16 integer, 20 fraction and 2 exponent digits (always a finite float). States: ``("lead", i)``,
    ``("num", phase, digits in this phase)``."""

    lead: str = ANSWER_LEAD

    @property
    def start(self) -> tuple:
        return ("lead", 0) if self.lead else ("num", "start", 0)

    def step(self, state: tuple, byte: int) -> tuple | None:
        if state[0] == "lead":
            lead = self.lead.encode("utf-8")
            if byte != lead[state[1]]:
                return None
            return ("lead", state[1] + 1) if state[1] + 1 < len(lead) else ("num", "start", 0)
        _, phase, digits = state
        nxt = _NUMBER[phase].get(_DIGIT if 0x30 <= byte <= 0x39 else chr(byte))
        if nxt is None:
            return None
        digits = digits + 1 if nxt == phase else 1 if nxt in _NUMBER_DIGITS else 0
        return ("num", nxt, digits) if digits <= _NUMBER_DIGITS.get(nxt, 0) else None

    def accepts(self, state: tuple) -> bool:
        return state[0] == "num" and _NUMBER_REST[state[1]] == 0

    def min_bytes(self, state: tuple) -> float:
        if state[0] == "lead":
            return len(self.lead.encode("utf-8")) - state[1] + 1
        return _NUMBER_REST[state[1]]


@dataclass(frozen=True)
class AspectLanguage(AnswerLanguage):
    """``lead`` then ``empty``, or ``keyword+polarity`` items joined by ``sep``, each keyword at most once.

    States: ``("lead", i)``, ``("item", used, text)`` (``text``: the current item's bytes so far) and
    ``("sep", used, i)``. An item's keyword is the one ``parse_answer`` reads (longest keyword first).
    """

    keywords: tuple[str, ...]
    polarities: tuple[int, ...]
    empty: str = EMPTY_ASPECTS_ANSWER
    lead: str = ANSWER_LEAD
    sep: str = ", "
    _items: dict = field(default_factory=dict, compare=False, hash=False, repr=False)  # item bytes -> keyword
    _prefixes: dict = field(default_factory=dict, compare=False, hash=False, repr=False)  # -> [(bytes left, kw)]

    def __post_init__(self) -> None:
        names = [str(p) for p in self.polarities]
        longest_first = sorted(self.keywords, key=len, reverse=True)
        for keyword in self.keywords:
            for name in names:
                item = keyword + name
                parsed = next((k for k in longest_first if item.startswith(k) and item[len(k) :] in names), None)
                if parsed == keyword:  # else the parser reads another keyword: that item is listed under it
                    self._items[item.encode("utf-8")] = keyword
        if self.empty.encode("utf-8") in self._items:
            raise ValueError(f"the empty answer {self.empty!r} is also an aspect item")
        self._items[self.empty.encode("utf-8")] = None  # keyword None: the whole answer, first and only
        for item, keyword in self._items.items():
            for n in range(len(item) + 1):
                self._prefixes.setdefault(item[:n], []).append((len(item) - n, keyword))
        for options in self._prefixes.values():
            options.sort(key=lambda x: x[0])

    @property
    def start(self) -> tuple:
        return ("lead", 0) if self.lead else ("item", frozenset(), b"")

    @staticmethod
    def _open(keyword: str | None, used: frozenset) -> bool:
        return (not used) if keyword is None else keyword not in used

    def step(self, state: tuple, byte: int) -> tuple | None:
        kind = state[0]
        if kind == "lead":
            lead = self.lead.encode("utf-8")
            if byte != lead[state[1]]:
                return None
            return ("lead", state[1] + 1) if state[1] + 1 < len(lead) else ("item", frozenset(), b"")
        if kind == "sep":
            _, used, at = state
            sep = self.sep.encode("utf-8")
            if byte != sep[at]:
                return None
            return ("sep", used, at + 1) if at + 1 < len(sep) else ("item", used, b"")
        _, used, text = state
        sep = self.sep.encode("utf-8")
        keyword = self._items.get(text, False)
        if byte == sep[0] and keyword and keyword not in used:  # an item is complete: next one
            used = used | {keyword}
            return ("sep", used, 1) if len(sep) > 1 else ("item", used, b"")
        text += bytes((byte,))
        if any(self._open(k, used) for _, k in self._prefixes.get(text, ())):
            return ("item", used, text)
        return None

    def accepts(self, state: tuple) -> bool:
        if state[0] != "item":
            return False
        _, used, text = state
        keyword = self._items.get(text, False)
        return keyword is not False and self._open(keyword, used)

    def _min_item(self, used: frozenset, text: bytes = b"") -> float:
        return next((left for left, k in self._prefixes.get(text, ()) if self._open(k, used)), INF)

    def min_bytes(self, state: tuple) -> float:
        kind = state[0]
        if kind == "lead":
            return len(self.lead.encode("utf-8")) - state[1] + self._min_item(frozenset())
        if kind == "sep":
            _, used, at = state
            return len(self.sep.encode("utf-8")) - at + self._min_item(used | {None})  # None: not 없음 after a sep
        _, used, text = state
        return self._min_item(used, text)


def task_language(task: TaskSpec, lead: str = ANSWER_LEAD) -> AnswerLanguage:
    """The answer language of ``task`` as the SFT recipe trains it: ``lead`` (one space) + a valid answer."""
    if task.name in ("sentiment", "sentiment5"):
        return ChoiceLanguage(tuple(lead + name for name in task.label_names))
    if task.name == "aspects":
        return AspectLanguage(tuple(task.keywords), tuple(task.polarities), lead=lead)
    if task.name == "regression":
        return NumberLanguage(lead)
    raise ValueError(f"no answer language for task {task.name!r}")


# -------------------------------------------------------------------------------------------- vocabulary


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet (printable character -> byte), as in ``tokenizers``' ``ByteLevel``."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


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
    byte_of = _byte_decoder()
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
    a dictionary lookup. ``end_ids`` (default: the end-of-sequence token) close every answer.
    """

    def __init__(self, tokenizer, language: AnswerLanguage, end_ids: Sequence[int] | None = None) -> None:
        self.language = language
        self.end_ids = tuple(answer_end_ids(tokenizer) if end_ids is None else (int(t) for t in end_ids))
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
def cached_constraint(tokenizer, language: AnswerLanguage, end_ids: tuple[int, ...] | None = None) -> TokenConstraint:
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
    gen_config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        pad_token_id=pad_id,
        # One end token: generate stops rows at it natively. Longer end sequences: the stopping criterion.
        eos_token_id=list(constraint.end_ids[:1]) if single_end else None,
    )
    encoded = tokenizer(list(prompts))["input_ids"]
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
