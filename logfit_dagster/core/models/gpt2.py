"""GPT-2's architecture in plain torch: the causal transformer ``template_lm`` trains and scores.

``transformers`` computed the same thing, but importing its GPT-2 costs about 6 s of CPU on top
of torch in every process that trains or scores a template model, more than a small model's
whole training in the default run. The files stay as ``transformers`` writes a
``GPT2LMHeadModel`` (``save_pretrained``): ``config.json`` with its keys, ``model.safetensors``
with its tensor names, Conv1D weights stored (in, out), the LM head tied to the token embedding
and stored once. A folder written by either loads in the other, and both compute the same
logits (a test holds them to it), so the models trained before keep scoring as they did.

What is built is GPT-2 as ``template_lm`` configures it, and a ``config.json`` asking for
anything else (another activation, cross-attention, untied weights, layer-scaled attention) is
refused by name. Padding is on the right: the causal mask alone keeps every real token from
seeing it, so ``attention_mask`` is only checked to be that shape.

Needs only torch and safetensors.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn import functional as F

from logfit_dagster.core.errors import ModelFileError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
INITIALIZER_RANGE = 0.02

# what a GPT2Config holds where it differs from nothing; the keys read back are the shape ones,
# and every other key must hold the value below (what this module computes)
_FIXED = {
    "activation_function": "gelu_new",
    "add_cross_attention": False,
    "layer_norm_epsilon": 1e-05,
    "n_inner": None,
    "reorder_and_upcast_attn": False,
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "tie_word_embeddings": True,
}


@dataclass(frozen=True)
class GPT2Shape:
    vocab_size: int
    n_positions: int
    n_embd: int
    n_layer: int
    n_head: int
    dropout: float = 0.1  # GPT-2's embd_pdrop, attn_pdrop and resid_pdrop alike
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    def config(self) -> dict:
        """The ``config.json`` ``transformers`` writes for this model."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "resid_pdrop": self.dropout,
            "initializer_range": INITIALIZER_RANGE,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "dtype": "float32",
            "use_cache": True,
            **_FIXED,
        }

    @classmethod
    def from_config(cls, config: dict, path: Path) -> GPT2Shape:
        if config.get("model_type") != "gpt2":
            raise ModelFileError(f"{path}: model_type {config.get('model_type')!r}, not 'gpt2'")
        for key, value in _FIXED.items():
            if key in config and config[key] != value:
                raise ModelFileError(
                    f"{path}: {key} is {config[key]!r}; this model needs {value!r}"
                )
        drops = {config.get(k, 0.1) for k in ("embd_pdrop", "attn_pdrop", "resid_pdrop")}
        if len(drops) != 1:
            raise ModelFileError(f"{path}: embd_pdrop, attn_pdrop and resid_pdrop differ")
        try:
            return cls(
                **{k: int(config[k]) for k in ("vocab_size", "n_positions", "n_embd", "n_layer")},
                n_head=int(config["n_head"]),
                dropout=float(drops.pop()),
                **{k: config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
            )
        except KeyError as missing:
            raise ModelFileError(f"{path}: no {missing.args[0]!r}") from None


class Conv1D(nn.Module):
    """A linear layer stored as GPT-2 stores it: weight (in, out)."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(
            *x.shape[:-1], -1
        )


class Attention(nn.Module):
    def __init__(self, shape: GPT2Shape):
        super().__init__()
        self.heads, self.dropout = shape.n_head, shape.dropout
        self.c_attn = Conv1D(shape.n_embd, 3 * shape.n_embd)
        self.c_proj = Conv1D(shape.n_embd, shape.n_embd)
        self.resid_dropout = nn.Dropout(shape.dropout)

    def forward(self, x):
        batch, length, width = x.shape
        q, k, v = (
            part.view(batch, length, self.heads, -1).transpose(1, 2)
            for part in self.c_attn(x).split(width, dim=2)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0
        )
        return self.resid_dropout(self.c_proj(out.transpose(1, 2).reshape(batch, length, width)))


class MLP(nn.Module):
    def __init__(self, shape: GPT2Shape):
        super().__init__()
        self.c_fc = Conv1D(shape.n_embd, 4 * shape.n_embd)
        self.c_proj = Conv1D(4 * shape.n_embd, shape.n_embd)
        self.dropout = nn.Dropout(shape.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


class Block(nn.Module):
    def __init__(self, shape: GPT2Shape):
        super().__init__()
        eps = _FIXED["layer_norm_epsilon"]
        self.ln_1 = nn.LayerNorm(shape.n_embd, eps=eps)
        self.attn = Attention(shape)
        self.ln_2 = nn.LayerNorm(shape.n_embd, eps=eps)
        self.mlp = MLP(shape)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class Body(nn.Module):
    def __init__(self, shape: GPT2Shape):
        super().__init__()
        self.wte = nn.Embedding(shape.vocab_size, shape.n_embd)
        self.wpe = nn.Embedding(shape.n_positions, shape.n_embd)
        self.drop = nn.Dropout(shape.dropout)
        self.h = nn.ModuleList(Block(shape) for _ in range(shape.n_layer))
        self.ln_f = nn.LayerNorm(shape.n_embd, eps=_FIXED["layer_norm_epsilon"])

    def forward(self, ids):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.drop(self.wte(ids) + self.wpe(positions)[None])
        for block in self.h:
            x = block(x)
        return self.ln_f(x)


class GPT2LM(nn.Module):
    """GPT-2 with its LM head; called as ``GPT2LMHeadModel`` is (``input_ids``,
    ``attention_mask``, ``labels``: its output has ``logits`` and, with labels, ``loss``)."""

    def __init__(self, shape: GPT2Shape, initialize: bool = True):
        super().__init__()
        self.shape = shape
        self.transformer = Body(shape)
        self.lm_head = nn.Linear(shape.n_embd, shape.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight
        if initialize:  # not when weights are loaded next: no random draws spent on them
            self._initialize()

    def _initialize(self) -> None:
        """GPT-2's initialization: normal(0, 0.02) weights, zero biases, unit layer norms, and
        each residual projection scaled by 1/sqrt(2 * layers)."""
        residual = INITIALIZER_RANGE / math.sqrt(2 * self.shape.n_layer)
        with torch.no_grad():
            for name, module in self.transformer.named_modules():
                if isinstance(module, Conv1D | nn.Embedding):
                    std = residual if name.endswith("c_proj") else INITIALIZER_RANGE
                    module.weight.normal_(0.0, std)
                    if isinstance(module, Conv1D):
                        module.bias.zero_()
                elif isinstance(module, nn.LayerNorm):
                    module.weight.fill_(1.0)
                    module.bias.zero_()

    def forward(self, input_ids, attention_mask=None, labels=None):
        if attention_mask is not None and bool(
            (attention_mask[:, 1:] > attention_mask[:, :-1]).any()
        ):
            raise ValueError("attention_mask: padding must be on the right")
        logits = self.lm_head(self.transformer(input_ids))
        loss = None
        if labels is not None:  # each token predicts the next; -100 is no target
            loss = F.cross_entropy(
                logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                labels[:, 1:].reshape(-1),
                ignore_index=-100,
            )
        return SimpleNamespace(logits=logits, loss=loss)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def resize_token_embeddings(self, vocab_size: int) -> None:
        """Grow (or cut) the vocabulary: the first rows keep their weights, new rows start at 0;
        the LM head stays tied."""
        old = self.transformer.wte.weight
        grown = nn.Embedding(vocab_size, old.shape[1]).to(old.device, old.dtype)
        with torch.no_grad():
            grown.weight.zero_()
            keep = min(vocab_size, old.shape[0])
            grown.weight[:keep] = old[:keep]
        self.transformer.wte = grown
        self.lm_head = nn.Linear(old.shape[1], vocab_size, bias=False).to(old.device, old.dtype)
        self.lm_head.weight = grown.weight
        self.shape = replace(self.shape, vocab_size=vocab_size)

    def save(self, folder: Path) -> None:
        """``config.json`` and ``model.safetensors`` as ``save_pretrained`` writes them."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(json.dumps(self.shape.config(), indent=2) + "\n")
        tensors = {
            name: tensor.detach().float().contiguous().cpu()
            for name, tensor in self.state_dict().items()
            if not name.startswith("lm_head.")
        }
        save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})

    @classmethod
    def load(cls, folder: Path) -> GPT2LM:
        """A model saved by :meth:`save` or by ``GPT2LMHeadModel.save_pretrained``."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as error:
            raise ModelFileError(f"{config_path}: {error}") from None
        if not isinstance(config, dict):
            raise ModelFileError(f"{config_path}: not a JSON object")
        shape = GPT2Shape.from_config(config, config_path)
        try:
            tensors = load_file(str(weights_path))
        except (OSError, SafetensorError) as error:
            raise ModelFileError(f"{weights_path}: {error}") from None
        tensors.pop("lm_head.weight", None)  # tied: the token embedding is the head
        model = cls(shape, initialize=False)
        expected = {k for k in model.state_dict() if not k.startswith("lm_head.")}
        if set(tensors) != expected:
            missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
            raise ModelFileError(
                f"{weights_path}: not this config's GPT-2 (missing {missing[:3]}, "
                f"unexpected {extra[:3]})"
            )
        try:
            model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=False)
        except RuntimeError as error:  # a tensor of another size
            raise ModelFileError(f"{weights_path}: {error}") from None
        return model
