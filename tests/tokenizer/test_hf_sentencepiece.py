"""Legacy `spiece.model` folders (T5 style) load through sentencepiece when it is installed: ids equal
sentencepiece's own on text that NFKC leaves unchanged (the documented approximation)."""

from __future__ import annotations

import io

import pytest

from plmkit.tokenizer.hf import load_hf_tokenizer

sentencepiece = pytest.importorskip("sentencepiece", reason="pip install sentencepiece to test spiece.model")

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Language models predict the next token from the tokens before it.",
    "Encoder-decoder models read a source and write a target.",
    "Masked language models fill in the blanks of a sentence.",
] * 40
TEXTS = ["The lazy fox predicts the next sentence.", "models read and write", "A blank token, then another."]


def test_spiece_model_ids_match_sentencepiece(tmp_path):
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=model,
        vocab_size=60,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        character_coverage=1.0,
    )
    (tmp_path / "spiece.model").write_bytes(model.getvalue())
    (tmp_path / "tokenizer_config.json").write_text(
        '{"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}'
    )
    reference = sentencepiece.SentencePieceProcessor(model_file=str(tmp_path / "spiece.model"))
    ours = load_hf_tokenizer(tmp_path, model_type="t5")
    assert (ours.eos_id, ours.pad_id, ours.unk_id) == (1, 0, 2)
    for text in TEXTS:
        ids = reference.encode(text)
        assert ours.encode(text) == ids, text
        if reference.unk_id() not in ids:  # sentencepiece writes unknown pieces as " ⁇ "; we drop them
            assert ours.decode(ids) == reference.decode(ids)
