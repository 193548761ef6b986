"""Deterministic synthetic Korean shopping reviews: the suite's bundled default data.

A review mentions 1-3 aspects (keywords) through surface forms (배송 -> 배송/택배/도착) and gives each a
polarity in -2..2 that the clause expresses: strong (완전/진짜/너무 + predicate, or 최고/최악/엉망),
mild (a bare predicate, 나름/꽤 for positives, 좀/살짝 for negatives), neutral (보통/무난/평범).
Clauses are joined by connectors (…지만, …는데, …고, …서, 그리고, 그래도) inside a sentence frame
(optional intro and outro) and get colloquial noise (spacing, ㅋㅋ/ㅠㅠ/!!, slang typos) at a modest rate.
About 70-75% of aspect polarities are positive, as in real shops.

Phrasing disjointness. A clause template is (surface form a, adverb d, predicate p, word order); with
a, d, p their indices, the templates with ``(a + d + p) % 4 == 0`` are held out for the test split
(adverb-first templates follow their adverb-less twin, ``(a + p) % 4``, since they contain it). A
sentence frame (intro, connectors, outro) is held out when the CRC32 of its key is 0 mod 4. Train
and validation use the other templates and frames, the test split only held-out ones: every word of
a held-out template also occurs in train templates, only the combination is new.

Labels. ``sentiment`` is 1 if the sum of the polarities is > 0, else 0; polarity draws summing to 0
are redrawn, so there are no ties. The star rating (``score`` as float, ``meta["rating"]`` as int)
follows the mean polarity m: 5 if m >= 1.5, 4 if m > 0, 3 if m > -0.75, 2 if m > -1.5, else 1.
"""

from __future__ import annotations

import random
import zlib
from functools import cache

from reviewtune.records import make_record
from reviewtune.tasks import DEFAULT_KEYWORDS, POLARITIES

SPLITS = ("train", "validation", "test")
HOLDOUT = 4  # one clause template / sentence frame in HOLDOUT is held out for the test split

