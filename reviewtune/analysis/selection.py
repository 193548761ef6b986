"""Which unlabelled reviews to label next: active-learning strategies over a pool of records.

Every strategy gives each pool record a score, higher = label it sooner:

- ``keyword_uncertainty`` (aspect classifier): how close the ``keywords`` model's sigmoid output is to the
  keyword's decision threshold (0.5 unless the run tuned it), ``1 - |p - t| / max(t, 1 - t)`` on the
  far side's scale, for the record's most uncertain keyword;
- ``least_confidence`` (single-label sentiment: classifiers, or generative runs through loglik label
  probabilities): ``(1 - max p) * N / (N - 1)``, 0 when sure, 1 when uniform over the N labels;
- ``margin``: ``1 - (p_top1 - p_top2)``; ``entropy``: ``-sum p log p / log N`` (alternatives to the above);
- ``rare``: the share of the review's tokens (the run's tokenizer) seen at most ``rare_max_count`` times in
  the run's training text (``token_freqs.json``), or the unknown token. Byte-level BPE tokenizers never
  produce an unknown token, so "rare" is the signal that works for them;
- ``outliers``: k-means over the model's sentence embeddings (mean-pooled last hidden states, L2-normalised),
  the distance from a record to its cluster's centroid;
- ``proportional``: a seeded random order; with ``group_by`` it is a stratified random sample.

``select`` picks ``k`` records: several strategies take turns (round robin, each its best record not yet
taken), and with a ``meta`` grouping field each group gets a share of ``k`` proportional to its size in
the pool (largest remainder), filled by the same round robin inside the group.
"""

from __future__ import annotations

import collections
import math
import re
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from reviewtune.analysis.highlights import (
    NotApplicable,
    encoder_outputs,
    keyword_probabilities,
    label_probabilities,
    target_kind,
)
from reviewtune.atomic import read_json
from reviewtune.data.decoding import DataError, decode_file
from reviewtune.evaluation.systems import System
from reviewtune.records import make_record, read_records

STRATEGIES = ("keyword_uncertainty", "least_confidence", "margin", "entropy", "rare", "outliers", "proportional")
LABEL_STRATEGIES = ("least_confidence", "margin", "entropy")
MISSING_GROUP = "(none)"


# ---------------------------------------------------------------------------------- score functions


def least_confidence(probs: np.ndarray) -> np.ndarray:
    """Normalised least confidence ``(1 - max p) * N / (N - 1)`` per row of ``[n, N]`` probabilities."""
    probs = np.asarray(probs, dtype=float)
    n = probs.shape[-1]
    return (1 - probs.max(axis=-1)) * n / (n - 1)


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """``1 - (p_top1 - p_top2)``: 1 when the two best labels tie."""
    top2 = np.sort(np.asarray(probs, dtype=float), axis=-1)[:, -2:]
    return 1 - (top2[:, 1] - top2[:, 0])


def entropy_uncertainty(probs: np.ndarray) -> np.ndarray:
    """Entropy over the labels divided by ``log N`` (0 = one-hot, 1 = uniform)."""
    probs = np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)
    return -(probs * np.log(probs)).sum(axis=-1) / math.log(probs.shape[-1])


