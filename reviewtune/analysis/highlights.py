"""Which words drove a prediction: word occlusion on any run with label (or keyword) probabilities.

Each whitespace-separated word of a review is replaced, one at a time, and the model scores every variant
in one batch with the original. A word's score is the drop in the target's probability when it is hidden
(``p(review) - p(review without the word)``): positive words support the target, negative ones speak
against it. The replacement:

- encoders (classifiers): the tokenizer's mask token (``<mask>`` for RoBERTa), the token pre-training
  taught the model to read as "a word is missing here";
- causal LMs (generative runs, loglik label probabilities): ``CAUSAL_REPLACEMENT`` (``"_"``), a one-byte
  placeholder with no sentiment of its own that keeps the word's position; a causal LM has no mask token,
  and deleting the word would also change the review's length and grammar. ``replacement=""`` deletes.

Targets: a label of ``sentiment`` / ``sentiment5`` runs (classifiers, or generative runs through
``loglik``), or a keyword of the aspect classifier (the ``keywords`` model's sigmoid output). Generative
``aspects`` / ``regression`` runs and ``generate`` scoring have no probability to occlude
(:class:`NotApplicable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit
from tqdm.auto import tqdm

from reviewtune.atomic import read_json
from reviewtune.evaluation.predict import predict
from reviewtune.evaluation.systems import LOGLIK_TASKS, System
from reviewtune.report.html import MIN_DROP, SPAN_FRACTION, marked_words
from reviewtune.tasks import TaskSpec

CAUSAL_REPLACEMENT = "_"


class NotApplicable(ValueError):
    """The run has no probability this operation needs (e.g. a generative aspects run)."""


@dataclass
class Highlight:
    """Occlusion result for one review: per-word scores and the most decisive span."""

    text: str
    words: list[str]
    target: str  # label name or keyword
    base_prob: float  # probability of the target for the review as given (words joined by single spaces)
    scores: list[float]  # per word: base_prob - probability with that word replaced
    span: tuple[int, int] | None  # [start, end) word indices of the most decisive span; None if no word helps
    replacement: str

    @property
    def span_text(self) -> str:
        return " ".join(self.words[self.span[0] : self.span[1]]) if self.span else ""

    def marked(self, left: str = "[", right: str = "]") -> str:
        """The review with the words ``report.marked_words`` picks wrapped (the rule of ``report.html``)."""
        return " ".join(
            f"{left}{w}{right}" if m else w for w, m in zip(self.words, marked_words(self.scores), strict=True)
        )

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "target": self.target,
            "base_prob": self.base_prob,
            "words": self.words,
            "scores": self.scores,
            "span": list(self.span) if self.span else None,
            "span_text": self.span_text,
            "replacement": self.replacement,
        }


# ------------------------------------------------------------------------------------- probabilities


def peek_system(run_dir: str | Path) -> System:
    """A :class:`System` without weights (kind, task, summary from the run's JSON files): enough for
    :func:`target_kind` and the selection checks, before spending time on loading the model."""
    run_dir = Path(run_dir)
    for name in ("run_summary.json", "task_spec.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir}: no {name}; is this a run directory written by a recipe?")
    summary = read_json(run_dir / "run_summary.json")
    return System(run_dir=run_dir, kind=summary.get("kind"), task=TaskSpec.load(run_dir), summary=summary)


def target_kind(system: System, scoring: str | None = None) -> str:
    """``"label"`` or ``"keyword"``: the probability occlusion and uncertainty use on ``system``.

    Raises :class:`NotApplicable` (one line saying why) when the system has none."""
    task = system.task.name
    if system.kind == "classifier":
        if task in LOGLIK_TASKS:
            return "label"
        if task == "aspects":
            return "keyword"
        raise NotApplicable(f"{system.run_dir}: a {task} classifier has no label probabilities")
    if task not in LOGLIK_TASKS:
        raise NotApplicable(
            f"{system.run_dir}: a generative {task} run has no label probabilities (loglik scoring needs "
            f"a closed label set: {', '.join(LOGLIK_TASKS)})"
        )
    if scoring not in (None, "loglik"):
        raise NotApplicable(f"{system.run_dir}: scoring {scoring!r} gives no probabilities; use loglik")
    return "label"


def label_probabilities(
    system: System, texts: list[str], scoring: str | None = None, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """``[n, num_labels]`` label probabilities (task label order) from ``scoring.predict``: softmax of a
    classifier, or loglik label probabilities of a generative sentiment run."""
    if target_kind(system, scoring) != "label":
        raise NotApplicable(f"{system.run_dir}: an aspect classifier has keyword, not label, probabilities")
    if system.kind == "generative":
        scoring = "loglik"
    records = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    preds = predict(system, records, scoring=scoring, batch_size=batch_size, progress=progress)
    return np.asarray([p["probs"] for p in preds], dtype=np.float64).reshape(len(texts), system.task.num_labels)


@torch.inference_mode()
def encoder_outputs(
    system: System, texts: list[str], batch_size: int = 64, hidden: bool = False, progress: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits ``[n, num_labels]`` of one loaded model (a classifier, or a classifier's component) and, with
    ``hidden``, mean-pooled last hidden states ``[n, hidden_size]`` over the non-padding tokens.

    Written here rather than taken from ``scoring`` because occlusion and selection need the hidden states
    of the same forward pass (sentence embeddings) and sigmoid outputs of the keyword model, which
    ``scoring.predict`` turns into decisions. Inputs are batched by length (dynamic padding).
    """
    model, tok = system.model, system.tokenizer
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    logits = hiddens = None
    bar = tqdm(total=len(texts), desc="Encoding", unit="input", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tok([texts[i] for i in idx], truncation=True, max_length=system.max_input_tokens, padding=True,
                  return_tensors="pt").to(device)  # fmt: skip
        out = model(**enc, output_hidden_states=hidden)
        batch_logits = system.scored_logits(out.logits, enc["attention_mask"]).float().cpu().numpy()
        if logits is None:
            logits = np.zeros((len(texts), batch_logits.shape[-1]))
        logits[idx] = batch_logits
        if hidden:
            mask = enc["attention_mask"].unsqueeze(-1).float()
            pooled = ((out.hidden_states[-1].float() * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
            if hiddens is None:
                hiddens = np.zeros((len(texts), pooled.shape[-1]))
            hiddens[idx] = pooled
        bar.update(len(idx))
    bar.close()
    if logits is None:
        logits = np.zeros((0, model.config.num_labels))
    return logits, hiddens


def keyword_probabilities(
    system: System, texts: list[str], batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Sigmoid outputs ``[n, K]`` of the aspect classifier's keyword presence (its ``keywords`` model, or the
    keyword-attention model) and its decision thresholds ``[K]``, both in the task's keyword order."""
    if target_kind(system) != "keyword":
        raise NotApplicable(f"{system.run_dir}: keyword probabilities need an aspect classifier run")
    kw = system.components.get("keywords", system)
    names = [str(kw.model.config.id2label[i]) for i in range(kw.model.config.num_labels)]
    cols = [names.index(k) for k in system.task.keywords]
    logits, _ = encoder_outputs(kw, texts, batch_size, progress=progress)
    return expit(logits[:, cols]), np.asarray(kw.thresholds, dtype=float)[cols]


# ----------------------------------------------------------------------------------------- occlusion


def default_replacement(system: System) -> str:
    """The tokenizer's mask token for encoders, :data:`CAUSAL_REPLACEMENT` for causal LMs."""
    if system.kind == "generative":
        return CAUSAL_REPLACEMENT
    tok = system.tokenizer if system.tokenizer is not None else system.components["keywords"].tokenizer
    if tok.mask_token is None:
        raise NotApplicable(f"{system.run_dir}: the tokenizer has no mask token; pass a replacement word")
    return tok.mask_token


def occluded_variants(words: list[str], replacement: str) -> list[str]:
    """One text per word with that word replaced (``replacement=""`` drops it); words joined by single spaces."""
    out = []
    for i in range(len(words)):
        kept = words[:i] + ([replacement] if replacement else []) + words[i + 1 :]
        out.append(" ".join(kept))
    return out


def decisive_span(
    scores: list[float], fraction: float = SPAN_FRACTION, min_drop: float = MIN_DROP
) -> tuple[int, int] | None:
    """``[start, end)`` of the contiguous words around the top-scoring word that each score at least
    ``fraction`` of it; ``None`` when no word's removal lowers the probability by ``min_drop`` or more."""
    if not scores or max(scores) < min_drop or max(scores) <= 0:
        return None
    best = int(np.argmax(scores))
    cut = fraction * scores[best]
    start, end = best, best + 1
    while start > 0 and scores[start - 1] >= cut:
        start -= 1
    while end < len(scores) and scores[end] >= cut:
        end += 1
    return start, end


def _target_index(target: int | str | None, names: list[str], what: str) -> int | None:
    if target is None:
        return None
    if isinstance(target, int | np.integer) and not isinstance(target, bool):
        if not 0 <= int(target) < len(names):
            raise ValueError(f"{what} index {target} out of range 0..{len(names) - 1}")
        return int(target)
    if str(target) in names:
        return names.index(str(target))
    if str(target).lstrip("-").isdigit() and what == "label" and 0 <= int(target) < len(names):
        return int(target)
    raise ValueError(f"unknown {what} {target!r}; choose one of {', '.join(names)}")


def occlude(
    system: System,
    texts: list[str],
    targets: list[int | str | None] | None = None,
    scoring: str | None = None,
    replacement: str | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[Highlight]:
    """Occlusion highlights for ``texts``. ``targets``: per text a label (index or name) or, for the aspect
    classifier, a keyword; ``None`` means the system's own choice (the predicted label, the most probable keyword).

    All variants of all texts go to the model together (batched by length): a review costs one forward
    batch of its ``len(words) + 1`` inputs, never one call per word.
    """
    kind = target_kind(system, scoring)
    targets = list(targets) if targets is not None else [None] * len(texts)
    if len(targets) != len(texts):
        raise ValueError(f"{len(targets)} targets for {len(texts)} texts")
    replacement = default_replacement(system) if replacement is None else replacement
    names = system.task.label_names if kind == "label" else system.task.keywords
    wanted = [_target_index(t, names, kind) for t in targets]
    words = [t.split() for t in texts]
    batch, owner = [], []
    for i, w in enumerate(words):
        for variant in [" ".join(w), *occluded_variants(w, replacement)]:
            batch.append(variant)
            owner.append(i)
    if kind == "label":
        probs = label_probabilities(system, batch, scoring, batch_size, progress)
    else:
        probs, _ = keyword_probabilities(system, batch, batch_size, progress)
    owner = np.asarray(owner)
    out = []
    for i, text in enumerate(texts):
        rows = probs[owner == i]
        j = wanted[i] if wanted[i] is not None else int(rows[0].argmax())
        base = float(rows[0, j])
        scores = [base - float(p) for p in rows[1:, j]]
        out.append(Highlight(text, words[i], names[j], base, scores, decisive_span(scores), replacement))
    return out


def highlight_scores(
    system: System,
    texts: list[str],
    labels: list[int | str | None] | None = None,
    scoring: str | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> list[list[float]]:
    """One score per whitespace-separated word of each text (the ``highlights`` of ``report.py``'s
    disagreement examples). Raises :class:`NotApplicable` for systems without probabilities."""
    return [h.scores for h in occlude(system, texts, labels, scoring, None, batch_size, progress)]