# Degree adverbs per predicate class and polarity. "" (no adverb) is index 0 wherever it occurs:
# the hold-out rule for adverb-first templates relies on it.
_STRONG = ["완전", "진짜", "너무", "정말", "엄청", "아주"]
_CLASSES = {
    "pos": {1: ["", "나름", "꽤", "생각보다"], 2: _STRONG},
    "neg": {-1: ["", "좀", "조금", "살짝", "약간"], -2: _STRONG},
    "pos!": {2: ["", *_STRONG]},  # inherently strong predicates (최고예요)
    "neg!": {-2: ["", *_STRONG]},
    "neu": {0: ["", "그냥", "그럭저럭", "대체로"]},
}
# Predicates as "해요-form|stem|는데-form[|음-form]"; the other endings are derived in _forms.
_GENERIC = {
    "pos": ["좋아요|좋|좋은데", "괜찮아요|괜찮|괜찮은데", "만족스러워요|만족스럽|만족스러운데",
            "맘에 들어요|맘에 들|맘에 드는데"],
    "neg": ["별로예요|별로이|별로인데", "아쉬워요|아쉽|아쉬운데", "안 좋아요|안 좋|안 좋은데",
            "실망스러워요|실망스럽|실망스러운데"],
    "pos!": ["최고예요|최고이|최고인데", "완벽해요|완벽하|완벽한데", "대박이에요|대박이|대박인데"],
    "neg!": ["최악이에요|최악이|최악인데", "엉망이에요|엉망이|엉망인데"],
    "neu": ["보통이에요|보통이|보통인데", "무난해요|무난하|무난한데", "평범해요|평범하|평범한데",
            "그저 그래요|그저 그렇|그저 그런데|그저 그럼"],
}  # fmt: skip
# keyword -> (surface forms, extra predicates per class). No surface form ends with another one, so a
# clause of one never contains a clause of another.
_LEXICON = {
    "가격": (["가격", "값", "가격대"], {
        "pos": ["저렴해요|저렴하|저렴한데", "착해요|착하|착한데", "적당해요|적당하|적당한데"],
        "neg": ["비싸요|비싸|비싼데", "부담스러워요|부담스럽|부담스러운데"],
        "pos!": ["혜자예요|혜자이|혜자인데"], "neg!": ["사악해요|사악하|사악한데"]}),
    "기능성": (["기능성", "기능"], {
        "pos": ["뛰어나요|뛰어나|뛰어난데", "쓸만해요|쓸만하|쓸만한데"],
        "neg": ["떨어져요|떨어지|떨어지는데", "부족해요|부족하|부족한데"]}),
    "길이": (["길이", "기장", "총장"], {
        "pos": ["적당해요|적당하|적당한데", "딱 좋아요|딱 좋|딱 좋은데"],
        "neg": ["짧아요|짧|짧은데", "길어요|길|긴데"]}),
    "디자인": (["디자인", "모양", "디테일"], {
        "pos": ["예뻐요|예쁘|예쁜데", "귀여워요|귀엽|귀여운데", "세련돼요|세련되|세련된데"],
        "neg": ["촌스러워요|촌스럽|촌스러운데", "안 예뻐요|안 예쁘|안 예쁜데"]}),
    "라인(핏)": (["핏", "라인", "핏감"], {
        "pos": ["예뻐요|예쁘|예쁜데", "잘 떨어져요|잘 떨어지|잘 떨어지는데",
                "날씬해 보여요|날씬해 보이|날씬해 보이는데"],
        "neg": ["애매해요|애매하|애매한데", "퍼져 보여요|퍼져 보이|퍼져 보이는데"]}),
    "마감처리": (["마감", "마감처리", "바느질"], {
        "pos": ["깔끔해요|깔끔하|깔끔한데", "꼼꼼해요|꼼꼼하|꼼꼼한데"],
        "neg": ["엉성해요|엉성하|엉성한데", "허술해요|허술하|허술한데"]}),
    "배송": (["배송", "택배", "도착"], {
        "pos": ["빨라요|빠르|빠른데"], "neg": ["느려요|느리|느린데", "늦어요|늦|늦는데"],
        "pos!": ["총알 같아요|총알 같|총알 같은데"]}),
    "사이즈": (["사이즈", "치수", "크기"], {
        "pos": ["잘 맞아요|잘 맞|잘 맞는데", "딱 맞아요|딱 맞|딱 맞는데"],
        "neg": ["작아요|작|작은데", "커요|크|큰데", "안 맞아요|안 맞|안 맞는데"]}),
    "색상": (["색상", "색깔", "컬러", "색감"], {
        "pos": ["예뻐요|예쁘|예쁜데", "고와요|곱|고운데", "화사해요|화사하|화사한데"],
        "neg": ["칙칙해요|칙칙하|칙칙한데", "화면이랑 달라요|화면이랑 다르|화면이랑 다른데"]}),
    "소재": (["소재", "원단", "재질"], {
        "pos": ["부드러워요|부드럽|부드러운데", "탄탄해요|탄탄하|탄탄한데", "도톰해요|도톰하|도톰한데"],
        "neg": ["얇아요|얇|얇은데", "까슬해요|까슬하|까슬한데", "싸구려 같아요|싸구려 같|싸구려 같은데"]}),
    "스타일": (["스타일", "분위기", "무드"], {
        "pos": ["세련돼요|세련되|세련된데", "고급스러워요|고급스럽|고급스러운데", "멋있어요|멋있|멋있는데"],
        "neg": ["촌스러워요|촌스럽|촌스러운데", "올드해요|올드하|올드한데"]}),
    "신축성": (["신축성", "스판", "탄력"], {
        "pos": ["잘 늘어나요|잘 늘어나|잘 늘어나는데", "뛰어나요|뛰어나|뛰어난데"],
        "neg": ["없어요|없|없는데", "부족해요|부족하|부족한데"]}),
    "착용감": (["착용감", "입은 느낌"], {
        "pos": ["편해요|편하|편한데", "가벼워요|가볍|가벼운데", "포근해요|포근하|포근한데"],
        "neg": ["불편해요|불편하|불편한데", "답답해요|답답하|답답한데", "무거워요|무겁|무거운데"]}),
    "품질": (["품질", "퀄리티", "완성도"], {
        "pos": ["훌륭해요|훌륭하|훌륭한데", "고급스러워요|고급스럽|고급스러운데"],
        "neg": ["떨어져요|떨어지|떨어지는데", "싸구려 같아요|싸구려 같|싸구려 같은데"]}),
}  # fmt: skip