def keyword_uncertainty(probs: np.ndarray, thresholds: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per record, the largest keyword uncertainty ``1 - |p - t| / max(t, 1 - t)`` (per-keyword ``t``,
    0.5 by default; 1 at the threshold, 0 at a sure 0 or 1) and the index of that keyword."""
    probs = np.asarray(probs, dtype=float)
    t = np.full(probs.shape[-1], 0.5) if thresholds is None else np.asarray(thresholds, dtype=float)
    scale = np.where(probs >= t, 1 - t, t)  # distance to the farther end of the side the output is on
    u = 1 - np.abs(probs - t) / np.maximum(scale, 1e-12)
    if u.shape[-1] == 0:
        return np.zeros(len(probs)), np.zeros(len(probs), dtype=int)
    return u.max(axis=-1), u.argmax(axis=-1)


def rare_share(
    tokens: list[list[str]], freqs: dict[str, int], max_count: int = 2, unk: str | None = None
) -> np.ndarray:
    """Share of each token list that is the unknown token or seen at most ``max_count`` times (absent = 0)."""
    out = np.zeros(len(tokens))
    for i, toks in enumerate(tokens):
        if toks:
            out[i] = sum(t == unk or freqs.get(t, 0) <= max_count for t in toks) / len(toks)
    return out


def outlier_distance(embeddings: np.ndarray, n_clusters: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each (L2-normalised) embedding to its k-means centroid, and its cluster id."""
    from sklearn.cluster import KMeans

    x = np.asarray(embeddings, dtype=float)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    k = min(n_clusters, len(x))
    if k < 2:
        return np.zeros(len(x)), np.zeros(len(x), dtype=int)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(x)
    return np.linalg.norm(x - km.cluster_centers_[km.labels_], axis=1), km.labels_


def proportional_quotas(sizes: dict[str, int], k: int) -> dict[str, int]:
    """Split ``k`` over groups in proportion to their sizes (largest remainder; ties: larger group, then name),
    never more than a group holds."""
    total = sum(sizes.values())
    k = min(k, total)
    if k == 0:
        return {g: 0 for g in sizes}
    exact = {g: k * n / total for g, n in sizes.items()}
    quotas = {g: min(int(math.floor(v)), sizes[g]) for g, v in exact.items()}
    order = sorted(sizes, key=lambda g: (-(exact[g] - quotas[g]), -sizes[g], g))
    while sum(quotas.values()) < k:
        for g in order:
            if sum(quotas.values()) == k:
                break
            if quotas[g] < sizes[g]:
                quotas[g] += 1
    return quotas


def select(scores: dict[str, np.ndarray], k: int, groups: list[str] | None = None) -> list[tuple[int, str]]:
    """Choose ``k`` records: ``[(index, strategy that picked it)]`` ranked best first.

    Strategies (in ``scores`` order) take turns picking their highest-scoring record not yet chosen; ties go
    to the earlier record. With ``groups``, each group's quota (:func:`proportional_quotas`) is filled that
    way and the groups' picks are interleaved by their position within the group's quota.
    """
    if not scores:
        raise ValueError("no strategy scores to select with")
    n = len(next(iter(scores.values())))
    groups = list(groups) if groups is not None else [""] * n
    members: dict[str, list[int]] = collections.defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    quotas = proportional_quotas({g: len(m) for g, m in members.items()}, k)
    ranked = []
    for g, idx in members.items():
        # Stable sort: equal scores keep record order.
        orders = {s: sorted(idx, key=lambda i, v=v: -v[i]) for s, v in scores.items()}
        cursor = {s: 0 for s in scores}
        taken: set[int] = set()
        picks: list[tuple[int, str]] = []
        while len(picks) < quotas[g]:
            for s in scores:
                if len(picks) == quotas[g]:
                    break
                order = orders[s]
                while cursor[s] < len(order) and order[cursor[s]] in taken:
                    cursor[s] += 1
                if cursor[s] < len(order):
                    taken.add(order[cursor[s]])
                    picks.append((order[cursor[s]], s))
        for pos, (i, s) in enumerate(picks):
            ranked.append(((pos + 0.5) / quotas[g], -len(idx), str(g), pos, i, s))
    ranked.sort()
    return [(r[4], r[5]) for r in ranked]


# ------------------------------------------------------------------------------- scoring a run's pool


def unavailable(system: System, strategy: str, scoring: str | None = None, group_by: str | None = None) -> str | None:
    """Why ``strategy`` has no meaning for ``system`` (one line), or ``None`` when it can be used."""
    if strategy not in STRATEGIES:
        return f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}"
    where = f"{system.run_dir} is a {system.kind} {system.task.name} run"
    try:
        kind = target_kind(system, scoring)
    except NotApplicable:
        kind = None
    if strategy == "keyword_uncertainty" and kind != "keyword":
        return f"strategy keyword_uncertainty needs the aspect classifier's keyword sigmoid outputs; {where}"
    if strategy in LABEL_STRATEGIES and kind != "label":
        generative_sentiment = system.kind == "generative" and system.task.name in ("sentiment", "sentiment5")
        how = " (loglik scoring)" if generative_sentiment else ""
        return f"strategy {strategy} needs single-label probabilities{how}; {where}"
    if strategy == "rare" and not (system.run_dir / "token_freqs.json").is_file():
        return f"strategy rare needs the run's token_freqs.json, not found in {system.run_dir}"
    if strategy == "proportional" and not group_by:
        return "strategy proportional needs --group_by FIELD (a key of each record's meta, e.g. shop)"
    return None


