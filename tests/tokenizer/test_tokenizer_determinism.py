"""Issue 13: training is deterministic across processes, exported BPE tokenizers never append
end-of-text in transformers, and a vocabulary smaller than vocab_size is a warning that says why."""

from __future__ import annotations

import inspect
import os
import random
import subprocess
import sys
import warnings

import pytest

from plmkit.tokenizer import Tokenizer
from plmkit.tokenizer.train import train_backend
from tiny import SRC, tiny_model

WORDS = (
    "the quick brown fox jumps over lazy dogs while language models predict next token players "
    "played playing games 今天 天气 真好 我们 一起"
).split()


def corpus(n: int = 300) -> list[str]:
    """Many short documents of few words: plenty of equal counts, i.e. ties a trainer must break."""
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


# Trains the three kinds in a fresh process (a new hash seed for Python and for the Rust trainers)
# from a generator, as `plm tokenizer train` does, and writes each tokenizer.json as Tokenizer.save.
TRAIN_SCRIPT = f"""
import random, sys
from plmkit.tokenizer.train import train_backend
WORDS = {WORDS!r}
{inspect.getsource(corpus)}
for kind in ("bpe", "wordpiece", "unigram"):
    backend, _ = train_backend((t for t in corpus()), kind, vocab_size=400, n_sentinels=5)
    backend.save(f"{{sys.argv[1]}}/{{kind}}.json", pretty=True)
"""


def test_training_twice_gives_byte_identical_files(tmp_path):
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        out.mkdir()
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "PYTHONPATH": str(SRC),
            "PYTHONWARNINGS": "ignore",
        }
        run = subprocess.run(
            [sys.executable, "-c", TRAIN_SCRIPT, str(out)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        outputs.append(
            {kind: (out / f"{kind}.json").read_bytes() for kind in ("bpe", "wordpiece", "unigram")}
        )
    for kind in ("bpe", "wordpiece", "unigram"):
        assert outputs[0][kind] == outputs[1][kind], f"{kind}: tokenizer.json differs between two runs"


def test_one_shot_iterator_gives_the_same_wordpiece_as_a_list():
    # WordPiece reads the texts twice; a generator is replayed from a temporary copy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from_list, _ = train_backend(corpus(), "wordpiece", vocab_size=400)
        from_generator, _ = train_backend((t for t in corpus()), "wordpiece", vocab_size=400)
    assert from_list.to_str() == from_generator.to_str()
    vocab = from_list.get_vocab(with_added_tokens=True)
    added = {t.content for t in from_list.get_added_tokens_decoder().values()}
    assert "##e" in vocab and "##e" not in added  # a plain continuation, not a special token


@pytest.mark.parametrize("kind", ["bpe", "wordpiece", "unigram"])
def test_small_vocabulary_warns_and_says_why(kind):
    with pytest.warns(UserWarning) as caught:
        tok = Tokenizer.train(corpus(50), kind, vocab_size=8192, n_sentinels=0)
    message = str(caught[0].message)
    assert message.startswith(
        f"the {kind} vocabulary has {tok.vocab_size} tokens, fewer than vocab_size=8192: "
    )
    assert "too few distinct pieces" in message
    assert caught[0].filename == __file__  # points at the caller's line


def test_full_vocabulary_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok = Tokenizer.train(corpus(), "bpe", vocab_size=270)
    assert tok.vocab_size == 270


@pytest.mark.parametrize(("family", "prefix"), [("gpt2", []), ("llama", ["<s>"])])
def test_exported_bpe_does_not_append_end_of_text(family, prefix, tmp_path):
    transformers = pytest.importorskip("transformers", reason="pip install transformers")
    from plmkit.model.hf import save_hf

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tok = Tokenizer.train(corpus(), family=family, vocab_size=300)
    save_hf(
        tiny_model("causal", vocab_size=tok.vocab_size), tok, tmp_path
    )  # as `plm convert --to-hf` writes it
    hf = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    text = "the quick fox"
    expected = [tok.token_to_id(t) for t in prefix] + tok.encode(text)
    assert hf(text)["input_ids"] == expected  # no <|endoftext|> / </s> at the end, as GPT-2 and LLaMA
    assert tok.encode(text, add_special_tokens=True) == expected  # plmkit says the same
    assert hf.decode(hf(text)["input_ids"], skip_special_tokens=True) == text
