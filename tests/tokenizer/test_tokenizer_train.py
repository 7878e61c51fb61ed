"""Tokenizer training: byte-level BPE, Chinese-BERT WordPiece, T5 Unigram; family special tokens."""

from __future__ import annotations

import random
import unicodedata

import pytest

from plmkit.errors import ConfigError, DataError
from plmkit.tokenizer import (
    FAMILIES,
    SpecialTokens,
    Tokenizer,
    family_special_tokens,
    special_token_order,
)

ENGLISH = (
    "the quick brown fox jumps over lazy dogs while language models predict the next token "
    "players played playing games unbelievable weather today"
).split()
CHINESE = [
    "今天天气真好",
    "我们一起出去玩吧",
    "今天天气不好",
    "我们在家读书",
    "语言模型预测下一个词",
    "天气预报说明天下雨",
]


def make_corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Mixed English/Chinese documents, e.g. "the fox plays today。今天天气真好，我们在家读书"."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        english = " ".join(rng.choice(ENGLISH) for _ in range(rng.randint(3, 9)))
        chinese = "，".join(rng.sample(CHINESE, 2))
        docs.append(f"{english}。{chinese}" if rng.random() < 0.5 else f"{chinese}。{english}")
    return docs + ["龘 appears exactly once"]  # a CJK character seen once still gets its own token


CORPUS = make_corpus()
CJK = sorted({c for doc in CORPUS for c in doc if "\u4e00" <= c <= "\u9fff"})
TEXTS = ["the quick brown fox", "今天天气真好", "players played unbelievable games。我们一起出去玩吧"]


@pytest.fixture(scope="module")
def trained() -> dict[str, Tokenizer]:
    """One tokenizer of each kind with its default family (bpe: gpt2, wordpiece: bert, unigram: t5)."""
    return {
        kind: Tokenizer.train(CORPUS, kind, vocab_size=300 if kind == "bpe" else 250, n_sentinels=10)
        for kind in ("bpe", "wordpiece", "unigram")
    }


def tokens(tok: Tokenizer, text: str, add_special_tokens: bool = False) -> list[str]:
    return [tok.id_to_token(i) for i in tok.encode(text, add_special_tokens=add_special_tokens)]


# ---------------------------------------------------------------- bpe


@pytest.mark.parametrize("text", [*TEXTS, "从未见过：龘靐齉 😀", "  spaces\tand\r\nlines\n", ""])
def test_bpe_round_trip_is_exact(trained, text):
    tok = trained["bpe"]
    assert tok.decode(tok.encode(text)) == text


def test_train_bpe_is_train_with_kind_bpe(trained):
    tok = Tokenizer.train_bpe(CORPUS, vocab_size=300)
    assert tok.backend.get_vocab() == trained["bpe"].backend.get_vocab()
    assert tok.special_tokens == SpecialTokens(eos="<|endoftext|>", pad="<|pad|>")
    assert tok.encode("hello", add_special_tokens=True) == tok.encode("hello") and tok.eos_id == 0


# ---------------------------------------------------------------- wordpiece


def test_wordpiece_splits_every_cjk_character(trained):
    tok = trained["wordpiece"]
    assert tokens(tok, "今天天气真好") == list("今天天气真好")
    assert tokens(tok, "今天天气真好", add_special_tokens=True) == ["[CLS]", *"今天天气真好", "[SEP]"]
    vocab = tok.backend.get_vocab()
    assert all(c in vocab for c in CJK)  # every character of the training text, even 龘 (seen once)
    assert not [t for t in vocab if any("\u4e00" <= c <= "\u9fff" for c in t) and len(t.lstrip("#")) > 1]
    assert tokens(tok, "龘") == ["龘"] and tokens(tok, "靐") == ["[UNK]"]  # unseen: unknown


