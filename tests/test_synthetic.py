"""The synthetic shopping-review generator: determinism, labels, imbalance, phrasing disjointness."""

from __future__ import annotations

import random
import re
import statistics
import time
from collections import Counter

import pytest

from reviewtune.data.synthetic import (
    _CLASSES,
    _EVAL,
    _GENERIC,
    _INTROS,
    _LEXICON,
    _OUTROS,
    _forms,
    _josa,
    clause_templates,
    frame_part,
    generate_review,
    synthetic_splits,
)
from reviewtune.prompts import format_answer, parse_answer
from reviewtune.records import drop_reason
from reviewtune.tasks import DEFAULT_KEYWORDS, get_task

CUSTOM = ["포장", "향", "USB포트", "배송"]  # three without a lexicon entry, one with


def _squash(s: str) -> str:
    return s.replace(" ", "")


def _found_in(strings: set[str], blob: str) -> dict[str, list[int]]:
    """Where each of ``strings`` occurs in ``blob``: {string: [line numbers]} for those that do.

    Indexes the blob's substrings that could match (by first two characters and length): fast.
    """
    heads, lengths = {s[:2] for s in strings}, {len(s) for s in strings}
    hits: dict[str, list[int]] = {}
    line = 0
    for i in range(len(blob) - 1):
        if blob[i] == "\n":
            line += 1
        elif blob[i : i + 2] in heads:
            for n in lengths:
                if blob[i : i + n] in strings:
                    hits.setdefault(blob[i : i + n], []).append(line)
    return hits


def _rendered(template: tuple[str, str, str, int]) -> list[str]:
    """Every string a clause template can render to (all particles, all endings), spaces removed."""
    alias, adverb, predicate, order = template
    out = []
    for josa in _josa(alias):
        for form in _forms(predicate).values():
            words = [adverb, alias + josa] if order else [alias + josa, adverb]
            out.append(_squash("".join([*words, form])))
    return out


@pytest.fixture(scope="module")
def default10k():
    t0 = time.perf_counter()
    splits = synthetic_splits()
    return splits, time.perf_counter() - t0


@pytest.fixture(scope="module")
def small():
    return synthetic_splits(n=2000, seed=3)


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = synthetic_splits(n=300, seed=7), synthetic_splits(n=300, seed=7), synthetic_splits(n=300, seed=8)
    assert a == b
    for split in a:
        assert [r["text"] for r in a[split]] != [r["text"] for r in c[split]]
    rng1, rng2 = random.Random(5), random.Random(5)
    assert [generate_review(rng1, DEFAULT_KEYWORDS) for _ in range(50)] == [
        generate_review(rng2, DEFAULT_KEYWORDS) for _ in range(50)
    ]


def test_split_sizes_ids_and_speed(default10k):
    splits, seconds = default10k
    assert {k: len(v) for k, v in splits.items()} == {"train": 8000, "validation": 1000, "test": 1000}
    assert splits["train"][0]["id"] == "syn-train-00001" and splits["test"][-1]["id"] == "syn-test-01000"
    ids = [r["id"] for v in splits.values() for r in v]
    assert len(set(ids)) == len(ids)
    assert seconds < 20, f"10k reviews took {seconds:.1f}s"  # ~1.5 s on one idle core
    odd = synthetic_splits(n=101, fractions=(0.5, 0.25, 0.25))
    assert sum(map(len, odd.values())) == 101 and len(odd["train"]) == 50
    assert [len(v) for v in synthetic_splits(n=3, fractions=(0.5, 0.5, 0.0)).values()] == [2, 1, 0]
    for bad in [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (1.0, 0.0)]:
        with pytest.raises(ValueError, match="fractions"):
            synthetic_splits(n=10, fractions=bad)
    with pytest.raises(ValueError, match="keywords"):
        synthetic_splits(n=10, keywords=[])
    with pytest.raises(ValueError, match="duplicate"):
        synthetic_splits(n=10, keywords=["가격", "가격"])
    with pytest.raises(ValueError, match="phrasing"):
        generate_review(random.Random(0), DEFAULT_KEYWORDS, "validation")