_INTROS = ["잘 받았어요", "오늘 받았어요", "두 번째 구매예요", "후기 보고 샀어요", "고민하다가 샀어요",
           "엄마 선물로 샀어요", "여름용으로 샀어요", "선물용으로 샀는데", "세일해서 샀는데", "출근룩으로 샀는데",
           "한번 입어봤는데", "친구 추천으로 샀는데"]  # fmt: skip
_OUTROS = {
    1: ["재구매 의사 있어요", "다음에 또 살게요", "추천합니다", "잘 입을게요", "대만족이에요", "강추해요", "번창하세요",
        "잘 샀어요", "감사합니다"],
    0: ["재구매는 안 할 것 같아요", "비추예요", "반품할까 고민 중이에요", "다시는 안 살래요", "실망이에요",
        "교환하려고요", "후회돼요", "참고하세요"],
}  # fmt: skip
_EVAL = {
    1: ["좋아요|좋|좋은데", "만족해요|만족하|만족한데"],
    -1: ["아쉬워요|아쉽|아쉬운데", "속상해요|속상하|속상한데"],
}
_EXPRESSIVE = {1: ["ㅋㅋ", "ㅋㅋㅋ", "ㅎㅎ", "!!", "^^", "~~"], 0: ["ㅠㅠ", "ㅜㅜ", "..", ";;", "ㅡㅡ"]}
# Slang and typos; the replacements never occur in the templates, so noise cannot turn one template
# into another.
_TYPOS = [("너무", "넘"), ("진짜", "ㄹㅇ"), ("진짜", "찐"), ("완전", "왕"), ("좋아요", "조아요"),
          ("좋아요", "좋아용"), ("괜찮아요", "괜춘"), ("괜찮아요", "ㄱㅊ"), ("예뻐", "이뻐"), ("예쁜", "이쁜"),
          ("배송", "배숑"), ("사이즈", "싸이즈"), ("정말", "정말루"), ("감사합니다", "감사해용"), ("재구매", "재구메"),
          ("만족", "맘족"), ("어요", "어여"), ("아요", "아여")]  # fmt: skip

# Review-level distributions. Polarity weights for POLARITIES (-2..2), drawn per review mood.
_N_ASPECTS = ((1, 2, 3), (0.35, 0.45, 0.20))
_P_HAPPY = 0.8
_HAPPY = (0.02, 0.06, 0.09, 0.38, 0.45)
_UNHAPPY = (0.30, 0.36, 0.14, 0.13, 0.07)
_STYLES = (("haeyo", "eum", "formal"), (0.6, 0.25, 0.15))  # sentence-final ending of a review
_SHOPS = (("무신사", "지그재그", "에이블리", "29CM", "W컨셉"), (0.35, 0.25, 0.20, 0.12, 0.08))
_CATEGORIES = (("상의", "하의", "아우터", "원피스", "니트"), (0.30, 0.25, 0.20, 0.15, 0.10))


def _jong(ch: str) -> int:
    """Final-consonant index of a Hangul syllable (0: none, 8: ㄹ, 17: ㅂ), -1 if not a syllable."""
    code = ord(ch) - 0xAC00
    return code % 28 if 0 <= code < 11172 else -1


def _with_jong(ch: str, jong: int) -> str:
    return chr(ord(ch) - _jong(ch) + jong)


@cache
def _forms(spec: str) -> dict[str, str]:
    """All endings of a predicate from ``"해요-form|stem|는데-form[|음-form]"``, e.g. 빨라요|빠르|빠른데."""
    haeyo, stem, neunde, *eum = spec.split("|")
    last, jong = stem[-1], _jong(stem[-1])
    if haeyo.endswith("이에요"):
        seo = haeyo[:-3] + "이라서"
    elif haeyo.endswith("예요"):
        seo = haeyo[:-2] + "라서"
    else:
        seo = haeyo[:-1] + "서"
    if not eum:  # nominal 음-form: 빠름, 좋음, 듦, 부드러움 (ㅂ-irregular)
        if jong == 17 and haeyo[-2] in "워와":
            eum = [haeyo[:-2] + "움"]
        else:
            eum = [stem[:-1] + _with_jong(last, 16 if jong == 0 else 10) if jong in (0, 8) else stem + "음"]
    formal = stem[:-1] + _with_jong(last, 17) + "니다" if jong in (0, 8) else stem + "습니다"
    return {"haeyo": haeyo, "eum": eum[0], "formal": formal, "jiman": stem + "지만", "go": stem + "고",
            "neunde": neunde, "seo": seo}  # fmt: skip


