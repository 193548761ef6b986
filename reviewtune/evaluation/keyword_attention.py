"""Keyword attention: how one token-classification model answers the aspect task (``aspect_model:
keyword_attention``, the classifier recipe's default for aspects).

The model gives every token t a score s_k(t) per keyword k and polarity logits z_k(t) per keyword. Pooled over the
review's tokens: keyword k's presence logit is ``logsumexp_t s_k(t)``, its polarity logits are
``sum_t softmax_t(s_k)(t) z_k(t)``. So the tokens that reveal a keyword are the ones its polarity is read from.
This is label-wise attention (CAML, Mullenbach et al. 2018; LAAT, Vu et al. 2020) over a token classifier:
transformers has the token classifier (``AutoModelForTokenClassification``), not the per-label pooling, which is
therefore written here and shared by training (the loss), evaluation and the harness. Why: a pair classifier read
at ``<s>`` stays at the bag-of-words level on reviews with several aspects (docs/learning.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.special import expit

KEYWORD_ATTENTION = "keyword_attention"  # the run summary's ``head`` for such a model


def keyword_attention(logits: torch.Tensor, attention_mask: torch.Tensor, n_keywords: int) -> torch.Tensor:
    """Pooled outputs ``[B, K + K*P]`` (presence logits, then each keyword's P polarity logits) from token logits
    ``[B, T, K + K*P]``; padding (``attention_mask == 0``) takes no part."""
    batch, length, _ = logits.shape
    scores = logits[..., :n_keywords].float().masked_fill(attention_mask[..., None] == 0, float("-inf"))
    polarity = logits[..., n_keywords:].float().view(batch, length, n_keywords, -1)
    pooled = (scores.softmax(dim=1)[..., None] * polarity).sum(dim=1)  # softmax over the tokens, per keyword
    return torch.cat([torch.logsumexp(scores, dim=1), pooled.flatten(1)], dim=1)


def aspects_from_pooled(
    pooled: np.ndarray, thresholds: np.ndarray, keywords: Sequence[str], polarities: Sequence[int]
) -> list[list[dict]]:
    """Each review's aspects from pooled outputs ``[n, K + K*P]``: the keywords whose presence probability reaches
    their threshold (``[K]``, in ``keywords`` order), each with its most likely polarity, in keyword order."""
    k = len(keywords)
    pooled = np.asarray(pooled, dtype=np.float64)
    hits = expit(pooled[:, :k]) >= np.asarray(thresholds, dtype=np.float64)[None, :]
    polarity = pooled[:, k:].reshape(len(pooled), k, -1).argmax(-1)
    return [[{"keyword": kw, "polarity": int(polarities[p])}
             for kw, hit, p in zip(keywords, row_hits, row_pol, strict=True) if hit]
            for row_hits, row_pol in zip(hits, polarity, strict=True)]  # fmt: skip
