"""PET patterns and verbalizers: parsing (and every error, one line each), encoding with the tokenizer's
template and longest-first truncation, prompts for left-to-right models, and verbalizer tokenization."""

from __future__ import annotations

import pytest

from plmkit.errors import ConfigError, DataError
from plmkit.prompting.patterns import Pattern, Verbalizer, special_template
from plmkit.tokenizer import Tokenizer

WORDS = "good bad great awful it was the movie film story plot a very really , . ?".split()


@pytest.fixture(scope="module")
def bert() -> Tokenizer:
    """A tiny WordPiece tokenizer that keeps WORDS whole ("greatest" splits: great ##e ##s ##t)."""
    return Tokenizer.train([" ".join(WORDS)] * 20, kind="wordpiece", vocab_size=80, family="bert")


@pytest.fixture(scope="module")
def gpt2() -> Tokenizer:
    """A tiny byte-level BPE tokenizer (GPT-2: no template tokens, spaces are part of the tokens)."""
    return Tokenizer.train([" ".join(WORDS)] * 20, kind="bpe", vocab_size=300, family="gpt2")


def one_line_error(kind, call, *needles):
    with pytest.raises(kind) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


# ---- parsing -------------------------------------------------------------------------------------------
def test_parse_slots_truncation_and_mask_prefix():
    p = Pattern.parse("{text} It was {mask}.")
    assert [(x.kind, x.value, x.truncate) for x in p.parts] == [
        ("slot", "text", True),  # none marked: every text slot may be shortened
        ("literal", " It was ", False),
        ("mask", "mask", False),
        ("literal", ".", False),
    ]
    assert p.slots == ("text",) and p.mask_prefix == " " and not p.mask_at_end
    q = Pattern.parse("{text_pair}? {mask}, {text:truncate}")
    assert [x.truncate for x in q.parts if x.kind == "slot"] == [False, True]  # only the marked one
    assert q.slots == ("text_pair", "text") and q.mask_prefix == " "
    r = Pattern.parse("{{quote}} {text} means{mask}  ")
    assert r.parts[0].value == "{quote} " and r.mask_prefix == "" and r.mask_at_end


@pytest.mark.parametrize(
    "template, needles",
    [
        ("{text} It was good.", ["has 0 {mask} slots", "exactly one"]),
        ("{mask} {text} {mask}", ["has 2 {mask} slots"]),
        (
            "{txt} It was {mask}.",
            ["unknown slot 'txt'", 'did you mean "text"', "slots are text, text_pair and mask"],
        ),
        ("{} It was {mask}.", ["unknown slot '{}'"]),
        ("{text!r} {mask}", ["slot {text!r} is not understood", "{text:truncate}"]),
        ("{text:upper} {mask}", ["slot {text:upper} is not understood"]),
        ("{text} {mask:truncate}", ["slot {mask:truncate} is not understood", "write {mask}"]),
        ("{text It was {mask}.", ["{{ }} for literal braces"]),
        ("It was {mask}.", ["has no text slot"]),
    ],
)
def test_parse_errors(template, needles):
    message = one_line_error(ConfigError, lambda: Pattern.parse(template), *needles)
    assert repr(template) in message  # names the template


# ---- encoding ------------------------------------------------------------------------------------------
def test_encode_with_the_template_equals_the_whole_string(bert):
    p = Pattern.parse("{text} It was {mask}.")
    ids, positions = p.encode(bert, {"text": "the movie"}, max_length=32)
    assert ids == bert.encode("the movie It was [MASK].", add_special_tokens=True)
    assert ids[0] == bert.cls_id and ids[-1] == bert.sep_id
    assert positions == [5] and ids[5] == bert.mask_id
    ids3, positions3 = p.encode(bert, {"text": "the movie"}, max_length=32, mask_tokens=3)
    assert positions3 == [5, 6, 7] and ids3 == ids[:5] + [bert.mask_id] * 3 + ids[6:]
    assert special_template(bert) == ([bert.cls_id], [bert.sep_id])


