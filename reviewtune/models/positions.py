"""How long an input a model can take: its position embeddings, less the two RoBERTa-style models lose to the
padding offset (their position ids start after the padding index)."""

from __future__ import annotations

PADDING_OFFSET_MODEL_TYPES = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "data2vec-text")


def usable_positions(config) -> int | None:
    """Longest sequence (tokens) ``config``'s model can take, or ``None`` when the config does not say."""
    limit = getattr(config, "max_position_embeddings", None)
    if limit and getattr(config, "model_type", None) in PADDING_OFFSET_MODEL_TYPES:
        limit -= (getattr(config, "pad_token_id", None) or 0) + 1
    return limit
