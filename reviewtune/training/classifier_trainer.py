"""The classifier recipe's ``Trainer``: the loss carries class weights, which the models' built-in losses take none
of (kept apart from ``classifier_heads`` because importing ``transformers.Trainer`` costs scoring processes seconds)."""

from __future__ import annotations

import torch
from transformers import Trainer

from reviewtune.training.classifier_heads import weighted_loss


class WeightedLossTrainer(Trainer):
    """``Trainer`` with ``classifier_heads.weighted_loss``: the mean over the batch, so the Trainer divides it by the
    gradient-accumulation steps."""

    loss_is_scaled_for_ga = False

    def __init__(self, *args, problem_type: str, class_weights: list[float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.problem_type = problem_type
        self.class_weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights else None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        weights = self.class_weights.to(outputs.logits.device) if self.class_weights is not None else None
        loss = weighted_loss(outputs.logits, labels, self.problem_type, weights)
        return (loss, outputs) if return_outputs else loss
