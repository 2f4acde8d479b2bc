"""The template model's GPT-2 in plain torch computes what ``transformers``' GPT2LMHeadModel
computes on the same weights, reads the folders ``save_pretrained`` writes and writes folders it
reads; a file it cannot hold is refused by name."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from logfit_dagster.core.errors import ModelFileError  # noqa: E402
from logfit_dagster.core.models.gpt2 import GPT2LM, GPT2Shape  # noqa: E402

SHAPE = GPT2Shape(
    vocab_size=23, n_positions=17, n_embd=32, n_layer=2, n_head=4, bos_token_id=1, pad_token_id=0
)


def _batch():
    """Right-padded windows of different lengths, as the template model pads them."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, SHAPE.vocab_size, (5, 16), generator=generator)
    mask = torch.ones_like(ids)
    for row, length in enumerate((16, 9, 3, 12, 1)):
        ids[row, length:], mask[row, length:] = 0, 0
    return ids, mask, ids.masked_fill(mask == 0, -100)


def _same_outputs(ours, theirs) -> None:
    ids, mask, labels = _batch()
    ours.eval(), theirs.eval()
    with torch.no_grad():
        mine = ours(input_ids=ids, attention_mask=mask, labels=labels)
        reference = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    real = mask.bool()  # what padding positions hold is never read
    assert torch.allclose(mine.logits[real], reference.logits[real], atol=1e-5)
    assert mine.loss.item() == pytest.approx(reference.loss.item(), abs=1e-6)


def test_a_folder_transformers_saved_scores_the_same_here(tmp_path):
    torch.manual_seed(3)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**SHAPE.config()))
    theirs.save_pretrained(tmp_path / "model")
    _same_outputs(GPT2LM.load(tmp_path / "model"), theirs)


def test_a_folder_saved_here_loads_in_transformers_and_scores_the_same(tmp_path):
    torch.manual_seed(4)
    ours = GPT2LM(SHAPE)
    ours.save(tmp_path / "model")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "model")
    _same_outputs(ours, theirs)
    # the head is the token embedding, stored once and tied again on load
    reloaded = GPT2LM.load(tmp_path / "model")
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight
    assert torch.equal(reloaded.lm_head.weight, ours.transformer.wte.weight)


def test_initialization_follows_gpt2():
    torch.manual_seed(5)
    model = GPT2LM(GPT2Shape(vocab_size=400, n_positions=64, n_embd=256, n_layer=8, n_head=4))
    block = model.transformer.h[0]
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(0.02 / 4, rel=0.05)
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.all(block.attn.c_attn.bias == 0) and torch.all(block.ln_1.weight == 1)


def test_growing_the_vocabulary_keeps_the_rows_and_the_tie():
    model = GPT2LM(SHAPE)
    before = model.get_input_embeddings().weight.detach().clone()
    model.resize_token_embeddings(SHAPE.vocab_size + 5)
    after = model.get_input_embeddings().weight
    assert after.shape[0] == SHAPE.vocab_size + 5 and torch.equal(after[: len(before)], before)
    assert model.lm_head.weight is after and model.shape.vocab_size == SHAPE.vocab_size + 5
    ids, mask, _ = _batch()
    assert model(input_ids=ids, attention_mask=mask).logits.shape[-1] == SHAPE.vocab_size + 5


def test_left_padding_is_refused():
    ids, mask, _ = _batch()
    with pytest.raises(ValueError, match="padding must be on the right"):
        GPT2LM(SHAPE)(input_ids=ids, attention_mask=mask.flip(1))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"activation_function": "relu"}, "activation_function is 'relu'"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings is False"),
        ({"model_type": "llama"}, "model_type 'llama'"),
        ({"n_layer": 3}, "not this config's GPT-2"),
        ({"n_embd": 64}, "size mismatch"),
    ],
)
def test_a_config_this_model_cannot_compute_is_refused_naming_the_file(tmp_path, change, message):
    GPT2LM(SHAPE).save(tmp_path / "model")
    config = tmp_path / "model" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
    with pytest.raises(ModelFileError, match=message) as error:
        GPT2LM.load(tmp_path / "model")
    assert str(tmp_path / "model") in str(error.value)


def test_damaged_or_missing_weights_are_refused_naming_the_file(tmp_path):
    GPT2LM(SHAPE).save(tmp_path / "model")
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="model.safetensors"):
        GPT2LM.load(tmp_path / "model")
    weights.unlink()
    with pytest.raises(ModelFileError, match="model.safetensors"):
        GPT2LM.load(tmp_path / "model")
