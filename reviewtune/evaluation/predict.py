"""Loaded systems -> predictions, one per record, by scoring mode: ``generate`` (greedy decoding read by the
task's answer parser), ``loglik`` (each label's log-likelihood after the prompt, with the tokens training puts
after the answer), ``constrained`` (greedy decoding restricted to the task's answer language: valid by
construction) and ``classifier``."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit, softmax
from tqdm.auto import tqdm

from reviewtune.evaluation.answer_languages import ANSWER_LEAD, task_language
from reviewtune.evaluation.constrained_decoding import constrained_answers
from reviewtune.evaluation.generation import generate_answers, label_loglik, loglik_probs
from reviewtune.evaluation.keyword_attention import aspects_from_pooled
from reviewtune.evaluation.prediction_schema import new_prediction
from reviewtune.evaluation.systems import LOGLIK_TASKS, System, id2label
from reviewtune.prompt_format import CHAT, add_special_tokens, answer_end_ids, completion_text, model_input, stop_ids
from reviewtune.prompts import fit_prompt, keyword_input, parse_answer
from reviewtune.tasks import EMPTY_ASPECTS_ANSWER, TaskSpec


def answer_token_budget(task: TaskSpec, tokenizer) -> int:
    """``max_new_tokens`` for ``generate``: the longest valid answer of the task, plus EOS and slack."""
    if task.name in LOGLIK_TASKS:
        longest = [" " + name for name in task.label_names]
    elif task.name == "aspects":
        worst = min(task.polarities, key=lambda p: -len(str(p)))
        full = ", ".join(f"{k}{worst}" for k in task.keywords)
        longest = [" " + full, " " + EMPTY_ASPECTS_ANSWER]
    else:
        longest = [" -0.000123456", " 12345.6"]
    return max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in longest) + 4


def _prompt_budget(system: System, answer_tokens: int) -> int | None:
    """Most prompt tokens: the trained ``max_length``, and room for the answer within the model's positions."""
    limits = [system.max_length, system.positions - answer_tokens if system.positions else None]
    limits = [x for x in limits if x]
    return max(8, min(limits)) if limits else None


def generation_prompts(system: System, reviews: list[str]) -> list[str]:
    """The prompts ``generate`` scoring answers for ``reviews``: cut to the run's budget, before the chat template."""
    budget = _prompt_budget(system, answer_token_budget(system.task, system.tokenizer))
    return [fit_prompt(review, system.task, system.tokenizer, budget)[0] for review in reviews]


def _predict_generate(
    system: System, records: list[dict], batch_size: int, progress: bool, constrained: bool = False
) -> list[dict]:
    task, tok, fmt = system.task, system.tokenizer, system.task.prompt_format
    max_new = answer_token_budget(task, tok)
    budget = _prompt_budget(system, max_new)
    fitted, cut = zip(*(fit_prompt(r["text"], task, tok, budget) for r in records), strict=True)
    prompts = [model_input(p, tok, fmt) for p in fitted]
    common = dict(max_new_tokens=max_new, batch_size=batch_size, progress=progress,
                  add_special_tokens=add_special_tokens(fmt))  # fmt: skip
    if constrained:  # greedy within the task's answer language, closed by what training puts after an answer
        language = task_language(task, lead="" if fmt == CHAT else ANSWER_LEAD)
        answers = constrained_answers(system.model, tok, prompts, language, end_ids=answer_end_ids(tok, fmt), **common)
    else:
        answers = generate_answers(system.model, tok, prompts, eos_token_ids=stop_ids(tok, fmt, system.model), **common)
    out = []
    for r, answer, shortened in zip(records, answers, cut, strict=True):
        pred = new_prediction(r["id"], raw=answer, shortened=shortened)
        parsed = parse_answer(answer, task)
        if parsed.valid:
            pred.update(label=parsed.label, aspects=parsed.aspects, score=parsed.score)
        else:
            pred.update(invalid=True, invalid_reason=parsed.reason)
        out.append(pred)
    return out


def _predict_loglik(system: System, records: list[dict], batch_size: int, progress: bool) -> list[dict]:
    task, tok = system.task, system.tokenizer
    if task.name not in LOGLIK_TASKS:
        raise ValueError(f"scoring 'loglik' needs a closed label set ({', '.join(LOGLIK_TASKS)}), not {task.name!r}")
    fmt = task.prompt_format
    completions = [completion_text(name, tok, fmt) for name in task.label_names]  # chat: with the end of turn
    # Each label is scored with what training puts after the answer: the end-of-sequence token (plain); a chat
    # completion already ends with the template's end of turn.
    end_ids = () if fmt == CHAT else answer_end_ids(tok, fmt)
    longest = max(len(tok(c, add_special_tokens=False)["input_ids"]) for c in completions) + len(end_ids)
    budget = _prompt_budget(system, longest)
    fitted, cut = zip(*(fit_prompt(r["text"], task, tok, budget) for r in records), strict=True)
    prompts = [model_input(p, tok, fmt) for p in fitted]
    scores = label_loglik(system.model, tok, prompts, completions, end_ids=end_ids, batch_size=batch_size,
                          progress=progress, add_special_tokens=add_special_tokens(fmt))  # fmt: skip
    probs = loglik_probs(scores)
    return [
        new_prediction(r["id"], label=int(row.argmax()), probs=[float(p) for p in row], shortened=shortened)
        for r, row, shortened in zip(records, probs, cut, strict=True)
    ]