def test_wordpiece_english_uses_continuations(trained):
    tok = trained["wordpiece"]
    pieces = tokens(tok, "playgames")  # never seen as one word: split into known pieces
    assert len(pieces) > 1 and not pieces[0].startswith("##")
    assert all(p.startswith("##") for p in pieces[1:])
    assert tok.decode(tok.encode("playgames")) == "playgames"
    assert tokens(tok, "The QUICK fox") == tokens(tok, "the quick fox")  # lowercased by default
    # BERT's decode puts spaces between CJK characters, as transformers does
    assert tok.decode(tok.encode("the fox 今天", add_special_tokens=True)) == "the fox 今 天"


def test_wordpiece_cased_keeps_case():
    tok = Tokenizer.train(CORPUS + ["The Quick Fox"] * 5, "wordpiece", vocab_size=250, lowercase=False)
    assert tokens(tok, "The") != tokens(tok, "the")


def test_wordpiece_pair_template_and_type_ids(trained):
    tok = trained["wordpiece"]
    enc = tok.backend.encode("今天", "the fox")
    assert enc.tokens == ["[CLS]", "今", "天", "[SEP]", "the", "fox", "[SEP]"]
    assert enc.type_ids == [0, 0, 0, 0, 1, 1, 1]


def test_wordpiece_matches_transformers_bert_tokenizer(trained, tmp_path):
    transformers = pytest.importorskip("transformers")
    tok = trained["wordpiece"]
    tok.save(tmp_path)
    hf = transformers.BertTokenizerFast(tokenizer_file=str(tmp_path / "tokenizer.json"))
    for text in [*TEXTS, *CORPUS[:20], "Ünïcödé CAFÉ 龘靐"]:
        assert hf(text)["input_ids"] == tok.encode(text, add_special_tokens=True)
    pair = hf("今天天气", "the quick fox")
    enc = tok.backend.encode("今天天气", "the quick fox")
    assert pair["input_ids"] == enc.ids and pair["token_type_ids"] == enc.type_ids
    assert [hf.cls_token_id, hf.sep_token_id, hf.pad_token_id, hf.mask_token_id, hf.unk_token_id] == [
        tok.cls_id,
        tok.sep_id,
        tok.pad_id,
        tok.mask_id,
        tok.unk_id,
    ]


# ---------------------------------------------------------------- unigram


@pytest.mark.parametrize("text", TEXTS + CORPUS[:10])
def test_unigram_round_trips_nfkc_text(trained, text):
    tok = trained["unigram"]
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFKC", text)  # "，" -> ","


def test_unigram_metaspace_pieces_and_eos(trained):
    tok = trained["unigram"]
    pieces = tokens(tok, "the quick brown fox")
    assert pieces[0].startswith("▁") and "".join(pieces).replace("▁", " ").strip() == "the quick brown fox"
    ids = tok.encode("the fox", add_special_tokens=True)
    assert ids == tok.encode("the fox") + [tok.eos_id] and tok.id_to_token(ids[-1]) == "</s>"
    assert tok.unk_id in tok.encode("靐")  # never seen


def test_unigram_vocab_too_small_for_characters():
    with pytest.raises(ConfigError, match="too small for a unigram"):
        Tokenizer.train(CORPUS, "unigram", vocab_size=20, n_sentinels=0)


# ---------------------------------------------------------------- families


ROLE_IDS = {  # role -> id in the reference order of each family
    "gpt2": dict(eos=0, pad=1),
    "bert": dict(pad=0, unk=1, cls=2, sep=3, mask=4),
    "roberta": dict(bos=0, cls=0, pad=1, eos=2, sep=2, unk=3, mask=4),
    "bart": dict(bos=0, cls=0, pad=1, eos=2, sep=2, unk=3, mask=4),
    "t5": dict(pad=0, eos=1, unk=2),
    "glm": dict(pad=0, unk=1, cls=2, sep=3, mask=4),
    "llama": dict(unk=0, bos=1, eos=2),
}
DEFAULT_KIND = {"bert": "WordPiece", "glm": "WordPiece", "t5": "Unigram"}


