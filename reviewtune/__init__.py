"""reviewtune: fine-tune generative (QLoRA) and discriminative (RoBERTa) models on review data."""

import logging
import warnings

__version__ = "0.1.0"

# On CPUs with AVX512-BF16 bitsandbytes warns at import that the optional `kernels` package for its packed 4-bit
# CPU kernel is missing. The suite never uses that kernel (reviewtune.models.quantization keeps 4-bit weights
# unpacked), so the warning says nothing about a run; scripts import reviewtune first to keep it off the console.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

# peft 0.21 reads `model.is_gradient_checkpointing`, which transformers 5 deprecated in favour of
# `is_activation_checkpointing`: a FutureWarning on every PEFT run that says nothing about the user's configuration.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
