"""A Hugging Face sequence classifier and its tokenizer on one device, scoring texts in batches.

Any BERT-style encoder that ``transformers`` loads from a folder or a hub id; a base model gets a
fresh two-class head. Weights are held in fp32 whatever the checkpoint stores; bf16 comes from
autocast on GPUs that support it. For scoring on a CPU, :meth:`Encoder.quantized` turns the linear
layers into int8 (dynamic quantization): about 2.5x the messages per second of fp32 for
all-MiniLM-L6-v2 on 2 cores (``benchmarks/cascade_routing.py``).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np

from logfit_dagster.core.models.torch_loop import autocast, pick_device

#: texts per forward pass on a CPU: larger batches pad more and ran slower here (all-MiniLM-L6-v2,
#: 2 cores: 16 texts 101-112 messages/s in fp32 and about 260 in int8; 128 texts 74 and 156)
CPU_BATCH = 16


class Encoder:
    """A tokenizer and a sequence classifier on one device, scoring texts in batches."""

    def __init__(self, model, tokenizer, device: str, max_length: int, precision: str = "auto"):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_length = max_length
        self.precision = precision

    @classmethod
    def from_folder(
        cls,
        path: str,
        device: str = "auto",
        max_length: int = 128,
        tokenizer_path: str | None = None,
    ) -> Encoder:
        """A base model (folder or hub id) with a fresh two-class head, or a trained one."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
        from transformers.utils import logging as hf_logging

        device = pick_device(device)
        hf_logging.disable_progress_bar()
        verbosity = hf_logging.get_verbosity()
        # a base encoder's classification head is newly initialised: expected, not worth a warning
        hf_logging.set_verbosity_error()
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path or path))
            model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=2)
        finally:
            hf_logging.set_verbosity(verbosity)
        # fp32 weights whatever the checkpoint stores (bf16 comes from autocast, on GPUs)
        return cls(model.float().to(device), tokenizer, device, max_length)

    def quantized(self) -> Encoder | None:
        """A copy on the CPU whose linear layers compute in int8 (weights quantized once,
        activations per batch), or None where this torch has no dynamic quantization."""
        import torch

        quantize = getattr(getattr(torch, "ao", None), "quantization", None)
        quantize = getattr(quantize, "quantize_dynamic", None)
        if quantize is None:
            return None
        model = copy.deepcopy(self.model).cpu().eval()
        with warnings.catch_warnings():
            # torch marks its eager quantization deprecated (torchao replaces it); torchao's int8
            # ran 1.3x fp32 on these CPUs, eager int8 2.5x, so eager it stays while torch has it
            warnings.simplefilter("ignore")
            model = quantize(model, {torch.nn.Linear}, dtype=torch.qint8)
        return Encoder(model, self.tokenizer, "cpu", self.max_length, "fp32")

    def batch(self, texts: list[str]):
        encoded = self.tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in encoded.items()}

    def probabilities(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """LOOK probability of each text; texts are batched by length to pad little."""
        import torch

        if not texts:
            return np.zeros(0)
        if self.device == "cpu":
            batch_size = min(batch_size, CPU_BATCH)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros(len(texts))
        was_training = self.model.training
        self.model.eval()
        mixed, _ = autocast(self.device, self.precision)
        with torch.no_grad(), mixed:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                logits = self.model(**self.batch([texts[i] for i in idx])).logits.float()
                out[idx] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
        if was_training:
            self.model.train()
        return out