def default_strategy(system: System, scoring: str | None = None) -> str:
    """``keyword_uncertainty`` for the aspect classifier, ``least_confidence`` for runs with label
    probabilities, ``rare`` for the others."""
    try:
        kind = target_kind(system, scoring)
    except NotApplicable:
        return "rare"
    return "keyword_uncertainty" if kind == "keyword" else "least_confidence"


def _tokenizer(system: System):
    return system.tokenizer if system.tokenizer is not None else system.components["keywords"].tokenizer


def rare_tokens(system: System, texts: list[str], max_count: int = 2) -> tuple[np.ndarray, list[list[str]]]:
    """:func:`rare_share` of each text under the run's tokenizer and ``token_freqs.json``, and the words
    holding the rare tokens (for the person labelling)."""
    tok = _tokenizer(system)
    freqs = read_json(system.run_dir / "token_freqs.json")["counts"]
    tokens, words = [], []
    for text in texts:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=bool(tok.is_fast))
        toks = tok.convert_ids_to_tokens(enc["input_ids"])
        tokens.append(toks)
        spans = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        found: list[str] = []
        for (a, b), t in zip(enc.get("offset_mapping") or [], toks, strict=False):
            if t != tok.unk_token and freqs.get(t, 0) > max_count:
                continue
            # The whitespace word holding the token's characters (byte-level tokens may hold part of one).
            word = next((text[s:e] for s, e in spans if s <= a < e or s < b <= e), None)
            if word and word not in found:
                found.append(word)
        words.append(found)
    shares = rare_share(tokens, freqs, max_count, tok.unk_token)
    return shares, words


@torch.inference_mode()
def sentence_embeddings(system: System, texts: list[str], batch_size: int = 32, progress: bool = False) -> np.ndarray:
    """Mean-pooled last hidden states of the review text (no template): the classifier (the ``keywords``
    model for aspects), or the generative run's causal LM (adapter included)."""
    if system.kind == "classifier":
        part = system if system.model is not None else system.components["keywords"]
        return encoder_outputs(part, texts, batch_size, hidden=True, progress=progress)[1]
    model, tok = system.model, system.tokenizer
    device = next(model.parameters()).device
    out = None
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    bar = tqdm(total=len(texts), desc="Embedding", unit="review", disable=not progress)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        # Right padding: positions then match an unpadded pass, and masked positions are left out of the mean.
        enc = tok([texts[i] for i in idx], truncation=True, max_length=system.max_input_tokens, padding=True,
                  padding_side="right", return_tensors="pt").to(device)  # fmt: skip
        hidden = model(**enc, output_hidden_states=True, logits_to_keep=1).hidden_states[-1].float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).cpu().numpy()
        if out is None:
            out = np.zeros((len(texts), pooled.shape[-1]))
        out[idx] = pooled
        bar.update(len(idx))
    bar.close()
    return out if out is not None else np.zeros((0, 0))


