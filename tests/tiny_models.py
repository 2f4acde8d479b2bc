"""Tiny random-initialised models built in the test (no download): a BERT-style encoder with a
word-level vocabulary of the words the tests use."""

from __future__ import annotations

from pathlib import Path

WORDS = (
    "info warn warning error fatal debug disk failed failure timeout served request ok "
    "connection refused started stopped block received packet exception node ready user "
    "login session closed opened memory out of killed process job done"
).split()


def tiny_bert(folder: Path, layers: int = 2, width: int = 32, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT and its WordPiece tokenizer saved in ``folder``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(":;,.<>[]()-_=/'\"")
    vocab = specials + WORDS + chars + [f"##{c}" for c in chars]
    ids = {token: i for i, token in enumerate(dict.fromkeys(vocab))}
    tokenizer = BertTokenizerFast(vocab=ids, do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * width,
        max_position_embeddings=128,
        num_labels=2,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