def test_labels_valid_and_consistent(small):
    tasks = [get_task(name) for name in ("aspects", "sentiment", "regression")]
    for rec in (r for v in small.values() for r in v):
        assert [drop_reason(rec, t) for t in tasks] == [None, None, None], rec
        polarities = [a["polarity"] for a in rec["aspects"]]
        assert 1 <= len(polarities) <= 3 and len({a["keyword"] for a in rec["aspects"]}) == len(polarities)
        assert sum(polarities) != 0 and rec["sentiment"] == int(sum(polarities) > 0)
        assert set(rec["meta"]) == {"shop", "category", "rating"}
        assert rec["score"] == float(rec["meta"]["rating"]) and rec["meta"]["rating"] in range(1, 6)
        assert (rec["score"] >= 4) == (rec["sentiment"] == 1)  # stars agree with the binary label
        order = [DEFAULT_KEYWORDS.index(a["keyword"]) for a in rec["aspects"]]
        assert order == sorted(order)


def test_answers_round_trip(small):
    for name in ("aspects", "sentiment", "regression"):
        task = get_task(name)
        for rec in small["test"] + small["train"][:500]:
            parsed = parse_answer(format_answer(rec, task), task)
            assert parsed.valid, (rec, parsed.reason)
            got = {"aspects": parsed.aspects, "sentiment": parsed.label, "regression": parsed.score}[name]
            want = {"aspects": rec["aspects"], "sentiment": rec["sentiment"], "regression": rec["score"]}[name]
            assert got == want


def test_imbalance_lengths_and_variety(default10k):
    records = [r for v in default10k[0].values() for r in v]
    polarities = Counter(a["polarity"] for r in records for a in r["aspects"])
    assert set(polarities) == {-2, -1, 0, 1, 2}
    positive = (polarities[1] + polarities[2]) / sum(polarities.values())
    assert 0.68 <= positive <= 0.78, polarities
    assert 0.7 <= sum(r["sentiment"] for r in records) / len(records) <= 0.9
    assert Counter(len(r["aspects"]) for r in records).keys() == {1, 2, 3}
    assert set(Counter(r["meta"]["rating"] for r in records)) == {1, 2, 3, 4, 5}
    for field in ("shop", "category"):  # several values with unequal shares, for proportional sampling
        counts = Counter(r["meta"][field] for r in records).most_common()
        assert len(counts) >= 4 and counts[0][1] > 2 * counts[-1][1]
    lengths = [len(r["text"]) for r in records]
    assert max(lengths) <= 150 and 20 <= statistics.median(lengths) <= 60
    assert sum(15 <= n <= 80 for n in lengths) / len(lengths) > 0.97
    texts = [r["text"] for r in records]
    for marker in ("지만", "는데", "그리고", "그래도", "고 ", "서 ", "ㅋㅋ", "ㅠㅠ", "!!", "넘", "ㄹㅇ"):
        share = sum(marker in t for t in texts) / len(texts)
        assert 0.002 < share < 0.6, (marker, share)
    assert 0.02 < sum(" " not in t for t in texts) / len(texts) < 0.1  # spacing noise, modest


def test_surface_forms_and_learnable_polarity():
    for keyword in DEFAULT_KEYWORDS:
        pools = clause_templates(keyword)
        seen: dict[str, int] = {}
        for polarity, parts in pools.items():
            assert parts["train"] and parts["test"], (keyword, polarity)
            for template in parts["train"] + parts["test"]:
                key = _squash(" ".join(template[:3]) + str(template[3]))
                assert seen.setdefault(key, polarity) == polarity, (keyword, template)  # one clause, one label
        aliases = {t[0] for p in pools.values() for t in p["train"]}
        assert len(aliases) >= 2 and (keyword in aliases or keyword == "라인(핏)")
    # The surface form is in the text (typos aside), and strong/neutral markers go with the polarity.
    rng = random.Random(1)
    reviews = [generate_review(rng, DEFAULT_KEYWORDS) for _ in range(2000)]
    one = [r for r in reviews if len(r["aspects"]) == 1]
    for r in one:
        aliases = _LEXICON[r["aspects"][0]["keyword"]][0]
        assert any(a in r["clauses"][0] for a in aliases)
    strong = re.compile("완전|진짜|너무|정말|엄청|아주|최고|완벽|대박|최악|엉망|혜자|사악|총알")
    by_pol = {
        p: [bool(strong.search(r["clauses"][0])) for r in one if r["aspects"][0]["polarity"] == p]
        for p in (-2, -1, 1, 2)
    }
    assert all(by_pol[2]) and all(by_pol[-2]) and not any(by_pol[1]) and not any(by_pol[-1])