def score_pool(
    system: System,
    texts: list[str],
    strategies: list[str],
    scoring: str | None = None,
    batch_size: int = 32,
    rare_max_count: int = 2,
    n_clusters: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Scores of every strategy (``{strategy: [n]}``) and per-record details (predicted label, uncertain keyword,
    rare words, cluster) for ``texts``. Strategies must be available (:func:`unavailable`)."""
    n = len(texts)
    scores: dict[str, np.ndarray] = {}
    details: list[dict] = [{} for _ in texts]
    if any(s in LABEL_STRATEGIES for s in strategies):
        probs = label_probabilities(system, texts, scoring, batch_size, progress)
        funcs = {"least_confidence": least_confidence, "margin": margin_uncertainty, "entropy": entropy_uncertainty}
        for s in strategies:
            if s in funcs:
                scores[s] = funcs[s](probs)
        for d, row in zip(details, probs, strict=True):
            d["predicted"] = system.task.label_names[int(row.argmax())]
            d["probs"] = [round(float(p), 6) for p in row]
    if "keyword_uncertainty" in strategies:
        probs, thresholds = keyword_probabilities(system, texts, batch_size, progress)
        scores["keyword_uncertainty"], which = keyword_uncertainty(probs, thresholds)
        for i, (d, j) in enumerate(zip(details, which, strict=True)):
            kw = system.task.keywords[int(j)] if len(system.task.keywords) else None
            d.update(keyword=kw, keyword_prob=round(float(probs[i, j]), 6), threshold=float(thresholds[j]))
    if "rare" in strategies:
        scores["rare"], words = rare_tokens(system, texts, rare_max_count)
        for d, w in zip(details, words, strict=True):
            d["rare_words"] = w
    if "outliers" in strategies:
        emb = sentence_embeddings(system, texts, batch_size, progress)
        scores["outliers"], clusters = outlier_distance(emb, n_clusters, seed)
        for d, c in zip(details, clusters, strict=True):
            d["cluster"] = int(c)
    if "proportional" in strategies:
        scores["proportional"] = np.random.default_rng(seed).random(n)
    return {s: scores[s] for s in strategies}, details


def group_of(record: dict, field: str) -> str:
    value = (record.get("meta") or {}).get(field)
    return MISSING_GROUP if value is None or value == "" else str(value)


def read_pool(path: str | Path, encoding: str = "utf-8") -> list[dict]:
    """Pool records: a records JSONL (``.jsonl``), or plain text (``.txt``, ``.txt.gz``, ...) with one review per
    line, ids ``<file stem>-<line>`` as ``data_prep/prepare.py`` names rows without an id."""
    path = Path(path)
    if path.name.endswith(".jsonl"):
        return read_records(path, encoding)
    stem = path.name.split(".")[0]
    text, _ = decode_file(path, encoding)  # the suite's one decoder: gzip, encodings, byte-order mark
    lines = text.split("\n")
    if lines[-1] == "":  # the file's final newline ends the last line; it starts none
        lines.pop()
    return [make_record(f"{stem}-{n}", line.rstrip("\r")) for n, line in enumerate(lines, 1)]


def load_pool(
    path: str | Path, exclude: list[str | Path] = (), encoding: str = "utf-8"
) -> tuple[list[dict], dict[str, int], int]:
    """Pool records to choose from (:func:`read_pool`), the dropped ones by reason and the number read.

    Dropped: ``empty_text``, ``duplicate_id`` (second and later copies) and ``already_labelled`` (ids in any
    ``exclude`` records file, e.g. the training records). Read = kept + sum(dropped).
    """
    rows = read_pool(path, encoding)
    if not rows:
        raise DataError(f"{path}: no records (an empty file)")
    known = {str(r["id"]) for f in exclude for r in read_records(f)}
    seen: set[str] = set()
    kept, dropped = [], collections.Counter()
    for r in rows:
        rid = str(r["id"])
        if not isinstance(r.get("text"), str) or not r["text"].strip():
            dropped["empty_text"] += 1
        elif rid in known:
            dropped["already_labelled"] += 1
        elif rid in seen:
            dropped["duplicate_id"] += 1
        else:
            seen.add(rid)
            kept.append(r)
    return kept, dict(dropped), len(rows)
