"""Experiment (issue 16): aspect polarity from one RoBERTa with a keyword-attention readout over its tokens.

    export REVIEWTUNE_HOME=...  # the embedded default's data and base models (built there on first use)
    python benchmarks/aspect_keyword_attention.py --out outputs/keyword_attention [--epochs 6] [--seeds 42 1]

The shipped classifier reads an aspect's polarity from a (review, keyword) pair at ``<s>`` and stays at the
bag-of-words level on reviews with two or three aspects (docs/learning.md). Here one token-classification model
gives every token t a score s_k(t) per keyword k and polarity logits z_k(t) per keyword; a review's keyword k
is present when logsumexp_t s_k(t) > 0 (BCE with the recipe's balanced positive weight), and its polarity is
argmax of sum_t softmax_t(s_k)(t) z_k(t) (cross-entropy over present keywords). This is label-wise attention
(CAML, Mullenbach et al. 2018; LAAT, Vu et al. 2020) over a token classifier: transformers has the token
classifier, not the per-label pooling, so the pooling and its loss are written here (``keyword_attention``).

Same embedded RoBERTa base, same splits as the main job; full fine-tuning with transformers' ``Trainer``, lr and
batch of ``classify_roberta_default.yaml``. The test split is scored with the report's own metrics
(``reviewtune.evaluation.metrics.task_metrics``, 95% bootstrap intervals). Prints one row per seed and writes
``OUT/results.json``. Nothing here is used by the recipes yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

import reviewtune  # noqa: E402, F401  (OpenMP and warning defaults before transformers loads)

# isort: split

from transformers import (  # noqa: E402
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from reviewtune.atomic import atomic_write_json  # noqa: E402
from reviewtune.base_models import ensure_base_model  # noqa: E402
from reviewtune.defaults import default_file  # noqa: E402
from reviewtune.evaluation.metrics import task_metrics  # noqa: E402
from reviewtune.evaluation.prediction_schema import new_prediction  # noqa: E402
from reviewtune.records import read_records  # noqa: E402
from reviewtune.tasks import get_task  # noqa: E402

HEADLINE = ("micro_f1", "polarity_accuracy", "exact_match")


def keyword_attention(logits: torch.Tensor, attention_mask: torch.Tensor, n_keywords: int):
    """(presence logits ``[B, K]``, polarity logits ``[B, K, P]``) from token logits ``[B, T, K + K*P]``."""
    batch, length, _ = logits.shape
    scores = logits[..., :n_keywords].float().masked_fill(attention_mask[..., None] == 0, float("-inf"))
    polarity = logits[..., n_keywords:].float().view(batch, length, n_keywords, -1)
    weights = scores.softmax(dim=1)  # over the review's tokens, per keyword
    return torch.logsumexp(scores, dim=1), (weights[..., None] * polarity).sum(dim=1)


class KeywordAttentionTrainer(Trainer):
    """``Trainer`` whose loss is presence BCE (positive weight) + polarity cross-entropy on present keywords."""

    def __init__(self, *args, n_keywords: int, pos_weight: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.n_keywords, self.pos_weight = n_keywords, torch.tensor(pos_weight)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        presence, polarity = keyword_attention(outputs.logits, inputs["attention_mask"], self.n_keywords)
        gold_presence, gold_polarity = labels[:, : self.n_keywords], labels[:, self.n_keywords :].long()
        loss = F.binary_cross_entropy_with_logits(presence, gold_presence, pos_weight=self.pos_weight)
        loss = loss + F.cross_entropy(polarity.flatten(0, 1), gold_polarity.flatten(), ignore_index=-100)
        return (loss, outputs) if return_outputs else loss


def examples(records: list[dict], task, tokenizer, max_length: int) -> list[dict]:
    """Tokenised reviews with ``labels`` = K presence flags then K polarity indices (-100: keyword absent)."""
    k = len(task.keywords)
    out = []
    for r in records:
        labels = [0.0] * k + [-100.0] * k
        for a in r["aspects"]:
            j = task.keywords.index(a["keyword"])
            labels[j], labels[k + j] = 1.0, float(task.polarities.index(a["polarity"]))
        enc = tokenizer(r["text"], truncation=True, max_length=max_length)
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})
    return out


@torch.inference_mode()
def predict_aspects(model, tokenizer, records: list[dict], task, max_length: int, batch_size: int = 64) -> list[dict]:
    """Prediction dicts as the harness writes them: keywords with presence probability >= 0.5, each with its
    polarity."""
    model.eval()
    preds = []
    for i in range(0, len(records), batch_size):
        chunk = records[i : i + batch_size]
        enc = tokenizer([r["text"] for r in chunk], truncation=True, max_length=max_length, padding=True,
                        return_tensors="pt")  # fmt: skip
        presence, polarity = keyword_attention(model(**enc).logits, enc["attention_mask"], len(task.keywords))
        for r, hits, pol in zip(chunk, presence > 0, polarity.argmax(-1), strict=True):
            aspects = [{"keyword": kw, "polarity": int(task.polarities[int(p)])}
                       for kw, hit, p in zip(task.keywords, hits, pol, strict=True) if hit]  # fmt: skip
            preds.append(new_prediction(r["id"], aspects=aspects))
    return preds


def run(seed: int, args, task, base: Path, records: dict[str, list[dict]]) -> dict:
    set_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base)
    k, p = len(task.keywords), len(task.polarities)
    model = AutoModelForTokenClassification.from_pretrained(base, num_labels=k + k * p)
    data = {split: examples(recs, task, tokenizer, args.max_length) for split, recs in records.items()}
    present = sum(e["labels"][j] for e in data["train"] for j in range(k))
    pos_weight = (len(data["train"]) * k - present) / present  # the recipe's balanced weight for keywords
    training_args = TrainingArguments(
        output_dir=str(args.out / f"seed{seed}"), num_train_epochs=args.epochs, learning_rate=args.lr,
        per_device_train_batch_size=args.batch_size, lr_scheduler_type="linear", warmup_steps=0.06,  # < 1: a ratio of the steps (transformers 5)
        weight_decay=0.01, save_strategy="no", eval_strategy="no", logging_steps=50, report_to="none",
        seed=seed, use_cpu=not torch.cuda.is_available(), remove_unused_columns=False,
    )  # fmt: skip
    trainer = KeywordAttentionTrainer(
        model=model, args=training_args, train_dataset=data["train"], data_collator=DataCollatorWithPadding(tokenizer),
        n_keywords=k, pos_weight=pos_weight,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    result = {"seed": seed, "train_s": round(train_s, 1), "pos_weight": round(pos_weight, 2)}
    for split in ("validation", "test"):
        preds = predict_aspects(trainer.model, tokenizer, records[split], task, args.max_length)
        m = task_metrics(task, records[split], preds, n_resamples=1000 if split == "test" else 0)
        result[split] = {key: m[key] for key in m if key.removesuffix("_ci") in HEADLINE or key == "invalid_rate"}
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_length", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    args = parser.parse_args(argv)

    task = get_task("aspects")
    records = {split: list(read_records(default_file(split))) for split in ("train", "validation", "test")}
    base, _ = ensure_base_model("roberta", default_file("train"))
    results = [run(seed, args, task, base, records) for seed in args.seeds]
    print(f"\nkeyword attention, {len(records['train'])} training reviews, {args.epochs:g} epochs, base {base}")
    print("seed | train s | test keyword micro-F1 [95% CI] | polarity | exact match [95% CI]")
    for r in results:
        t = r["test"]
        f1_ci, em_ci = ([round(x, 3) for x in t[f"{m}_ci"]] for m in ("micro_f1", "exact_match"))
        print(f"{r['seed']} | {r['train_s']} | {t['micro_f1']:.3f} {f1_ci} | {t['polarity_accuracy']:.3f} | "
              f"{t['exact_match']:.3f} {em_ci}")  # fmt: skip
    atomic_write_json(args.out / "results.json", {"config": {k: str(v) for k, v in vars(args).items()},
                                                  "base": str(base), "results": results})  # fmt: skip
    return {"results": results}


if __name__ == "__main__":
    main()
