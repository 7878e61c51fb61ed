"""Entity-level scores equal seqeval's, in its default (lenient) mode and in mode="strict", scheme=IOB2."""

from __future__ import annotations

import random
import warnings

import pytest
from seqeval import metrics as seqeval
from seqeval.metrics.sequence_labeling import get_entities as seqeval_get_entities
from seqeval.scheme import IOB2

from plmkit.errors import ConfigError, DataError
from plmkit.evaluate.metrics import entity_scores, get_entities


def seqeval_scores(references, predictions, mode: str) -> dict:
    kwargs = {"mode": "strict", "scheme": IOB2} if mode == "strict" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zero-division warnings: the 0 values are what we compare
        report = seqeval.classification_report(references, predictions, output_dict=True, **kwargs)
        return {
            "precision": seqeval.precision_score(references, predictions, **kwargs),
            "recall": seqeval.recall_score(references, predictions, **kwargs),
            "f1": seqeval.f1_score(references, predictions, **kwargs),
            "per_type": {
                name: {
                    "precision": row["precision"],
                    "recall": row["recall"],
                    "f1": row["f1-score"],
                    "support": row["support"],
                }
                for name, row in report.items()
                if not name.endswith(" avg")
            },
        }


def assert_equal_scores(ours: dict, theirs: dict) -> None:
    for key in ("precision", "recall", "f1"):
        assert ours[key] == pytest.approx(float(theirs[key]), abs=1e-12), key
    assert ours["per_type"].keys() == theirs["per_type"].keys()
    for name, row in theirs["per_type"].items():
        for key in ("precision", "recall", "f1"):
            assert ours["per_type"][name][key] == pytest.approx(float(row[key]), abs=1e-12), (name, key)
        assert ours["per_type"][name]["support"] == int(row["support"])


README_TRUE = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
README_PRED = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]


def test_seqeval_readme_example():
    scores = entity_scores(README_TRUE, README_PRED)
    assert scores["precision"] == scores["recall"] == scores["f1"] == 0.5
    assert scores["per_type"] == {
        "MISC": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1},
        "PER": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }
    assert_equal_scores(scores, seqeval_scores(README_TRUE, README_PRED, "default"))


def test_seqeval_readme_strict_example():
    references, predictions = [["B-NP", "I-NP", "O"]], [["I-NP", "I-NP", "O"]]
    assert entity_scores(references, predictions)["f1"] == 1.0  # lenient: I-NP after O starts the chunk
    strict = entity_scores(references, predictions, mode="strict")
    assert strict["precision"] == strict["recall"] == strict["f1"] == 0.0
    assert strict["per_type"] == {"NP": {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}}
    for mode in ("default", "strict"):
        assert_equal_scores(
            entity_scores(references, predictions, mode=mode), seqeval_scores(references, predictions, mode)
        )


@pytest.mark.parametrize(
    "tags",
    [
        ["B-PER", "I-PER", "O", "B-LOC"],
        ["I-PER", "I-PER", "O", "I-LOC", "I-ORG"],  # I- after O, a type switch
        ["B-PER", "I-LOC", "E-LOC", "S-PER", "E-PER", "I-PER"],  # IOBES and malformed mixes
        ["B-PER", "B-PER", "S-PER", "S-PER", "I-PER"],
        ["E-ORG", "I-ORG", "O", "B-ORG", "E-ORG", "E-ORG"],
        ["B", "I", "O", "I", "B-X-Y", "I-X-Y"],  # bare prefixes, types holding a dash
        [],
        ["O", "O"],
    ],
)
def test_get_entities_equals_seqeval(tags):
    assert get_entities(tags) == seqeval_get_entities(tags)


def random_tags(rng: random.Random, length: int, prefixes: str) -> list[str]:
    types = ["PER", "LOC", "MISC"]
    return [
        "O" if rng.random() < 0.35 else f"{rng.choice(prefixes)}-{rng.choice(types)}" for _ in range(length)
    ]


def random_corpus(seed: int, prefixes: str) -> tuple[list[list[str]], list[list[str]]]:
    rng = random.Random(seed)
    references, predictions = [], []
    for _ in range(rng.randint(1, 6)):
        gold = random_tags(rng, rng.randint(0, 12), prefixes)
        noise = random_tags(rng, len(gold), prefixes)
        pred = [g if rng.random() < 0.7 else n for g, n in zip(gold, noise)]  # mostly right
        references.append(gold)
        predictions.append(pred)
    return references, predictions


@pytest.mark.parametrize("seed", range(60))
def test_random_iobes_default_mode_equals_seqeval(seed):
    references, predictions = random_corpus(seed, "BIES")
    for sentence in references + predictions:
        assert get_entities(sentence) == seqeval_get_entities(sentence)
    ours = entity_scores(references, predictions)
    assert_equal_scores(ours, seqeval_scores(references, predictions, "default"))


@pytest.mark.parametrize("seed", range(60))
def test_random_iob_both_modes_equal_seqeval(seed):
    references, predictions = random_corpus(1000 + seed, "BI")
    for mode in ("default", "strict"):
        ours = entity_scores(references, predictions, mode=mode)
        assert_equal_scores(ours, seqeval_scores(references, predictions, mode))


def test_strict_counts_only_well_formed_chunks():
    references = [["B-PER", "I-PER", "O", "B-LOC", "I-LOC"]]
    predictions = [["B-PER", "I-PER", "O", "I-LOC", "I-LOC"]]  # LOC is malformed: no entity in strict mode
    strict = entity_scores(references, predictions, mode="strict")
    assert strict["precision"] == 1.0 and strict["recall"] == 0.5
    assert strict["per_type"]["LOC"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert entity_scores(references, predictions)["f1"] == 1.0


def test_bad_inputs_raise_data_error():
    with pytest.raises(DataError, match="sentence 0 has 2 reference tags but 1 predicted"):
        entity_scores([["O", "O"]], [["O"]])
    with pytest.raises(DataError, match="1 predicted sentences for 2 reference sentences"):
        entity_scores([["O"], ["O"]], [["O"]])
    with pytest.raises(DataError, match=r"predicted sentence 1 position 0 holds tag 'PER'"):
        entity_scores([["O"], ["O"]], [["O"], ["PER"]])
    with pytest.raises(DataError, match=r"reference sentence 0 position 1 holds tag 'E-PER'.*IOB2"):
        entity_scores([["B-PER", "E-PER"]], [["O", "O"]], mode="strict")
    with pytest.raises(ConfigError, match='mode=\'conll\' is unknown; use "default" or "strict"'):
        entity_scores([["O"]], [["O"]], mode="conll")
    with pytest.raises(DataError, match="tag 'X-PER' at position 1"):
        get_entities(["O", "X-PER"])