def test_truncation_longest_first_and_only_marked_slots(bert):
    rows = {"text": "good bad great", "text_pair": "the movie was a very good film"}  # 3 and 7 tokens
    p = Pattern.parse("{text_pair}? {mask}, {text}")
    full, _ = p.encode(bert, rows, max_length=64)
    assert len(full) == 2 + 7 + 1 + 1 + 1 + 3  # [CLS] pair ? [MASK] , text [SEP]
    ids, positions = p.encode(bert, rows, max_length=len(full) - 5)
    pair, text = bert.encode(rows["text_pair"]), bert.encode(rows["text"])
    # 7,3 -> 6,3 -> 5,3 -> 4,3 -> 3,3 -> 2,3 (a tie cuts the first slot in the template)
    q, c = bert.token_to_id("?"), bert.token_to_id(",")
    assert ids == [bert.cls_id, *pair[:2], q, bert.mask_id, c, *text, bert.sep_id]
    assert positions == [4]
    marked = Pattern.parse("{text:truncate} {text_pair} {mask}")
    ids, _ = marked.encode(bert, rows, max_length=2 + 7 + 1 + 1)
    assert ids == [bert.cls_id, *text[:1], *pair, bert.mask_id, bert.sep_id]
    one_line_error(
        ConfigError,
        lambda: marked.encode(bert, rows, max_length=2 + 7 + 1 - 1, where="train.tsv:3"),
        "train.tsv:3",
        repr(marked.template),
        "needs 1 tokens more than max_length=9",
        "{name:truncate}",
    )


def test_missing_column_and_no_mask_token(bert, gpt2):
    p = Pattern.parse("{text}? {mask}, {text_pair}")
    one_line_error(
        DataError,
        lambda: p.encode(bert, {"text": "good"}, 32, where="dev.tsv:7"),
        "dev.tsv:7",
        "reads text_pair",
    )
    one_line_error(ConfigError, lambda: p.encode(gpt2, {"text": "a", "text_pair": "b"}, 32), "no mask token")


def test_prompt_for_left_to_right_models(bert):
    p = Pattern.parse("{text} It was {mask}")
    causal = p.encode_prompt(bert, {"text": "the movie"}, 32, "causal")
    assert causal == [bert.cls_id, *bert.encode("the movie it was")]  # opening specials only
    assert p.encode_prompt(bert, {"text": "the movie"}, 32, "seq2seq") == causal + [bert.sep_id]
    short = p.encode_prompt(bert, {"text": "the movie was good"}, 5, "causal")
    assert short == [bert.cls_id, *bert.encode("the movie it was")]  # the text lost its last 2 tokens
    one_line_error(
        ConfigError,
        lambda: Pattern.parse("{text} It was {mask}.").encode_prompt(bert, {"text": "a"}, 32, "causal"),
        "has text after {mask}",
        "causal model",
    )


def test_whitespace_moves_into_slots_for_byte_level_bpe(gpt2):
    """Part by part, the ids are those of the whole text: "Ġmovie", "ĠIt", "Ġgood" keep their spaces."""
    p = Pattern.parse("It was {text}, it was {mask}")
    prompt = p.encode_prompt(gpt2, {"text": "the movie"}, 64, "causal")
    assert special_template(gpt2) == ([], [])
    words = Verbalizer({"1": ["good"]}, gpt2).word_ids(p.mask_prefix)
    assert prompt + words[0][0] == gpt2.encode("It was the movie, it was good")
    assert p.encode_prompt(gpt2, {"text": "the movie"}, 64) == gpt2.encode("It was the movie, it was")


# ---- verbalizers ---------------------------------------------------------------------------------------
def test_verbalizer_labels_words_and_ids(bert):
    v = Verbalizer({0: "bad", 1: ["good", "greatest"]}, bert)
    assert v.labels == ["0", "1"] and v.words == [["bad"], ["good", "greatest"]] and len(v) == 2
    assert v.word_ids() == [[bert.encode("bad")], [bert.encode("good"), bert.encode("greatest")]]
    assert len(v.word_ids()[1][1]) == 4  # great ##e ##s ##t
    single = Verbalizer({"neg": ["bad", "awful"], "pos": "good"}, bert, single_token=True)
    assert single.single_token_ids(" ") == [
        [bert.token_to_id("bad"), bert.token_to_id("awful")],
        [bert.token_to_id("good")],
    ]
    one_line_error(ConfigError, v.single_token_ids, "single_token=True")


def test_verbalizer_errors(bert):
    one_line_error(
        ConfigError,
        lambda: Verbalizer({"0": "bad", "1": "greatest"}, bert, single_token=True),
        "'greatest'",
        "label '1'",
        "is 4 tokens",
        "['great', '##e', '##s', '##t']",
    )
    one_line_error(
        ConfigError, lambda: Verbalizer({"0": "bad", "1": "bad"}, bert), "'bad' names both label '0' and '1'"
    )
    one_line_error(ConfigError, lambda: Verbalizer({"0": [], "1": "good"}, bert), "label '0' has no word")
    one_line_error(ConfigError, lambda: Verbalizer({"0": " ", "1": "good"}, bert), "label '0' has no word")
    one_line_error(ConfigError, lambda: Verbalizer({}, bert), "the verbalizer is empty")
