"""reviewtune: fine-tune generative (QLoRA) and discriminative (RoBERTa) models on review data."""

__version__ = "0.1.0"
