"""Hugging Face tokenizer folders: plmkit gives the same ids as transformers' tokenizers.

(a) a WordPiece vocabulary as a legacy `vocab.txt` (BERT) vs BertTokenizer and the pure-Python
    BertTokenizerLegacy; (b) a byte-level BPE as legacy `vocab.json` + `merges.txt` (GPT-2, and RoBERTa's
    `<s> ... </s>`) vs GPT2Tokenizer / RobertaTokenizer; (c) plmkit's own `tokenizer.json` folders
    (save_hf_tokenizer) read by AutoTokenizer / PreTrainedTokenizerFast, decoding back to the text.
All vocabularies are built here from small in-test data; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import pytest
from tokenizers import ByteLevelBPETokenizer, processors

from plmkit.tokenizer import SpecialTokens, Tokenizer
from plmkit.tokenizer.hf import load_hf_tokenizer, save_hf_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

transformers = pytest.importorskip(
    "transformers", reason="tokenizer parity tests need transformers: pip install transformers"
)
transformers.logging.set_verbosity_error()

TEXTS = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "今天天气真好，我们去公园散步吧。",
    "北京是中国的首都",
    "I paid $3.50 for 2 coffees at 7:45am.",
    "Café, naïve, résumé — accents everywhere.",
    "ÀÉÎÕÜ UPPERCASE accents",
    "Emoji test 😀👍🏽 and 🚀!",
    "混合 mixed 文本 text 123",
    "e-mail: someone@example.com; url: https://plmkit.dev/path?q=1&lang=zh",
    "   leading and trailing spaces   ",
    "Tabs\tand\nnewlines\r\n",
    "Numbers: 3.14159, 1,000,000 and -42.",
    "「引号」和（括号）以及《书名号》",
    "don't won't it's",
    "",
]

CORPUS = [  # byte-level BPE training data: overlaps TEXTS only partly, so some text falls back to bytes
    "The cat sat on the mat, and the dog sat on the log.",
    "Hello there! How are you doing today?",
    "今天天气很好，明天也会是晴天。",
    "我们在北京学习中文，也学习英文。",
    "Numbers like 1, 2, 3 and 100 appear in text; so do prices such as $9.99.",
    "A café serves coffee and tea.",
    "Mixed 中文 and English text is common on the web.",
] * 4

WORDPIECE_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BPE_SPECIALS = ["<|endoftext|>", "<s>", "<pad>", "</s>", "<unk>", "<mask>"]
ROBERTA_CONFIG = {
    "bos_token": "<s>",
    "eos_token": "</s>",
    "sep_token": "</s>",
    "cls_token": "<s>",
    "unk_token": "<unk>",
    "pad_token": "<pad>",
    "mask_token": "<mask>",
}


def wordpiece_vocab() -> list[str]:
    """Specials, single characters (ASCII, accented, CJK, CJK punctuation), ## pieces and whole words."""
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    chars += "éèàîïõüÀÉÎÕÜ—"  # accented forms, kept when do_lower_case=False
    chars += "今天气真好我们去公园散步吧北京是中国的首都混合文本引号和括号以及书名，。「」（）《》"
    pieces = ["##s", "##ing", "##ed", "##er", "##ly", "##'"]
    pieces += ["##" + c for c in string.ascii_lowercase + string.ascii_uppercase + string.digits + "éï"]
    words = "hello world the quick brown fox jump over lazy dog test text mixed accents number numbers cafe"
    words += " coffee paid for and at am email url com dev path lang leading trailing spaces tabs new lines"
    words += " Hello The Numbers Emoji"
    return WORDPIECE_SPECIALS + list(dict.fromkeys(list(chars) + pieces + words.split()))


def ids_differ(ours: Tokenizer, reference, texts=TEXTS) -> list[tuple[str, list[int], list[int]]]:
    """(text, plmkit ids, transformers ids) for every text where the two disagree (special tokens on)."""
    out = []
    for text in texts:
        a = ours.encode(text, add_special_tokens=True)
        b = reference(text, add_special_tokens=True)["input_ids"]
        if a != b:
            out.append((text, a, b))
    return out


