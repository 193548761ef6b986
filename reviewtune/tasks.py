"""The tasks, defined once: label schemes, keyword lists and default instructions.

Recipes derive their heads from a ``TaskSpec``; scoring rebuilds prompts and parses answers
from the ``task_spec.json`` a run saves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from reviewtune.atomic import atomic_write_json, read_json
from reviewtune.prompt_format import PLAIN
from reviewtune.provenance import provenance

TASKS = ("sentiment", "sentiment5", "aspects", "regression")
TEMPLATE = "###입력: {review}\n###명령어: {instruction}\n###출력:"
KEYWORD_TEMPLATE = "###입력: {review}\n###키워드: {keyword}"

SENTIMENT_LABELS = ["부정", "긍정"]
SENTIMENT5_LABELS = ["매우부정", "부정", "중립", "긍정", "매우긍정"]
DEFAULT_KEYWORDS = [
    "가격", "기능성", "길이", "디자인", "라인(핏)", "마감처리", "배송",
    "사이즈", "색상", "소재", "스타일", "신축성", "착용감", "품질",
]  # fmt: skip
POLARITIES = [-2, -1, 0, 1, 2]
EMPTY_ASPECTS_ANSWER = "없음"

DEFAULT_INSTRUCTIONS = {
    "sentiment": "리뷰의 감정을 긍정 또는 부정으로 분류해줘",
    "sentiment5": "리뷰의 감정을 다섯 단계로 분류해줘",
    "aspects": "리뷰를 분석해줘",
    "regression": "리뷰의 점수를 매겨줘",
}


@dataclass
class TaskSpec:
    """Everything needed to build prompts, heads and parsers for one task."""

    name: str
    instruction: str
    label_names: list[str] = field(default_factory=list)  # sentiment / sentiment5 classes
    keywords: list[str] = field(default_factory=list)  # aspects only
    polarities: list[int] = field(default_factory=lambda: list(POLARITIES))  # aspects only
    template: str = TEMPLATE
    keyword_template: str = KEYWORD_TEMPLATE
    prompt_format: str = PLAIN  # generative runs: plain ###입력 text, or "chat" (the tokenizer's chat template)

    @property
    def num_labels(self) -> int:
        """Size of the single-label head (0 for aspects, 1 for regression)."""
        if self.name == "regression":
            return 1
        return len(self.label_names)

    @property
    def polarity_names(self) -> list[str]:
        return [str(p) for p in self.polarities]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TaskSpec:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def save(self, directory: str | Path) -> Path:
        return atomic_write_json(Path(directory) / "task_spec.json", {**self.to_dict(), "provenance": provenance()})

    @classmethod
    def load(cls, directory: str | Path) -> TaskSpec:
        return cls.from_dict(read_json(Path(directory) / "task_spec.json"))


def get_task(
    name: str,
    *,
    instruction: str | None = None,
    label_names: list[str] | None = None,
    keywords: list[str] | None = None,
) -> TaskSpec:
    """Build the ``TaskSpec`` for ``name``; users may override instruction, labels and keywords."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    default_labels = {"sentiment": SENTIMENT_LABELS, "sentiment5": SENTIMENT5_LABELS}.get(name, [])
    labels = list(label_names) if label_names else list(default_labels)
    if name in ("sentiment", "sentiment5") and len(labels) != len(default_labels):
        raise ValueError(f"task {name} needs {len(default_labels)} label names, got {len(labels)}: {labels}")
    kws = list(keywords) if keywords else (list(DEFAULT_KEYWORDS) if name == "aspects" else [])
    if len(set(kws)) != len(kws):
        raise ValueError(f"duplicate keywords in {kws}")
    # Answers are "keyword+polarity" joined by ", ": these would not parse back to the same labels.
    bad = [k for k in kws if not k or k != k.strip() or "," in k or k[-1] in "+-" or k == EMPTY_ASPECTS_ANSWER]
    if bad:
        raise ValueError(f"keywords must be non-empty, without commas, outer spaces or a trailing sign, and not "
                         f"{EMPTY_ASPECTS_ANSWER!r}: {bad}")  # fmt: skip
    if len(set(labels)) != len(labels) or any(not x or x != x.strip() for x in labels):
        raise ValueError(f"label names must be distinct, non-empty and without outer spaces: {labels}")
    return TaskSpec(
        name=name,
        instruction=instruction or DEFAULT_INSTRUCTIONS[name],
        label_names=labels,
        keywords=kws,
    )