@pytest.mark.parametrize("family", FAMILIES)
def test_family_special_tokens_roles_ids_and_kind(family):
    tok = Tokenizer.train(CORPUS, family=family, vocab_size=400, n_sentinels=5)
    assert type(tok.backend.model).__name__ == DEFAULT_KIND.get(family, "BPE")
    roles = {r: tok.special_id(r) for r in ("bos", "eos", "pad", "unk", "mask", "cls", "sep")}
    assert {r: i for r, i in roles.items() if i is not None} == ROLE_IDS[family]
    assert tok.special_tokens == family_special_tokens(family, n_sentinels=5)
    assert sorted(tok.all_special_ids) == sorted({tok.token_to_id(t) for t in tok.special_tokens.tokens()})


def test_family_tokens_as_listed():
    assert family_special_tokens("bert").tokens() == ["[PAD]", "[UNK]", "[MASK]", "[CLS]", "[SEP]"]
    roberta = family_special_tokens("roberta")
    assert (roberta.bos, roberta.eos, roberta.cls, roberta.sep) == ("<s>", "</s>", "<s>", "</s>")
    assert (roberta.pad, roberta.unk, roberta.mask) == ("<pad>", "<unk>", "<mask>")
    assert family_special_tokens("gpt2") == SpecialTokens(eos="<|endoftext|>", pad="<|pad|>")
    assert family_special_tokens("llama") == SpecialTokens(bos="<s>", eos="</s>", unk="<unk>")
    assert family_special_tokens("glm").additional == ["[gMASK]", "[sMASK]", "<sop>", "<eop>"]
    t5 = family_special_tokens("t5")
    assert (t5.pad, t5.eos, t5.unk) == ("<pad>", "</s>", "<unk>")
    assert t5.additional == [f"<extra_id_{i}>" for i in range(100)]
    assert len(family_special_tokens("t5", n_sentinels=3).additional) == 3


def test_t5_sentinels_take_the_last_ids_extra_id_0_highest(trained):
    tok = trained["unigram"]  # family t5, 10 sentinels
    top = tok.vocab_size - 1
    assert tok.token_to_id("<extra_id_0>") == top
    assert tok.sentinel_ids(10) == list(range(top, top - 10, -1))
    assert tok.token_to_id("<extra_id_10>") is None
    assert set(tok.sentinel_ids(10)) <= set(tok.all_special_ids)
    ids = tok.encode("the <extra_id_0> fox<extra_id_1>")  # never split, skipped on decode
    assert tok.sentinel_ids(2)[0] in ids and tok.sentinel_ids(2)[1] in ids
    assert "extra_id" not in tok.decode(ids)
    with pytest.raises(ConfigError, match="<extra_id_10>"):
        tok.sentinel_ids(11)


def test_t5_default_sentinel_count_and_vocab_size():
    tok = Tokenizer.train(CORPUS, family="t5", vocab_size=400)
    assert tok.vocab_size <= 400  # vocab_size counts the 100 sentinels
    assert (
        tok.sentinel_ids(100)[0] == tok.vocab_size - 1 and tok.sentinel_ids(100)[-1] == tok.vocab_size - 100
    )


def test_glm_extra_tokens_are_special():
    tok = Tokenizer.train(CORPUS, family="glm", vocab_size=250)
    extra = [tok.special_token_id(t) for t in ("[gMASK]", "[sMASK]", "<sop>", "<eop>")]
    assert extra == [5, 6, 7, 8] and set(extra) <= set(tok.all_special_ids)
    ids = tok.encode("今天[gMASK]天气<sop>真好<eop>")  # not split, not lowercased
    assert ids == [
        tok.token_to_id(t) for t in ["今", "天", "[gMASK]", "天", "气", "<sop>", "真", "好", "<eop>"]
    ]
    assert tok.decode(ids) == "今 天 天 气 真 好"
    with pytest.raises(ConfigError, match='did you mean "<sop>"'):
        tok.special_token_id("<sopp>")