# ---- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def wordpiece_folder(request, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wordpiece")
    (folder / "vocab.txt").write_text("\n".join(wordpiece_vocab()) + "\n", encoding="utf-8")
    config = {"do_lower_case": request.param, "tokenize_chinese_chars": True}
    config |= {f"{r}_token": t for r, t in zip(("pad", "unk", "cls", "sep", "mask"), WORDPIECE_SPECIALS)}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def trained_bpe() -> ByteLevelBPETokenizer:
    bpe = ByteLevelBPETokenizer()  # GPT-2 style: no prefix space, byte-level pre-tokenizer
    bpe.train_from_iterator(
        CORPUS, vocab_size=400, min_frequency=2, special_tokens=BPE_SPECIALS, show_progress=False
    )
    return bpe


@pytest.fixture(scope="module")
def bpe_folder(trained_bpe, tmp_path_factory) -> Path:
    """Legacy GPT-2 layout: vocab.json + merges.txt only."""
    folder = tmp_path_factory.mktemp("bpe")
    trained_bpe.save_model(str(folder))
    assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "vocab.json"]
    return folder


def roberta_folder(bpe_folder: Path, tmp_path: Path, with_config: bool, model_type_in_config: bool) -> Path:
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((bpe_folder / name).read_bytes())
    if with_config:
        (tmp_path / "tokenizer_config.json").write_text(json.dumps(ROBERTA_CONFIG))
    if model_type_in_config:
        (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    return tmp_path


# ---- (a) WordPiece vocab.txt -----------------------------------------------------------------------
@pytest.mark.parametrize("reference_class", ["BertTokenizer", "BertTokenizerLegacy"])
def test_wordpiece_vocab_txt_matches_bert_tokenizer(wordpiece_folder, reference_class):
    cls = getattr(transformers, reference_class, None)
    if cls is None:
        pytest.skip(f"transformers {transformers.__version__} has no {reference_class}")
    reference = cls.from_pretrained(wordpiece_folder)
    ours = load_hf_tokenizer(wordpiece_folder)
    assert ours.vocab_size == len(wordpiece_vocab())
    assert ids_differ(ours, reference) == []
    # the test vocabulary really exercises ## pieces, CJK characters and unknowns
    all_ids = [i for t in TEXTS for i in ours.encode(t)]
    assert any(ours.id_to_token(i).startswith("##") for i in all_ids)
    assert ours.token_to_id("北") in all_ids and ours.unk_id in all_ids


def test_wordpiece_bert_tokenizer_fast_alias_and_decode(wordpiece_folder):
    reference = transformers.BertTokenizerFast.from_pretrained(wordpiece_folder)
    ours = load_hf_tokenizer(wordpiece_folder)
    assert ids_differ(ours, reference) == []
    for text in TEXTS:  # specials kept on both sides; skipping them is tested below
        ids = ours.encode(text, add_special_tokens=True)
        assert ours.decode(ids, skip_special_tokens=False) == reference.decode(ids, skip_special_tokens=False)


def test_wordpiece_decode_skips_special_tokens(wordpiece_folder):
    reference = transformers.BertTokenizer.from_pretrained(wordpiece_folder)
    ours = load_hf_tokenizer(wordpiece_folder)
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=True)
        assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True), text


def test_wordpiece_special_token_roles(wordpiece_folder):
    ours = load_hf_tokenizer(wordpiece_folder)
    s = ours.special_tokens
    assert (s.pad, s.unk, s.cls, s.sep, s.mask) == tuple(WORDPIECE_SPECIALS)
    assert (ours.pad_id, ours.unk_id, ours.cls_id, ours.sep_id, ours.mask_id) == (0, 1, 2, 3, 4)
    assert ours.encode("hello", add_special_tokens=True) == [2, ours.token_to_id("hello"), 3]