def _josa(word: str) -> list[str]:
    """Subject particles that fit after ``word`` (by its last Hangul syllable's final consonant)."""
    jong = _jong((word.rstrip(")") or word)[-1])
    if jong < 0:
        return ["", "도"]
    return ["이", "은", "도", ""] if jong else ["가", "는", "도", ""]


@cache
def clause_templates(keyword: str) -> dict[int, dict[str, list[tuple[str, str, str, int]]]]:
    """``{polarity: {"train": [...], "test": [...]}}`` of (surface form, adverb, predicate, order) for a keyword.

    Keywords without a lexicon entry use the keyword itself as surface form and generic predicates.
    """
    aliases, own = _LEXICON.get(keyword, ([keyword], {}))
    pools: dict[int, dict[str, list]] = {p: {"train": [], "test": []} for p in POLARITIES}
    for cls, by_polarity in _CLASSES.items():
        predicates = own.get(cls, []) + _GENERIC[cls]
        for polarity, adverbs in by_polarity.items():
            for a, alias in enumerate(aliases):
                for d, adverb in enumerate(adverbs):
                    for p, predicate in enumerate(predicates):
                        for order in (0, 1) if adverb else (0,):
                            # An adverb-first template contains its adverb-less twin (d = 0): same part.
                            held_out = (a + p + (0 if order else d)) % HOLDOUT == 0
                            pools[polarity]["test" if held_out else "train"].append((alias, adverb, predicate, order))
    return pools


def frame_part(frame: str) -> str:
    """Which phrasing a sentence-frame key belongs to: ``"train"`` or ``"test"`` (held out)."""
    return "test" if zlib.crc32(frame.encode()) % HOLDOUT == 0 else "train"


def _joins(p: int, q: int) -> list[str]:
    """Connectors allowed between clauses of polarity p and q: contrast only across a change of sign."""
    same = (p > 0) == (q > 0) and (p < 0) == (q < 0)
    joins = ["go", "geurigo"] if same else ["jiman", "geuraedo"]
    return joins + ["neunde", "period"] + (["seo"] if p else [])


def _noise(text: str, rng: random.Random, sentiment: int) -> str:
    """Colloquial noise at a modest rate: slang/typos, expressive tokens, spacing errors, final punctuation."""
    if rng.random() < 0.15:
        typos = [(a, b) for a, b in _TYPOS if a in text]
        if typos:
            a, b = rng.choice(typos)
            text = text.replace(a, b, 1)
    text += rng.choices(["", ".", "!", "~"], weights=(0.5, 0.3, 0.15, 0.05))[0]
    if rng.random() < 0.3:
        text += rng.choice(("", " ")) + rng.choice(_EXPRESSIVE[sentiment])
    r, spaces = rng.random(), [i for i, c in enumerate(text) if c == " "]
    if r < 0.03:
        text = text.replace(" ", "")
    elif r < 0.15 and spaces:  # two words run together
        i = rng.choice(spaces)
        text = text[:i] + text[i + 1 :]
    elif r < 0.19:  # a space inside a word
        i = rng.randrange(1, len(text))
        if text[i - 1] != " " and text[i] != " ":
            text = text[:i] + " " + text[i:]
    return text


def _rating(polarities: list[int]) -> int:
    m = sum(polarities) / len(polarities)
    return 5 if m >= 1.5 else 4 if m > 0 else 3 if m > -0.75 else 2 if m > -1.5 else 1