def test_custom_special_tokens_order_and_registration():
    specials = SpecialTokens(
        eos="</s>", pad="<pad>", unk="<unk>", additional=["<extra_id_1>", "<x>", "<extra_id_0>"]
    )
    assert special_token_order(specials) == ["</s>", "<pad>", "<unk>", "<x>", "<extra_id_1>", "<extra_id_0>"]
    assert special_token_order(specials, "t5") == [
        "<pad>",
        "</s>",
        "<unk>",
        "<x>",
        "<extra_id_1>",
        "<extra_id_0>",
    ]
    tok = Tokenizer.train(CORPUS, "bpe", vocab_size=300, special_tokens=specials)
    assert [tok.token_to_id(t) for t in ("</s>", "<pad>", "<unk>", "<x>")] == [0, 1, 2, 3]
    assert tok.sentinel_ids(2) == [tok.vocab_size - 1, tok.vocab_size - 2]
    assert tok.decode(tok.encode("a<x>b")) == "ab"


def test_additional_tokens_become_special_in_the_backend(trained):
    # A backend that has "<x>" as an ordinary token: the wrapper registers it as special.
    backend = trained["bpe"].backend
    from tokenizers import Tokenizer as Backend

    backend = Backend.from_str(backend.to_str())
    backend.add_tokens(["<x>"])
    tok = Tokenizer(backend, SpecialTokens(eos="<|endoftext|>", additional=["<x>"]))
    x = tok.token_to_id("<x>")
    assert x in tok.all_special_ids and tok.decode([x, *tok.encode("hi")]) == "hi"


# ---------------------------------------------------------------- errors


def test_training_errors():
    with pytest.raises(ConfigError, match='did you mean "wordpiece"'):
        Tokenizer.train(CORPUS, "wordpeice", vocab_size=300)
    with pytest.raises(ConfigError, match='did you mean "roberta"'):
        Tokenizer.train(CORPUS, family="robrta", vocab_size=300)
    with pytest.raises(ConfigError, match="too small"):
        Tokenizer.train(CORPUS, "bpe", vocab_size=257)
    with pytest.raises(ConfigError, match="too small"):
        Tokenizer.train(CORPUS, "wordpiece", vocab_size=5)
    with pytest.raises(ConfigError, match="unk"):
        Tokenizer.train(CORPUS, "wordpiece", family="gpt2", vocab_size=300)
    with pytest.raises(ConfigError, match="not one string"):
        Tokenizer.train("one document", "bpe", vocab_size=300)
    for kind in ("bpe", "wordpiece", "unigram"):
        with pytest.raises(DataError, match="empty"):
            Tokenizer.train(["", "  \n"], kind, vocab_size=300)


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_save_load_keeps_ids(trained, kind, tmp_path):
    tok = trained[kind]
    tok.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    assert loaded.special_tokens == tok.special_tokens
    assert loaded.backend.get_vocab() == tok.backend.get_vocab()
    assert loaded.all_special_ids == tok.all_special_ids
    for text in [*TEXTS, "a<extra_id_0>b", "[MASK] 龘"]:
        assert loaded.encode(text, add_special_tokens=True) == tok.encode(text, add_special_tokens=True)
        assert loaded.decode(loaded.encode(text)) == tok.decode(tok.encode(text))


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_plmkit_load_checkpoint_with_each_kind(trained, kind, tmp_path):
    import plmkit
    import plmkit.io
    from plmkit.model import build_model

    tok = trained[kind]
    model = build_model(
        "gpt2-tiny", vocab_size=tok.vocab_size, d_model=32, n_layer=1, n_head=2, d_ff=64, max_positions=32
    )
    plmkit.io.save(model, tok, tmp_path / "ckpt")
    _, loaded = plmkit.load(tmp_path / "ckpt")
    assert type(loaded.backend.model) is type(tok.backend.model)
    for text in TEXTS:
        assert loaded.encode(text, add_special_tokens=True) == tok.encode(text, add_special_tokens=True)