def test_wordpiece_uncased_lowercases_and_strips_accents(tmp_path):
    (tmp_path / "vocab.txt").write_text("\n".join(wordpiece_vocab()) + "\n", encoding="utf-8")
    ours = load_hf_tokenizer(tmp_path)  # no tokenizer_config.json: BERT's default is uncased
    reference = transformers.BertTokenizer.from_pretrained(tmp_path)
    assert ids_differ(ours, reference) == []
    assert ours.encode("CAFÉ") == ours.encode("cafe")


# ---- (b) byte-level BPE vocab.json + merges.txt ----------------------------------------------------
@pytest.mark.parametrize("reference_class", ["GPT2Tokenizer", "GPT2TokenizerFast"])
def test_byte_level_bpe_matches_gpt2_tokenizer(bpe_folder, reference_class):
    reference = getattr(transformers, reference_class).from_pretrained(bpe_folder)
    ours = load_hf_tokenizer(bpe_folder)
    assert ids_differ(ours, reference) == []
    for text in TEXTS:  # byte level: every string round-trips exactly, Chinese and emoji included
        assert ours.decode(ours.encode(text)) == text
        assert reference.decode(ours.encode(text)) == text
    # the test vocabulary exercises both merges and byte fallback
    ids = ours.encode("今天天气很好 😀")
    assert len(ids) < len("今天天气很好 😀".encode()) and any(ours.id_to_token(i) == "ð" for i in ids)


@pytest.mark.parametrize("how", ["model_type argument", "config.json"])
def test_byte_level_bpe_roberta_processing(bpe_folder, tmp_path, how):
    folder = roberta_folder(bpe_folder, tmp_path, with_config=True, model_type_in_config=how == "config.json")
    ours = load_hf_tokenizer(folder, model_type="roberta" if how == "model_type argument" else None)
    reference = transformers.RobertaTokenizer.from_pretrained(folder)
    assert ids_differ(ours, reference) == []
    ids = ours.encode("Hello", add_special_tokens=True)
    assert ids[0] == ours.token_to_id("<s>") and ids[-1] == ours.token_to_id("</s>")
    assert (ours.bos_id, ours.eos_id, ours.pad_id, ours.mask_id) == tuple(
        ours.token_to_id(t) for t in ("<s>", "</s>", "<pad>", "<mask>")
    )


def test_byte_level_bpe_without_model_type_adds_nothing(bpe_folder):
    ours = load_hf_tokenizer(bpe_folder)  # GPT-2 convention: no bos/eos added around the text
    assert ours.encode("Hello", add_special_tokens=True) == ours.encode("Hello")


# ---- (c) tokenizer.json folders written by plmkit --------------------------------------------------
def _roberta_style(bpe: ByteLevelBPETokenizer) -> Tokenizer:
    backend = bpe._tokenizer  # the tokenizers.Tokenizer inside the trainer wrapper
    vocab = backend.get_vocab()
    backend.post_processor = processors.RobertaProcessing(("</s>", vocab["</s>"]), ("<s>", vocab["<s>"]))
    roles = SpecialTokens(
        bos="<s>", eos="</s>", pad="<pad>", unk="<unk>", mask="<mask>", cls="<s>", sep="</s>"
    )
    return Tokenizer(backend, roles)


@pytest.fixture(scope="module")
def plmkit_tokenizers(wordpiece_folder, bpe_folder) -> dict[str, Tokenizer]:
    trained = ByteLevelBPETokenizer()
    trained.train_from_iterator(
        CORPUS, vocab_size=400, min_frequency=2, special_tokens=BPE_SPECIALS, show_progress=False
    )
    return {
        "wordpiece": load_hf_tokenizer(wordpiece_folder),
        "gpt2-bpe": load_hf_tokenizer(bpe_folder),
        "roberta-bpe": _roberta_style(trained),
        "plmkit-bpe": Tokenizer.train_bpe(CORPUS, vocab_size=400, min_frequency=2),  # eos template, pad
    }