def test_phrasing_disjointness(small):
    train_text = "\n".join(_squash(r["text"]) for r in small["train"] + small["validation"])
    test_text = "\n".join(_squash(r["text"]) for r in small["test"])
    held_out: set[str] = set()
    for keyword in DEFAULT_KEYWORDS:
        for parts in clause_templates(keyword).values():
            train, test = set(parts["train"]), set(parts["test"])
            assert not train & test
            # Held-out templates recombine train vocabulary: each word also occurs in train templates.
            for i in range(3):
                assert {t[i] for t in test} <= {t[i] for p in clause_templates(keyword).values() for t in p["train"]}
            held_out.update(s for template in test for s in _rendered(template))
    # Exhaustive: no rendering (any particle, any ending) of a held-out template occurs in train text.
    assert len(held_out) > 10000 and not _found_in(held_out, train_text)
    # ... while nearly every test text contains one (the rest lost it to typos or spacing noise).
    lines = {n for ns in _found_in(held_out, test_text).values() for n in ns}
    assert len(lines) > 0.9 * len(small["test"])
    # Sampled the other way round: clauses the test split can use never occur in train/validation text,
    # and clauses of train phrasing never occur in test text.
    rng = random.Random(11)
    test_reviews = [generate_review(rng, DEFAULT_KEYWORDS, "test") for _ in range(3000)]
    train_reviews = [generate_review(rng, DEFAULT_KEYWORDS, "train") for _ in range(3000)]
    test_clauses = {_squash(c) for r in test_reviews for c in r["clauses"]}
    train_clauses = {_squash(c) for r in train_reviews for c in r["clauses"]}
    assert not test_clauses & train_clauses
    assert not _found_in(test_clauses, train_text) and not _found_in(train_clauses, test_text)
    assert len(_found_in(test_clauses, test_text)) > 30  # the check above is not vacuous
    # Sentence frames (intro, connectors, outro) are disjoint too, and cover all of the shared vocabulary.
    test_frames, train_frames = {r["frame"] for r in test_reviews}, {r["frame"] for r in train_reviews}
    assert not test_frames & train_frames
    assert {frame_part(f) for f in test_frames} == {"test"} and {frame_part(f) for f in train_frames} == {"train"}
    for frames in (test_frames, train_frames):
        assert {f.split("|")[0] for f in frames} == {"", *_INTROS}
        assert {f.split("|")[2] for f in frames} == {"", *_OUTROS[0], *_OUTROS[1]}


def test_noise_never_creates_template_words():
    vocab = {w for specs in _GENERIC.values() for s in specs for w in _squash(s).split("|")}
    vocab |= {w for _, own in _LEXICON.values() for specs in own.values() for s in specs for w in _squash(s).split("|")}
    vocab |= {a for by in _CLASSES.values() for advs in by.values() for a in advs if a}
    vocab |= {w for specs in _EVAL.values() for s in specs for w in s.split("|")}
    from reviewtune.data.synthetic import _TYPOS

    for _, replacement in _TYPOS:
        assert not any(replacement in w for w in vocab), replacement


def test_custom_keywords_fall_back_to_generic_templates():
    splits = synthetic_splits(n=600, seed=1, keywords=CUSTOM)
    task = get_task("aspects", keywords=CUSTOM)
    records = [r for v in splits.values() for r in v]
    assert {a["keyword"] for r in records for a in r["aspects"]} == set(CUSTOM)
    for rec in records:
        assert drop_reason(rec, task) is None
        assert parse_answer(format_answer(rec, task), task).aspects == rec["aspects"]
        for a in rec["aspects"]:
            if a["keyword"] != "배송":  # fallback: the keyword itself is the surface form
                assert a["keyword"] in _squash(rec["text"]), rec
    for keyword in CUSTOM[:3]:
        pools = clause_templates(keyword)
        assert all(p["train"] and p["test"] and not set(p["train"]) & set(p["test"]) for p in pools.values())
        assert {t[0] for p in pools.values() for t in p["train"] + p["test"]} == {keyword}
    train_text = "\n".join(_squash(r["text"]) for r in splits["train"] + splits["validation"])
    held_out = {s for kw in CUSTOM[:3] for p in clause_templates(kw).values() for t in p["test"] for s in _rendered(t)}
    assert not _found_in(held_out, train_text)
    one = synthetic_splits(n=20, keywords=["향"])  # a single keyword: one aspect per review
    assert all(len(r["aspects"]) == 1 for v in one.values() for r in v)
