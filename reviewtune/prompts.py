"""Instruction text and its inverse parser.

``prompt = "###입력: {review}\\n###명령어: {instruction}\\n###출력:"`` and ``completion = " " + answer``:
one function builds both so training and scoring share the same boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from reviewtune.prompt_format import CHAT, prompt_tokens, trainer_example
from reviewtune.records import sort_aspects
from reviewtune.tasks import EMPTY_ASPECTS_ANSWER, TaskSpec


def build_prompt(review: str, task: TaskSpec) -> str:
    return task.template.format(review=review, instruction=task.instruction)


def keyword_input(review: str, keyword: str, task: TaskSpec | None = None) -> str:
    """Classifier input for the polarity of one keyword: ``###입력: {review}\\n###키워드: {keyword}``."""
    template = task.keyword_template if task else "###입력: {review}\n###키워드: {keyword}"
    return template.format(review=review, keyword=keyword)


def format_answer(record: dict, task: TaskSpec) -> str:
    """The answer text for a record: ``긍정``, ``매우부정``, ``디자인1, 배송-1``, ``없음``, ``3.5``."""
    if task.name in ("sentiment", "sentiment5"):
        return task.label_names[record["sentiment"]]
    if task.name == "aspects":
        aspects = sort_aspects(record["aspects"], task)
        if not aspects:
            return EMPTY_ASPECTS_ANSWER
        return ", ".join(f"{a['keyword']}{a['polarity']}" for a in aspects)
    if task.name == "regression":
        score = float(record["score"])
        short = f"{score:g}"  # "4" rather than "4.0"; repr when :g would round (3.14159265 -> 3.14159)
        return short if float(short) == score else repr(score)
    raise ValueError(f"unknown task {task.name!r}")


def fit_prompt(review: str, task: TaskSpec, tokenizer, max_tokens: int | None, suffix: str = "") -> tuple[str, bool]:
    """``build_prompt``, with the review (never the template, nor ``suffix`` after the prompt) cut so that
    ``prompt + suffix`` is at most ``max_tokens`` tokens; returns ``(prompt, shortened)``.

    The one place a review is cut: training examples (``suffix`` = the completion) and every scoring mode.
    Counted in the run's prompt format: for ``chat`` the tokens of the rendered chat, ``suffix`` the answer.
    """
    prompt = build_prompt(review, task)
    if tokenizer is None or max_tokens is None:
        return prompt, False

    def length(text: str) -> int:
        if task.prompt_format == CHAT:
            return prompt_tokens(text, tokenizer, CHAT, answer=suffix or None)
        return len(tokenizer(text + suffix)["input_ids"])

    n = length(prompt)
    if n <= max_tokens:
        return prompt, False
    review_ids = tokenizer(review, add_special_tokens=False)["input_ids"]
    budget = max(0, len(review_ids) - (n - max_tokens))
    while True:  # decoding a prefix of ids and re-tokenising can differ by a token; shrink until it fits
        prompt = build_prompt(tokenizer.decode(review_ids[:budget], skip_special_tokens=True), task)
        if budget == 0 or length(prompt) <= max_tokens:
            return prompt, True
        budget -= 1


def to_instruction(record: dict, task: TaskSpec, tokenizer=None, max_length: int | None = None) -> dict:
    """Prompt/completion pair for a record (strings, or trl's conversational messages when the task's prompt format
    is ``chat``), with ``shortened`` telling whether the review was cut.

    With a tokenizer and ``max_length``, the review (never the answer) is cut to the token budget
    that leaves room for the template, the answer and the end-of-sequence token: trl truncates from
    the end, which would cut the answer first.
    """
    answer = format_answer(record, task)
    if task.prompt_format == CHAT:  # conversational: the count covers the whole rendered chat, end of turn included
        prompt, shortened = fit_prompt(record["text"], task, tokenizer, max_length, suffix=answer)
        return {**trainer_example(prompt, answer, CHAT), "shortened": shortened}
    completion = " " + answer
    budget = None if max_length is None else max_length - 1  # - 1: the end-of-sequence token trl appends
    prompt, shortened = fit_prompt(record["text"], task, tokenizer, budget, suffix=completion)
    return {"prompt": prompt, "completion": completion, "shortened": shortened}


@dataclass
class ParsedAnswer:
    """Result of parsing answer text: ``valid`` plus the label(s), or an invalid ``reason``."""

    valid: bool
    label: int | None = None  # sentiment / sentiment5
    aspects: list[dict] | None = None  # aspects
    score: float | None = None  # regression
    reason: str | None = None
    text: str = field(default="", repr=False)


def parse_answer(text: str, task: TaskSpec) -> ParsedAnswer:
    """Answer text -> labels. Never raises: malformed text gives ``valid=False`` with a reason."""
    if not isinstance(text, str):
        return ParsedAnswer(False, reason="not_text", text=repr(text))
    answer = text.strip()
    if not answer:
        return ParsedAnswer(False, reason="empty", text=text)
    if task.name in ("sentiment", "sentiment5"):
        if answer in task.label_names:
            return ParsedAnswer(True, label=task.label_names.index(answer), text=text)
        return ParsedAnswer(False, reason="unknown_label", text=text)
    if task.name == "aspects":
        return _parse_aspects(answer, task, text)
    if task.name == "regression":
        try:
            score = float(answer)
        except ValueError:
            return ParsedAnswer(False, reason="not_a_number", text=text)
        if score != score or score in (float("inf"), float("-inf")):
            return ParsedAnswer(False, reason="not_a_number", text=text)
        return ParsedAnswer(True, score=score, text=text)
    return ParsedAnswer(False, reason="unknown_task", text=text)


def _parse_aspects(answer: str, task: TaskSpec, text: str) -> ParsedAnswer:
    if answer == EMPTY_ASPECTS_ANSWER:
        return ParsedAnswer(True, aspects=[], text=text)
    # An item is a known keyword followed by the exact text of a known polarity. Matching against the
    # lists (not a regex like ``(.+?)(-?\d+)``) keeps keywords that end in a digit (``V2`` + ``1``) and
    # never converts arbitrary digit strings to int (which raises beyond 4300 digits).
    polarity_of = {str(p): p for p in task.polarities}
    keywords = sorted(task.keywords, key=len, reverse=True)  # longest first: "V2" + "1" before "V" + "21"
    aspects, seen = [], set()
    for item in answer.split(","):
        item = item.strip()
        keyword = next((k for k in keywords if item.startswith(k) and item[len(k) :] in polarity_of), None)
        if keyword is None:
            return ParsedAnswer(False, reason=_bad_item_reason(item, keywords), text=text)
        if keyword in seen:
            return ParsedAnswer(False, reason="duplicate_keyword", text=text)
        seen.add(keyword)
        aspects.append({"keyword": keyword, "polarity": polarity_of[item[len(keyword) :]]})
    return ParsedAnswer(True, aspects=sort_aspects(aspects, task), text=text)


def _bad_item_reason(item: str, keywords: list[str]) -> str:
    """Why an aspect item is not ``keyword`` + polarity: bad_polarity, unknown_keyword or bad_item."""
    head = item.rstrip("0123456789")
    if head == item or not head.rstrip("+-"):
        return "bad_item"  # no trailing number, or nothing before it
    head = head[:-1] if head[-1] in "+-" else head
    return "bad_polarity" if head in keywords else "unknown_keyword"
