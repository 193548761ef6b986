"""The classifier recipe's ``Trainer``: the loss carries class weights, which the models' built-in losses take none
of (kept apart from ``classifier_heads`` because importing ``transformers.Trainer`` costs scoring processes seconds)."""

from __future__ import annotations

import torch
from transformers import Trainer

from reviewtune.evaluation.keyword_attention import keyword_attention
from reviewtune.training.classifier_heads import KEYWORD_ATTENTION, loss_normaliser, weighted_loss


class WeightedLossTrainer(Trainer):
    """``Trainer`` with ``classifier_heads.weighted_loss`` (on a keyword-attention model: on its token logits pooled
    per keyword, which evaluation then also receives), normalised over the whole accumulated batch: the
    Trainer's own rule (each micro-batch's mean, divided by the accumulation steps) would weigh examples by their
    micro-batch's class weights, so gradient accumulation would train another model than one larger batch."""

    loss_is_scaled_for_ga = True  # every micro-batch is divided by the accumulated batch's normaliser

    def __init__(self, *args, problem_type: str, class_weights: list[float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.problem_type = problem_type
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None
        self._accumulated_normaliser: torch.Tensor | None = None

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        """The Trainer's micro-batches of one optimizer step, and (kept here) their loss normaliser."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        weights = self.class_weights
        self._accumulated_normaliser = sum(
            (loss_normaliser(b["labels"], self.problem_type, weights) for b in batch_samples), torch.tensor(0.0)
        )
        return batch_samples, num_items_in_batch

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        if self.problem_type == KEYWORD_ATTENTION:  # token logits pooled per keyword; evaluation sees these too
            outputs["logits"] = keyword_attention(outputs.logits, inputs["attention_mask"], labels.shape[1] // 2)
        weights = self.class_weights.to(outputs.logits.device) if self.class_weights is not None else None
        # Training steps share their accumulated batch's normaliser; evaluation batches use their own.
        normaliser = self._accumulated_normaliser if model.training else None
        if normaliser is not None:
            normaliser = normaliser.to(outputs.logits.device)
        loss = weighted_loss(outputs.logits, labels, self.problem_type, weights, normaliser)
        return (loss, outputs) if return_outputs else loss