@torch.inference_mode()
def _classifier_outputs(system: System, texts: list[str], batch_size: int, progress: bool, desc: str) -> np.ndarray:
    """Logits ``[n, num_labels]`` of one classifier as scoring reads them (``System.scored_logits``), batched by
    length (dynamic padding)."""
    model, tok = system.model, system.tokenizer
    device = next(model.parameters()).device
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    logits = np.zeros((len(texts), model.config.num_labels), dtype=np.float64)
    bar = tqdm(total=len(texts), desc=desc, unit="input", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tok([texts[i] for i in idx], truncation=True, max_length=system.max_input_tokens, padding=True,
                  return_tensors="pt")  # fmt: skip
        enc = {k: v.to(device) for k, v in enc.items()}
        logits[idx] = system.scored_logits(model(**enc).logits, enc["attention_mask"]).float().cpu().numpy()
        bar.update(len(idx))
    bar.close()
    return logits


def _cut_to_limit(system: System, texts: list[str]) -> list[bool]:
    """Which inputs the classifier sees cut to its input limit (``System.max_input_tokens``)."""
    lengths = [len(ids) for ids in system.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]
    return [n > system.max_input_tokens for n in lengths]


def _label_order(model_labels: list[str], wanted: list[str], what: str) -> list[int]:
    """Column of each wanted label in the model's output; the model's own order when it has generic names."""
    if sorted(model_labels) == sorted(wanted):
        return [model_labels.index(w) for w in wanted]
    if len(model_labels) == len(wanted):
        return list(range(len(wanted)))  # e.g. LABEL_0, LABEL_1: trained in the task's order
    raise ValueError(f"{what}: model has labels {model_labels}, the task needs {wanted}")


def _predict_classifier(system: System, records: list[dict], batch_size: int, progress: bool) -> list[dict]:
    task = system.task
    texts = [r["text"] for r in records]
    first = system.components.get("keywords", system)
    out = [new_prediction(r["id"], shortened=cut) for r, cut in zip(records, _cut_to_limit(first, texts), strict=True)]
    if task.name == "regression":
        logits = _classifier_outputs(system, texts, batch_size, progress, "Classifying")
        for pred, row in zip(out, logits, strict=True):
            pred["score"] = float(row[0])
        return out
    if task.name in LOGLIK_TASKS:
        cols = _label_order(id2label(system.model), task.label_names, str(system.run_dir))
        probs = softmax(_classifier_outputs(system, texts, batch_size, progress, "Classifying"), axis=-1)[:, cols]
        for pred, row in zip(out, probs, strict=True):
            pred.update(label=int(row.argmax()), probs=[float(p) for p in row])
        return out
    if system.keyword_attention:  # aspects, one model: presence and polarity per keyword
        pooled = _classifier_outputs(system, texts, batch_size, progress, "Classifying")
        for pred, a in zip(out, aspects_from_pooled(pooled, system.thresholds, task.keywords, task.polarities),
                           strict=True):  # fmt: skip
            pred["aspects"] = a
        return out
    # aspects, two models: detect keywords (sigmoid >= per-keyword threshold), then one polarity per detected keyword.
    kw, pol = system.components["keywords"], system.components["keyword_sentiment"]
    kw_names = id2label(kw.model)
    detected = expit(_classifier_outputs(kw, texts, batch_size, progress, "Detecting keywords"))
    hits = detected >= kw.thresholds[None, :]
    pairs = [(i, kw_names[j]) for i in range(len(records)) for j in np.flatnonzero(hits[i])]
    pol_labels = id2label(pol.model)
    pol_cols = _label_order(pol_labels, task.polarity_names, str(pol.run_dir))
    aspects: list[list[dict]] = [[] for _ in records]
    if pairs:
        pair_texts = [keyword_input(records[i]["text"], k, task) for i, k in pairs]
        pol_logits = _classifier_outputs(pol, pair_texts, batch_size, progress, "Keyword polarity")[:, pol_cols]
        for (i, k), row in zip(pairs, pol_logits, strict=True):
            aspects[i].append({"keyword": k, "polarity": int(task.polarities[int(row.argmax())])})
    order = {k: n for n, k in enumerate(task.keywords)}
    for pred, a in zip(out, aspects, strict=True):
        pred["aspects"] = sorted(a, key=lambda x: order[x["keyword"]])
    return out


def predict(
    system: System,
    records: list[dict],
    scoring: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> list[dict]:
    """One prediction dict per record, in order. ``scoring``: ``generate``/``loglik``/``constrained`` (generative
    runs), ``classifier`` (or ``None``: the system's first mode)."""
    scoring = scoring or system.scoring_modes[0]
    if scoring not in system.scoring_modes:
        raise ValueError(
            f"{system.run_dir}: scoring {scoring!r} is not available for a {system.kind} run on task "
            f"{system.task.name!r}; choose one of {', '.join(system.scoring_modes)}"
        )
    if not records:
        return []
    if scoring in ("generate", "constrained"):
        return _predict_generate(system, records, batch_size, progress, constrained=scoring == "constrained")
    if scoring == "loglik":
        return _predict_loglik(system, records, batch_size, progress)
    return _predict_classifier(system, records, batch_size, progress)
