"""Each task's answer language, as a small automaton over UTF-8 bytes (what ``reviewtune.prompts.format_answer``
writes after the prompt, ``lead`` + answer):

- closed label sets (``sentiment``, ``sentiment5``): one of the labels;
- ``aspects``: ``없음``, or ``keyword+polarity`` items from the task's lists joined by ``", "``, no keyword twice;
- ``regression``: a number (``-?\\d+(\\.\\d+)?(e[+-]?\\d+)?``, what ``:g`` and ``repr`` write; finite).

``reviewtune.evaluation.constrained_decoding`` decodes within them."""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass, field

from reviewtune.tasks import EMPTY_ASPECTS_ANSWER, TaskSpec

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

State = Hashable


INF = math.inf


ANSWER_LEAD = " "  # completion = " " + answer (reviewtune.prompts.to_instruction)


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
