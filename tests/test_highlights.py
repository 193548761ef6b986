"""Word-occlusion highlights: the decisive word of a constructed example, batching, both model kinds, the CLI."""

from __future__ import annotations

import importlib.util
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reviewtune.analysis.highlights import (
    CAUSAL_REPLACEMENT,
    NotApplicable,
    decisive_span,
    highlight_scores,
    label_probabilities,
    occlude,
    occluded_variants,
)
from reviewtune.atomic import atomic_write_json
from reviewtune.evaluation.systems import load_system
from reviewtune.tasks import get_task
from reviewtune.training.run_directory import save_token_frequencies


def _load_cli(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve the CLI's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


highlight_cli = _load_cli("highlight_cli", Path(__file__).resolve().parents[1] / "eval" / "highlight.py")

FILLER = ["배송", "사이즈", "색상", "오늘", "받았어요", "그리고", "생각보다", "진짜", "이번", "주문", "포장", "상품"]
DECIDES = {1: "최고예요", 0: "별로예요"}  # the only word that tells the label


def decided_by_one_word(n: int, seed: int, without: float = 0.0) -> list[tuple[str, int, list[float]]]:
    """``(review, label, target probabilities)``: 3-6 neutral words plus the deciding word at a random position;
    a share ``without`` of them lacks it and has the target 0.5 / 0.5 (nothing decides), so the model
    must read the deciding word for either label, not just notice one word's absence."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.sample(FILLER, rng.randint(3, 6))
        label = rng.randint(0, 1)
        if rng.random() < without:
            out.append((" ".join(words), label, [0.5, 0.5]))
            continue
        words.insert(rng.randint(0, len(words)), DECIDES[label])
        out.append((" ".join(words), label, [1.0 - label, float(label)]))
    return out


def write_run(run_dir: Path, kind: str, task, texts: list[str], tokenizer) -> Path:
    """The files ``scoring.load_system`` reads, next to a saved model: task spec, summary, token counts."""
    task.save(run_dir)
    atomic_write_json(run_dir / "run_summary.json", {"kind": kind, "task": task.name, "quantization": "none"})
    save_token_frequencies(run_dir, texts, tokenizer)
    return run_dir


@pytest.fixture(scope="module")
def sentiment_classifier_run(tiny_roberta_dir, tmp_path_factory) -> Path:
    """A tiny RoBERTa fine-tuned (60 steps, soft-target cross-entropy) on reviews whose label one word decides."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task = get_task("sentiment")
    data = decided_by_one_word(256, seed=0, without=0.3)
    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_roberta_dir, num_labels=2, id2label=dict(enumerate(task.label_names))
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(60):
        batch = [data[(step * 32 + i) % len(data)] for i in range(32)]
        enc = tok([text for text, _, _ in batch], padding=True, return_tensors="pt")
        F.cross_entropy(model(**enc).logits, torch.tensor([target for _, _, target in batch])).backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    run = tmp_path_factory.mktemp("clf_sentiment_run")
    model.save_pretrained(run)
    tok.save_pretrained(run)
    return write_run(run, "classifier", task, [text for text, _, _ in data], tok)


@pytest.fixture(scope="module")
def causal_run(tiny_causal_dir, tmp_path_factory):
    """A generative sentiment run (the tiny causal LM as a full model): loglik label probabilities."""
    from transformers import AutoTokenizer

    def make(task_name: str) -> Path:
        run = tmp_path_factory.mktemp(f"causal_{task_name}_run")
        shutil.copytree(tiny_causal_dir, run, dirs_exist_ok=True)
        tok = AutoTokenizer.from_pretrained(tiny_causal_dir)
        return write_run(
            run, "generative", get_task(task_name), [text for text, _, _ in decided_by_one_word(50, 1)], tok
        )

    return make


def test_occluded_variants_and_span():
    words = ["a", "b", "c"]
    assert occluded_variants(words, "<mask>") == ["<mask> b c", "a <mask> c", "a b <mask>"]
    assert occluded_variants(words, "") == ["b c", "a c", "a b"]
    assert decisive_span([0.0, 0.3, 0.5, 0.1, 0.4]) == (1, 3)  # around the top word, neighbours >= half of it
    assert decisive_span([0.5, 0.0, 0.45]) == (0, 1)  # contiguous only
    assert decisive_span([-0.1, 0.0]) is None
    assert decisive_span([0.004, 0.001]) is None  # under MIN_DROP: no word decides
    assert decisive_span([]) is None


def test_occlusion_finds_the_deciding_word(sentiment_classifier_run):
    system = load_system(sentiment_classifier_run)
    held_out = decided_by_one_word(12, seed=7)
    highlights = occlude(system, [text for text, _, _ in held_out])
    for h, (text, label, _) in zip(highlights, held_out, strict=True):
        assert h.target == system.task.label_names[label], text  # the model learnt the rule
        assert h.replacement == system.tokenizer.mask_token
        assert len(h.scores) == len(text.split())
        decisive = text.split().index(DECIDES[label])
        assert int(np.argmax(h.scores)) == decisive, (text, h.scores)
        assert h.span[0] <= decisive < h.span[1]
        assert f"[{DECIDES[label]}]" in h.marked()
    # Against the opposite label, hiding the deciding word raises that label's probability: a negative score.
    text, label, _ = held_out[0]
    (h,) = occlude(system, [text], [1 - label])
    assert h.target == system.task.label_names[1 - label]
    assert min(h.scores) == h.scores[text.split().index(DECIDES[label])] < 0


def test_one_forward_batch_per_review(sentiment_classifier_run):
    system = load_system(sentiment_classifier_run)
    calls = []
    handle = system.model.register_forward_hook(lambda m, a, kw, out: calls.append(1), with_kwargs=True)
    try:
        scores = highlight_scores(system, ["배송 그리고 최고예요 색상 진짜 포장"], batch_size=64)
    finally:
        handle.remove()
    assert len(calls) == 1  # 6 words + the review itself: one forward pass, not one per word
    assert len(scores[0]) == 6


def test_scores_are_probability_drops_for_a_generative_run(causal_run):
    system = load_system(causal_run("sentiment"))
    text = "배송 생각보다 최고예요 포장"
    (h,) = occlude(system, [text], ["긍정"])
    assert h.replacement == CAUSAL_REPLACEMENT
    words = text.split()
    probs = label_probabilities(system, [text] + occluded_variants(words, CAUSAL_REPLACEMENT))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)  # loglik probabilities over the labels
    np.testing.assert_allclose(h.scores, probs[0, 1] - probs[1:, 1], atol=1e-9)
    assert h.base_prob == pytest.approx(probs[0, 1])
    with pytest.raises(NotApplicable, match="loglik"):
        occlude(system, [text], scoring="generate")


def test_no_probability_no_highlight(causal_run):
    system = load_system(causal_run("aspects"))
    with pytest.raises(NotApplicable, match="generative aspects"):
        highlight_scores(system, ["배송 최고예요"])


def test_cli_marks_the_deciding_word(sentiment_classifier_run, causal_run, capsys):
    text = "포장 그리고 별로예요 색상 오늘"
    assert highlight_cli.main(["--run", str(sentiment_classifier_run), "--text", text]) == 0
    out = capsys.readouterr().out
    assert "label 부정" in out and "[별로예요]" in out and "decisive span: '별로예요'" in out
    assert highlight_cli.main(["--run", str(sentiment_classifier_run), "--text", text, "--keyword", "배송"]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert highlight_cli.main(["--run", str(causal_run("aspects")), "--text", text]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no label probabilities" in err