def generate_review(rng: random.Random, keywords: list[str], phrasing: str = "train") -> dict:
    """One review from ``rng``: ``text``, ``aspects``, ``sentiment``, ``rating`` and, for checks,
    ``clauses`` (the aspect clauses before noise) and ``frame`` (the sentence-frame key).

    ``phrasing`` is ``"train"`` (train and validation templates) or ``"test"`` (held-out templates).
    """
    if phrasing not in ("train", "test"):
        raise ValueError(f"phrasing must be 'train' or 'test', got {phrasing!r}")
    k = min(len(keywords), rng.choices(*_N_ASPECTS)[0])
    chosen = rng.sample(keywords, k)
    while True:  # redraw ties: the overall sentiment must be unambiguous
        polarities = rng.choices(POLARITIES, weights=_HAPPY if rng.random() < _P_HAPPY else _UNHAPPY, k=k)
        if sum(polarities):
            break
    sentiment = int(sum(polarities) > 0)

    for _ in range(1000):  # rejection-sample a frame of the requested phrasing (1 in HOLDOUT is "test")
        joins = [rng.choice(_joins(p, q)) for p, q in zip(polarities, polarities[1:], strict=False)]
        intro = rng.choice(_INTROS) if rng.random() < 0.4 else ""
        outro = rng.choice(_OUTROS[sentiment]) if rng.random() < 0.5 else ""
        frame = f"{intro}|{'+'.join(joins)}|{outro}"
        if (k > 1 or intro or outro) and frame_part(frame) == phrasing:
            break
    else:
        raise RuntimeError(f"no {phrasing} sentence frame found")  # not reached: ~1 in 4 frames qualifies

    style = rng.choices(*_STYLES)[0]
    parts = [intro + (rng.choice((".", "")) if intro.endswith("요") else "")] if intro else []
    clauses = []
    for i, (keyword, polarity) in enumerate(zip(chosen, polarities, strict=True)):
        alias, adverb, predicate, order = rng.choice(clause_templates(keyword)[polarity][phrasing])
        subject = alias + rng.choice(_josa(alias))
        join = joins[i] if i < len(joins) else ""
        ending = join if join in ("go", "jiman", "neunde", "seo") else style
        words = [adverb, subject] if order else [subject, adverb]
        clauses.append(" ".join(w for w in [*words, _forms(predicate)[ending]] if w))
        parts.append(clauses[-1])
        if join == "seo":  # 작아서 + 아쉬워요
            parts.append(_forms(rng.choice(_EVAL[1 if polarity > 0 else -1]))[style])
        elif join in ("geurigo", "geuraedo"):
            parts.append("그리고" if join == "geurigo" else "그래도")
        elif join == "period":
            parts[-1] += "."
    if outro:
        parts[-1] += rng.choice((".", "", "!"))
        parts.append(outro)
    aspects = [{"keyword": kw, "polarity": p} for kw, p in zip(chosen, polarities, strict=True)]
    return {
        "text": _noise(" ".join(parts), rng, sentiment),
        "aspects": sorted(aspects, key=lambda a: keywords.index(a["keyword"])),
        "sentiment": sentiment,
        "rating": _rating(polarities),
        "clauses": clauses,
        "frame": frame,
    }


def synthetic_splits(
    n: int = 10000,
    seed: int = 0,
    keywords: list[str] | None = None,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> dict[str, list[dict]]:
    """``{"train", "validation", "test"}`` canonical records; the test split uses held-out phrasings.

    Same ``seed`` (and arguments) -> identical output. Each split draws from its own seeded generator.
    """
    keywords = list(DEFAULT_KEYWORDS if keywords is None else keywords)
    if not keywords or not all(isinstance(k, str) and k.strip() for k in keywords):
        raise ValueError(f"keywords must be a non-empty list of non-empty strings, got {keywords!r}")
    if len(set(keywords)) != len(keywords):
        raise ValueError(f"duplicate keywords in {keywords}")
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    n_train = round(n * fractions[0])
    n_val = min(round(n * fractions[1]), n - n_train)
    sizes = dict(zip(SPLITS, (n_train, n_val, n - n_train - n_val), strict=True))

    out: dict[str, list[dict]] = {}
    for split, size in sizes.items():
        rng = random.Random(f"reviewtune.data.synthetic:{seed}:{split}")  # str seeds hash with SHA-512: stable
        phrasing = "test" if split == "test" else "train"
        records = []
        for i in range(1, size + 1):
            r = generate_review(rng, keywords, phrasing)
            meta = {"shop": rng.choices(*_SHOPS)[0], "category": rng.choices(*_CATEGORIES)[0], "rating": r["rating"]}
            records.append(make_record(f"syn-{split}-{i:05d}", r["text"], sentiment=r["sentiment"],
                                       aspects=r["aspects"], score=float(r["rating"]), meta=meta))  # fmt: skip
        out[split] = records
    return out