@pytest.mark.parametrize("name", ["wordpiece", "gpt2-bpe", "roberta-bpe", "plmkit-bpe"])
def test_saved_tokenizer_json_loads_in_transformers(plmkit_tokenizers, name, tmp_path):
    ours = plmkit_tokenizers[name]
    save_hf_tokenizer(ours, tmp_path, model_max_length=128)
    assert (tmp_path / "tokenizer.json").is_file()
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    assert ids_differ(ours, auto) == []
    assert ids_differ(ours, fast) == []
    assert auto.model_max_length == 128
    for role in ("bos", "eos", "pad", "unk", "mask", "cls", "sep"):  # roles survive under HF names
        assert getattr(auto, f"{role}_token") == getattr(ours.special_tokens, role), role
    byte_level = name != "wordpiece"
    skip = True
    for text in TEXTS:
        ids = ours.encode(text, add_special_tokens=True)
        decoded = auto.decode(ids, skip_special_tokens=skip)
        assert decoded == ours.decode(ids, skip_special_tokens=skip), text
        if byte_level:  # byte-level BPE is lossless
            assert decoded == text


@pytest.mark.parametrize("name", ["wordpiece", "gpt2-bpe", "roberta-bpe", "plmkit-bpe"])
def test_saved_tokenizer_json_reads_back_into_plmkit(plmkit_tokenizers, name, tmp_path):
    ours = plmkit_tokenizers[name]
    save_hf_tokenizer(ours, tmp_path)
    again = load_hf_tokenizer(tmp_path)
    assert again.special_tokens == ours.special_tokens
    assert again.vocab_size == ours.vocab_size
    for text in TEXTS:
        assert again.encode(text, add_special_tokens=True) == ours.encode(text, add_special_tokens=True)
    assert Tokenizer.load(tmp_path).special_tokens == ours.special_tokens  # still a plmkit tokenizer too


def test_transformers_saved_tokenizer_json_reads_into_plmkit(bpe_folder, tmp_path):
    # the other direction: a folder whose tokenizer.json and tokenizer_config.json transformers wrote
    reference = transformers.GPT2TokenizerFast.from_pretrained(bpe_folder)
    reference.save_pretrained(tmp_path)
    ours = load_hf_tokenizer(tmp_path)
    assert ids_differ(ours, reference) == []
    assert ours.eos_id == reference.eos_token_id


# ---- behaviour transformers' tokenizer classes have by default ----------------------------------------
def test_wordpiece_special_token_in_text(wordpiece_folder):
    ours = load_hf_tokenizer(wordpiece_folder)
    reference = transformers.BertTokenizer.from_pretrained(wordpiece_folder)
    assert ids_differ(ours, reference, ["Paris is the [MASK] of France."]) == []


@pytest.mark.parametrize("kind", ["gpt2", "bert"])
def test_default_roles_without_tokenizer_config(bpe_folder, tmp_path, kind):
    if kind == "gpt2":
        ours, reference = (
            load_hf_tokenizer(bpe_folder),
            transformers.GPT2Tokenizer.from_pretrained(bpe_folder),
        )
        assert ours.eos_id == reference.eos_token_id is not None
    else:
        (tmp_path / "vocab.txt").write_text("\n".join(wordpiece_vocab()) + "\n", encoding="utf-8")
        ours, reference = load_hf_tokenizer(tmp_path), transformers.BertTokenizer.from_pretrained(tmp_path)
        assert (ours.mask_id, ours.pad_id, ours.cls_id) == (
            reference.mask_token_id,
            reference.pad_token_id,
            reference.cls_token_id,
        )


def test_roberta_processing_without_tokenizer_config(bpe_folder, tmp_path):
    folder = roberta_folder(bpe_folder, tmp_path, with_config=False, model_type_in_config=True)
    reference = transformers.RobertaTokenizer.from_pretrained(folder)
    assert ids_differ(load_hf_tokenizer(folder), reference) == []
