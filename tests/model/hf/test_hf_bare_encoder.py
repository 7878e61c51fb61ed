"""A bare encoder (a Hugging Face BertModel folder: no MLM head) used where an LM is needed: MLM training
from it (recipe init_from) gets a freshly initialised head reported as transformers reports new weights,
and evaluating its loss is a clear error, never a TypeError. Tiny models: fast, no download."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

import plmkit.io
import train_helpers as h
from plmkit.cli import main
from plmkit.errors import CheckpointError
from plmkit.model import MaskedLM, TransformerModel
from plmkit.model.hf import load_hf, save_hf
from plmkit.model.presets import get_preset
from plmkit.tokenizer import Tokenizer

BERT = h.ROOT / "recipes" / "bert-mlm.yaml"
NEW = r"Some weights of MaskedLM were not initialized from the model checkpoint at .* and are newly initialized: \["


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    """(folder of a tiny BertModel checkpoint with its WordPiece tokenizer, corpus file)."""
    tmp = tmp_path_factory.mktemp("bare")
    corpus = h.write_memorisable(tmp / "corpus.txt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small vocabulary: expected here
        tok = Tokenizer.train(corpus.read_text().splitlines(), family="bert", vocab_size=120)
    config = get_preset("bert-tiny").replace(
        vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2, d_ff=64, max_positions=64
    )
    torch.manual_seed(0)
    save_hf(TransformerModel(config, pooler=True), tok, tmp / "bert-model")
    return tmp / "bert-model", corpus


def test_load_as_lm_gets_a_new_head_with_transformers_style_warning(bare):
    folder, _ = bare
    encoder, _ = load_hf(folder)
    assert isinstance(encoder, TransformerModel)
    with pytest.warns(UserWarning, match=NEW) as caught:
        lm, _ = load_hf(folder, lm_head=True)
    message = str(caught[0].message)
    assert "'lm_head.decoder.bias'" in message and "'lm_head.transform.weight'" in message
    assert "transformer." not in message and "You should probably TRAIN this model" in message
    assert isinstance(lm, MaskedLM) and not lm.training
    body = {k: v for k, v in encoder.state_dict().items() if k.startswith("transformer.")}
    assert all(torch.equal(lm.state_dict()[k], v) for k, v in body.items())  # the body is the checkpoint's
    assert lm.lm_head.decoder.weight is lm.transformer.embed.tokens.weight  # tied, so not "new"
    with pytest.warns(UserWarning, match=NEW):
        again, _ = plmkit.io.load(folder, lm_head=True)
    assert torch.equal(again.lm_head.transform.weight, lm.lm_head.transform.weight)  # the same new head


def test_plmkit_checkpoint_of_a_bare_encoder_too(bare, tmp_path):
    folder, _ = bare
    encoder, tok = load_hf(folder)
    plmkit.io.save(encoder, tok, tmp_path / "ckpt")
    with pytest.warns(UserWarning, match=NEW):
        lm, _ = plmkit.io.load(tmp_path / "ckpt", lm_head=True)
    assert isinstance(lm, MaskedLM)
    plain, _ = plmkit.io.load(tmp_path / "ckpt")
    assert isinstance(plain, TransformerModel)  # without lm_head nothing changes


def test_a_loss_from_a_bare_encoder_is_a_clear_error(bare):
    folder, _ = bare
    encoder, _ = load_hf(folder)
    ids = torch.tensor([[2, 5, 6, 3]])
    with pytest.raises(CheckpointError, match="bare encoder .* no LM head"):
        encoder(ids, labels=ids)


def test_plm_eval_of_a_bare_encoder_is_one_error_line(bare, capsys):
    folder, corpus = bare
    assert main(["eval", str(folder), "--data", str(corpus), "--max-batches", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: this checkpoint is a bare encoder") and err.count("\n") == 1
    assert "plm embed" in err


def test_mlm_recipe_from_a_bare_encoder_trains_a_new_head(bare, tmp_path):
    from plmkit.config import load_config
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.pretrain import pretrain

    folder, corpus = bare
    overrides = h.tiny_overrides(BERT, corpus, tmp_path, steps=2) + [f"init_from={folder}"]
    overrides = [o for o in overrides if not o.startswith("tokenizer.vocab_size")]
    config = load_config(RecipeConfig, BERT, overrides)
    with pytest.warns(UserWarning, match=NEW):
        out = pretrain(config, stream=io.StringIO())
    trained, _ = plmkit.io.load(out["checkpoint"])
    assert isinstance(trained, MaskedLM)
