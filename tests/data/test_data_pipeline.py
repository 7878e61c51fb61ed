"""build_pretraining_data: sources -> cached stores -> packed blocks -> mixed, resumable batches."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from plmkit.data import SourceSpec, TokenStore, build_pretraining_data, iter_documents
from plmkit.errors import ConfigError
from plmkit.tokenizer import Tokenizer
from tiny import SHARED_DATA

WIKI = SHARED_DATA / "wikitext2" / "wiki.test.raw"
CLUE = SHARED_DATA / "cluecorpussmall_sample" / "cluecorpussmall_sampled.txt"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    (folder / "en.txt").write_text(
        "".join(f"the fox number {i} jumps.\n" for i in range(300)), encoding="utf-8"
    )
    (folder / "zh.jsonl").write_text(
        "".join(f'{{"text": "今天天气真好 {i}"}}\n' for i in range(300)), encoding="utf-8"
    )
    tok = Tokenizer.train_bpe([f"the fox number {i} jumps. 今天天气真好" for i in range(50)], vocab_size=300)
    return folder, tok


def test_batches_of_blocks_from_a_weighted_mixture_resume_exactly(tmp_path, tiny):
    folder, tok = tiny
    sources = [
        {"path": str(folder / "en.txt"), "weight": 3},
        str(folder / "zh.jsonl"),
    ]  # dicts (YAML) or paths
    make = lambda: build_pretraining_data(
        sources, tok, block_size=16, batch_size=4, seed=0, cache_dir=tmp_path, progress=False
    )
    data = make()
    assert [s.weight for s in data.sources] == [3.0, 1.0] and len(data.stores) == 2
    assert all(n > 0 for n in data.num_tokens)
    uninterrupted = list(islice(data, 12))
    assert all(
        len(b) == 4 and all(t.shape == (16,) and t.dtype == torch.long for t in b) for b in uninterrupted
    )
    first = make()
    list(islice(first, 5))
    resumed = make()
    resumed.load_state_dict(first.state_dict())
    for expected, got in zip(uninterrupted[5:], islice(resumed, 7)):
        assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_one_source_works_the_same_way(tmp_path, tiny):
    folder, tok = tiny
    data = build_pretraining_data(
        [SourceSpec(str(folder / "en.txt"))], tok, 8, 2, cache_dir=tmp_path, shuffle=False, progress=False
    )
    stream = [t for b in islice(data, 3) for block in b for t in block.tolist()]
    expected = [
        t
        for d in iter_documents(SourceSpec(str(folder / "en.txt")))
        for t in tok.encode(d.text) + [tok.eos_id]
    ]
    assert stream == expected[:48]


def test_bad_source_config(tmp_path, tiny):
    _, tok = tiny
    with pytest.raises(ConfigError, match="no data sources"):
        build_pretraining_data([], tok, 8, 2, cache_dir=tmp_path)
    with pytest.raises(ConfigError, match='"wieght"'):
        build_pretraining_data([{"path": "x", "wieght": 2}], tok, 8, 2, cache_dir=tmp_path)


@pytest.mark.skipif(
    not (WIKI.is_file() and CLUE.is_file()), reason=f"shared datasets not found under {SHARED_DATA}"
)
def test_real_corpora_wikitext2_and_cluecorpussmall(tmp_path):
    wiki = SourceSpec(str(WIKI), weight=3, format="txt")  # .raw: say what it is
    clue = SourceSpec(str(CLUE), weight=1)
    sample = [d.text for spec in (wiki, clue) for d in islice(iter_documents(spec), 300)]
    tok = Tokenizer.train_bpe(sample, vocab_size=2000)
    data = build_pretraining_data(
        [wiki, clue], tok, block_size=128, batch_size=8, seed=0, cache_dir=tmp_path, progress=False
    )
    wiki_store, clue_store = data.stores
    assert wiki_store.num_documents == 2891 and clue_store.num_documents == 2500  # one document per line
    assert wiki_store.tokens.dtype.name == "uint16"
    # byte-level BPE round-trips: the stored tokens are exactly the documents (CRLF removed)
    first_wiki = next(iter_documents(wiki)).text
    assert tok.decode(wiki_store.document(0)[:-1].tolist()) == first_wiki and "\r" not in first_wiki
    last_clue = list(iter_documents(clue))[-1].text
    assert tok.decode(clue_store.document(-1)[:-1].tolist()) == last_clue
    tokens = [0, 0]
    for batch in islice(data.sampler, 200):
        for source, _ in batch:
            tokens[source] += 128
    assert abs(tokens[0] / sum(tokens) - 0.75) < 0.03  # 1600 blocks: ~1% standard deviation
    again = TokenStore.build([wiki], tok, tmp_path, progress=False)  # cached
    assert again.directory == wiki_store.directory


def test_describe_counts_each_source_and_names_the_validation(tmp_path, tiny):
    folder, tok = tiny
    en, zh = str(folder / "en.txt"), str(folder / "zh.jsonl")

    def describe(**kw) -> list[str]:
        data = build_pretraining_data(
            [{"path": en, "weight": 3}, zh], tok, 16, 4, cache_dir=tmp_path, progress=False, **kw
        )
        n = [store.num_tokens for store in data.stores]
        assert data.describe().splitlines()[1:3] == [
            f"  train {en}: 300 documents, {n[0]:,} tokens, {n[0] / 300:,.1f} tokens per document (weight 3)",
            f"  train {zh}: 300 documents, {n[1]:,} tokens, {n[1] / 300:,.1f} tokens per document (weight 1)",
        ]
        return data.describe().splitlines()

    held_out = describe(validation_fraction=0.1)
    assert held_out[0].startswith("2 source(s), ") and " validation blocks" in held_out[0]
    assert held_out[3:] == [
        f"  validation: the last 10% of the blocks of {en}, {zh} "
        "(validation_fraction; data.validation names files instead)"
    ]
    own = describe(validation=[zh])  # e.g. a recipe's validation files kept when its sources change
    assert len(own) == 4 and own[3].startswith(f"  validation {zh}: 300 documents, ")
    none = describe()
    assert none[0].endswith(", no validation") and len(none) == 3
