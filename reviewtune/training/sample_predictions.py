"""The SFT recipe's sample predictions: a few test reviews answered before and after training, written to
``sample_predictions.json`` and printed, so a run shows at a glance whether it learnt the answer format."""

from __future__ import annotations

from pathlib import Path

from reviewtune.atomic import atomic_write_json
from reviewtune.evaluation.predict import predict
from reviewtune.evaluation.systems import System
from reviewtune.prompts import format_answer
from reviewtune.tasks import TaskSpec


def answer_samples(model, tokenizer, records: list[dict], task: TaskSpec, max_length: int | None, batch_size: int):
    """Greedy answers to ``records`` exactly as ``eval/compare.py``'s ``generate`` scoring gives them (its prompts,
    cut to the same budget, and its answer-token budget), each with whether the task's parser can read it."""
    system = System.of_model(Path("."), "generative", task, {"config": {"max_length": max_length}}, model, tokenizer)
    predictions = predict(system, records, scoring="generate", batch_size=batch_size, progress=False)
    return [{"answer": p["raw"], "valid": not p["invalid"], "reason": p["invalid_reason"]} for p in predictions]


def write_sample_predictions(
    out: Path, task: TaskSpec, samples: list[dict], before: list[dict] | None, after: list[dict] | None, prov: dict
) -> list[dict]:
    """``sample_predictions.json``: each sample's review, reference, answers before/after training and their
    validity (``None`` where a side was not computed); returns the per-sample rows."""
    nothing = [None] * len(samples)
    predictions = []
    for r, b, a in zip(samples, before or nothing, after or nothing, strict=True):
        reference = format_answer(r, task)
        predictions.append(
            {
                "id": r["id"],
                "review": r["text"],
                "reference": reference,
                "before": b["answer"] if b else None,
                "before_valid": b["valid"] if b else None,
                "after": a["answer"] if a else None,
                "after_valid": a["valid"] if a else None,
                "after_correct": (a["answer"].strip() == reference) if a else None,
            }
        )
    atomic_write_json(
        out / "sample_predictions.json",
        {
            "task": task.name,
            "n": len(predictions),
            "valid_before": sum(bool(p["before_valid"]) for p in predictions) if before else None,
            "valid_after": sum(bool(p["after_valid"]) for p in predictions) if after else None,
            "correct_after": sum(bool(p["after_correct"]) for p in predictions) if after else None,
            "predictions": predictions,
            "provenance": prov,
        },
    )
    return predictions


def print_sample_predictions(predictions: list[dict], out: Path, merged: bool = False) -> None:
    """The sample answers before -> after training, and where the run's files are."""
    print("\nSample predictions (reference | before -> after):")
    for p in predictions:
        print(f"  {p['review'][:40]!r}\n    {p['reference']} | {p['before']} -> {p['after']}")
    print(f"\nAdapter:            {out}\nRun summary:        {out / 'run_summary.json'}")
    print(f"Sample predictions: {out / 'sample_predictions.json'}")
    if merged:
        print(f"Merged model:       {out / 'merged'}")
