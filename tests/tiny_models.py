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


CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_chat_lm(folder: Path, layers: int = 2, width: int = 32, seed: int = 0) -> Path:
    """A 2-layer, 32-wide Llama and a byte-level BPE tokenizer with a chat template, trained
    on a few log-like texts in the test (no download), saved in ``folder``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    specials = ["<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [
        '{"label": "anomalous", "reason": "an error"}',
        '{"label": "normal", "reason": "every step"}',
        " ".join(WORDS),
        "INFO dfs.DataNode: Receiving block blk_1 src: /10.0.0.1 dest: /10.0.0.2",
    ] * 20
    bpe.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="<pad>",
        eos_token="<|end|>",
        bos_token="<|system|>",
        additional_special_tokens=specials[1:4],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
