"""Generation: KV-cache decoding vs full recompute, padding, beam search, sampling, EOS/stop strings, streaming."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from plmkit.errors import ConfigError, ShapeError
from plmkit.generation import GenerationConfig, generate, generate_ids, stream
from plmkit.generation.beam import beam_search
from plmkit.generation.config import resolve
from plmkit.model import CausalLM, ModelConfig, build_model
from plmkit.tokenizer import SpecialTokens, Tokenizer
from tiny import BART_STYLE, T5_STYLE, tiny_model

SMALL = dict(vocab_size=64, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=64, initializer_range=0.3)


tiny = partial(tiny_model, **SMALL)  # tiny(family, seed=0, **overrides)


def naive_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Reference: re-run the whole sequence every step (no cache), take the argmax."""
    family, new = model.config.family, []
    with torch.no_grad():
        for _ in range(n):
            if family == "seq2seq":
                start = [model.config.decoder_start_id]
                out = model(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([start + new]))
            elif family == "prefix":
                out = model(torch.tensor([prompt + new]), prefix_lengths=torch.tensor([len(prompt)]))
            else:
                out = model(torch.tensor([prompt + new]))
            new.append(int(out.logits[0, -1].argmax()))
    return new


def sequence_logprob(model, prompt: list[int], new: list[int]) -> float:
    """log p(new | prompt) under a causal model, by one full forward."""
    with torch.no_grad():
        logits = model(torch.tensor([prompt + new])).logits[0].log_softmax(-1)
    return sum(float(logits[len(prompt) - 1 + i, t]) for i, t in enumerate(new))


def left_pad(prompts: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, prompts))
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def scripted_lm(table: torch.Tensor) -> CausalLM:
    """A CausalLM whose logits at absolute position p are exactly table[p] (whatever the tokens):
    blocks contribute nothing, position p embeds as the one-hot e_p, the head reads table[p] off it."""
    n_pos, vocab = table.shape
    model = CausalLM(
        ModelConfig(
            vocab_size=vocab,
            d_model=64,
            n_layer=1,
            n_head=4,
            d_ff=16,
            max_positions=64,
            final_norm=False,
            tie_embeddings=False,
            pad_token_id=0,
        )
    )
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.embed.positions.weight[:n_pos, :n_pos] = torch.eye(n_pos)
        model.lm_head.decoder.weight[:, :n_pos] = table.T
    return model.eval()


def script(tokens_after_prompt: list[int], prompt_len: int, vocab: int) -> torch.Tensor:
    """Logits table that makes greedy decoding emit `tokens_after_prompt` after a prompt of prompt_len."""
    table = torch.zeros(64, vocab)
    for i, token in enumerate(tokens_after_prompt):
        table[prompt_len - 1 + i, token] = 10.0
    return table


@pytest.fixture(scope="module")
def byte_tokenizer() -> Tokenizer:
    """Byte-level BPE with no merges: every UTF-8 byte is its own token (Chinese chars = 3 tokens)."""
    return Tokenizer.train_bpe(["你好，世界！hello world"], vocab_size=258)


@pytest.fixture(scope="module")
def bpe_tokenizer() -> Tokenizer:
    text = ["今天天气真好，我们去公园散步吧。", "hello world, the weather is nice today 😀"] * 20
    return Tokenizer.train_bpe(text, vocab_size=300)


# ---- KV cache == full recompute --------------------------------------------------------------------
@pytest.mark.parametrize(
    "family, overrides",
    [
        ("causal", {}),
        ("causal", dict(position="rotary", n_kv_head=2, norm="rmsnorm", gated_mlp=True, activation="silu")),
        ("causal", dict(position="relative")),
        ("prefix", {}),
        ("prefix", dict(position="rotary")),
        ("seq2seq", T5_STYLE),
        ("seq2seq", BART_STYLE),
    ],
)
def test_greedy_with_cache_equals_full_recompute(family, overrides):
    model = tiny(family, **overrides)
    prompts = [[5, 17, 3, 40, 22], [9, 1, 33]]
    for prompt in prompts:
        got = generate_ids(model, torch.tensor([prompt]), max_new_tokens=12)
        assert got[0].tolist() == naive_greedy(model, prompt, 12)


@pytest.mark.parametrize(
    "family, overrides",
    [
        ("causal", dict(position="rotary")),
        ("causal", {}),
        ("causal", dict(position="relative")),
        ("prefix", {}),
        ("seq2seq", BART_STYLE),
    ],
)
def test_left_padded_batch_equals_each_prompt_alone(family, overrides):
    model = tiny(family, **overrides)
    prompts = [[5, 17, 3, 40, 22, 8, 9], [9, 1, 33], [12, 13, 14, 15, 16]]
    ids, mask = left_pad(prompts)
    if family == "seq2seq":  # the encoder takes either side; right padding is the usual one
        ids = torch.tensor([p + [0] * (ids.shape[1] - len(p)) for p in prompts])
        mask = mask.flip(1)
    batch = generate_ids(model, ids, mask, max_new_tokens=10)
    for row, prompt in enumerate(prompts):
        alone = generate_ids(model, torch.tensor([prompt]), max_new_tokens=10)
        assert batch[row].tolist() == alone[0].tolist()


def test_output_is_a_normal_tensor_and_model_state_is_untouched():
    model = tiny(dropout=0.3).train()
    ids = generate_ids(model, torch.tensor([[1, 2, 3]]), max_new_tokens=3)
    assert not ids.is_inference() and ids.dtype == torch.long and ids.shape == (1, 3)
    assert model.training  # never switched: dropout is off for generation's own calls only
    assert ids.tolist() == generate_ids(model.eval(), torch.tensor([[1, 2, 3]]), max_new_tokens=3).tolist()
    with pytest.raises(ShapeError):
        generate_ids(model, torch.tensor([[1, 2, 99]]))
    with pytest.raises(ShapeError):  # the model's own checks are on for everyone else
        model(torch.tensor([[1, 2, 99]]))


# ---- beam search -----------------------------------------------------------------------------------
def test_beam_search_with_one_beam_is_greedy():
    for family, overrides in (("causal", {}), ("seq2seq", T5_STYLE)):
        model = tiny(family, **overrides, eos_token_id=7)
        ids, mask = left_pad([[5, 17, 3, 40, 22], [9, 1, 33]])
        greedy = generate_ids(model, ids, mask, max_new_tokens=10)
        config = resolve(model, GenerationConfig(max_new_tokens=10, num_beams=1), {})
        assert beam_search(model, ids, mask, config).tolist() == greedy.tolist()
        assert generate_ids(model, ids, mask, max_new_tokens=10, num_beams=1).tolist() == greedy.tolist()


def test_beam_search_beats_greedy_and_batches():
    model = tiny("causal", position="rotary", seed=3)
    prompts = [[5, 17, 3, 40, 22], [9, 1, 33], [60, 2]]
    ids, mask = left_pad(prompts)
    beams = generate_ids(model, ids, mask, max_new_tokens=6, num_beams=4)
    better = 0
    for row, prompt in enumerate(prompts):
        greedy = generate_ids(model, torch.tensor([prompt]), max_new_tokens=6)[0].tolist()
        alone = generate_ids(model, torch.tensor([prompt]), max_new_tokens=6, num_beams=4)[0].tolist()
        assert beams[row].tolist() == alone
        beam_lp, greedy_lp = sequence_logprob(model, prompt, alone), sequence_logprob(model, prompt, greedy)
        assert beam_lp >= greedy_lp - 1e-5
        better += beam_lp > greedy_lp + 1e-5
    assert better >= 1  # the search found something greedy missed


def test_beam_search_eos_and_length_penalty():
    table = torch.zeros(64, 16)
    table[:, 4], table[:, 5] = 2.0, 1.5
    table[3:, 1] = 3.0  # EOS (1) is the best token from position 3 on
    model = scripted_lm(table)
    out = generate_ids(model, torch.tensor([[2, 2, 2]]), max_new_tokens=8, num_beams=3, eos_token_id=1)
    assert out.tolist() == [[4, 1]]  # finished early; the output is trimmed to the best hypothesis
    ids, mask = left_pad([[2], [2, 2, 2, 2, 2]], pad=0)  # rows reach EOS's positions at different steps
    batch = generate_ids(model, ids, mask, max_new_tokens=8, num_beams=3, eos_token_id=1, pad_token_id=0)
    assert batch.tolist() == [[4, 4, 4, 1], [1, 0, 0, 0]]

    table[:, 1] = 1.8  # EOS is always the runner-up
    model = scripted_lm(table)
    prompt = torch.tensor([[2, 2]])
    # length_penalty 0 ranks by total log-prob: stopping at once beats every longer hypothesis
    assert generate_ids(
        model, prompt, max_new_tokens=6, num_beams=2, eos_token_id=1, length_penalty=0.0
    ).tolist() == [[1]]
    # length_penalty 1 ranks by mean log-prob: 4 4 4 ... (mean log p(4)) beats EOS (log p(EOS))
    assert generate_ids(model, prompt, max_new_tokens=6, num_beams=2, eos_token_id=1).tolist() == [[4] * 6]


# ---- sampling --------------------------------------------------------------------------------------
def test_sampling_is_reproducible_and_leaves_the_global_rng_alone():
    model = tiny(initializer_range=0.02)  # nearly flat next-token distribution
    ids = torch.tensor([[1, 2, 3]])
    rng = torch.get_rng_state()
    a = generate_ids(model, ids, max_new_tokens=10, do_sample=True, seed=1)
    b = generate_ids(model, ids, max_new_tokens=10, do_sample=True, seed=1)
    c = generate_ids(model, ids, max_new_tokens=10, do_sample=True, seed=2)
    assert torch.equal(torch.get_rng_state(), rng)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()


def test_top_k_one_and_tiny_top_p_are_greedy():
    model = tiny(seed=1)
    ids, mask = left_pad([[5, 17, 3, 40], [9, 1]])
    greedy = generate_ids(model, ids, mask, max_new_tokens=10).tolist()
    for options in (dict(top_k=1), dict(top_p=1e-6), dict(top_p=1e-6, temperature=5.0)):
        assert (
            generate_ids(model, ids, mask, max_new_tokens=10, do_sample=True, seed=0, **options).tolist()
            == greedy
        )


def test_logits_filters_match_transformers():
    processors = pytest.importorskip("transformers.generation.logits_process")
    from plmkit.generation.sampling import filter_for_sampling, penalize

    torch.manual_seed(0)
    logits, seen_ids = torch.randn(3, 50) * 3, torch.randint(0, 50, (3, 7))
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter(1, seen_ids, True)
    ours = penalize(logits, seen, 1.7)
    ref = processors.RepetitionPenaltyLogitsProcessor(1.7)(seen_ids, logits.clone())
    assert torch.allclose(ours, ref)
    for options in (dict(top_k=5), dict(top_p=0.7), dict(temperature=0.5, top_k=10, top_p=0.9)):
        config = GenerationConfig(do_sample=True, **options)
        ref = logits.clone()
        ref = processors.TemperatureLogitsWarper(config.temperature)(seen_ids, ref)
        if config.top_k:
            ref = processors.TopKLogitsWarper(config.top_k)(seen_ids, ref)
        if config.top_p < 1:
            ref = processors.TopPLogitsWarper(config.top_p)(seen_ids, ref)
        assert torch.equal(torch.isinf(filter_for_sampling(logits, config)), torch.isinf(ref))


def test_repetition_penalty_breaks_a_loop():
    table = torch.zeros(64, 16)
    table[:, 5], table[:, 6] = 10.0, 8.0  # greedy says 5 forever; 6 is the runner-up
    model = scripted_lm(table)
    prompt = torch.tensor([[2, 3]])
    assert generate_ids(model, prompt, max_new_tokens=5).tolist() == [[5, 5, 5, 5, 5]]
    # 5 seen: 10 / 2 = 5 < 8, so 6 comes next; then both are seen and 5 (5 > 4) wins again
    assert generate_ids(model, prompt, max_new_tokens=5, repetition_penalty=2.0).tolist() == [[5, 6, 5, 5, 5]]
    # tokens in the prompt count too
    assert generate_ids(model, torch.tensor([[5, 3]]), max_new_tokens=2, repetition_penalty=2.0).tolist() == [
        [6, 5]
    ]


# ---- EOS, stop strings, text -----------------------------------------------------------------------
def test_eos_stops_rows_and_pads_them():
    table = torch.zeros(64, 32)
    for p in range(64):
        table[p, 10 + p % 20] = 5.0
    table[6, 1] = 50.0  # EOS (1) predicted at position 6
    model = scripted_lm(table)
    ids, mask = left_pad([[2, 2], [3, 3, 3, 3]])
    out = generate_ids(model, ids, mask, max_new_tokens=10, eos_token_id=1, pad_token_id=0)
    # row 0 generates at positions 1..6, row 1 at 3..6; the loop stops once both have produced EOS
    assert out.tolist() == [[11, 12, 13, 14, 15, 1], [13, 14, 15, 1, 0, 0]]
    out = generate_ids(model, ids, mask, max_new_tokens=3, eos_token_id=[1, 15], pad_token_id=0)
    assert out.tolist() == [[11, 12, 13], [13, 14, 15]]


def test_generate_text_eos_and_stop_strings(byte_tokenizer):
    tok = byte_tokenizer
    text = "hello world. bye"
    target = tok.encode(text) + [tok.eos_id]
    model = scripted_lm(script(target, 2, tok.vocab_size))
    prompt = "ab"  # 2 byte tokens
    assert generate(model, tok, prompt, max_new_tokens=40) == text
    assert generate(model, tok, [prompt, prompt], max_new_tokens=40) == [text, text]
    assert generate(model, tok, prompt, max_new_tokens=5) == "hello"
    assert generate(model, tok, prompt, max_new_tokens=40, stop=".") == "hello world"
    assert generate(model, tok, prompt, max_new_tokens=40, stop=("ld. b", "o w")) == "hell"
    assert generate(model, tok, prompt, max_new_tokens=40, stop=("world!",)) == text  # never complete
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    generate(model, tok, prompt, max_new_tokens=40, stop="o")
    assert len(calls) == 5  # prefill + 4 steps: the row ends as soon as "o" appears


def test_stream_joins_to_generate(byte_tokenizer):
    tok = byte_tokenizer
    text = "你好，世界！hello 😀 world"
    model = scripted_lm(script(tok.encode(text) + [tok.eos_id], 1, tok.vocab_size))
    pieces = list(stream(model, tok, "a", max_new_tokens=60))
    assert "".join(pieces) == generate(model, tok, "a", max_new_tokens=60) == text
    assert all("\ufffd" not in piece for piece in pieces) and len(pieces) > 5  # whole characters only
    for stop in (("界！",), ("ld!", "o 😀"), ("o w",)):
        pieces = list(stream(model, tok, "a", max_new_tokens=60, stop=stop))
        assert "".join(pieces) == generate(model, tok, "a", max_new_tokens=60, stop=stop)
        assert not any(s in "".join(pieces) for s in stop)


def test_stream_leaves_no_state_behind(byte_tokenizer):
    tok = byte_tokenizer
    model = scripted_lm(script(tok.encode("hello world"), 1, tok.vocab_size)).train()
    pieces = stream(model, tok, "a", max_new_tokens=10)
    assert next(pieces) == "h"
    assert not torch.is_inference_mode_enabled() and model.training  # between pieces: nothing switched
    pieces.close()  # the reader stops early
    assert model.training


def test_stream_matches_generate_with_a_random_model(bpe_tokenizer):
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(**{**SMALL, "vocab_size": bpe_tokenizer.vocab_size}, position="rotary")
    ).eval()
    for options in (dict(do_sample=True, seed=3), dict(do_sample=True, seed=4, top_p=0.9), {}):
        pieces = list(stream(model, bpe_tokenizer, "今天天气", max_new_tokens=24, **options))
        assert "".join(pieces) == generate(model, bpe_tokenizer, "今天天气", max_new_tokens=24, **options)


def test_stream_from_token_ids_equals_stream_from_text(bpe_tokenizer):
    """A prompt given as token ids (a conversation rendered by its chat template) is taken as it is."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**SMALL, "vocab_size": bpe_tokenizer.vocab_size})).eval()
    bos = [bpe_tokenizer.bos_id] if bpe_tokenizer.bos_id is not None else []
    ids = bos + bpe_tokenizer.encode("今天天气", add_special_tokens=False)  # what stream("今天天气") feeds
    for options in (dict(do_sample=True, seed=3), {}):
        from_ids = list(stream(model, bpe_tokenizer, ids, max_new_tokens=16, **options))
        assert from_ids == list(stream(model, bpe_tokenizer, "今天天气", max_new_tokens=16, **options))
    for bad in ([], ["a", "b"], [1.5]):
        with pytest.raises(ConfigError, match="a string or a non-empty list of token ids"):
            stream(model, bpe_tokenizer, bad)


def test_seq2seq_generate_text(bpe_tokenizer):
    model = tiny("seq2seq", **{**T5_STYLE, "vocab_size": bpe_tokenizer.vocab_size})
    texts = generate(model, bpe_tokenizer, ["今天天气真好", "hello"], max_new_tokens=6)
    assert texts == [generate(model, bpe_tokenizer, t, max_new_tokens=6) for t in ("今天天气真好", "hello")]


def test_word_level_tokenizer_and_default_special_ids():
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    words = ["<pad>", "<eos>", "the", "cat", "sat", "on", "mat", "."]
    backend = Backend(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = Tokenizer(backend, SpecialTokens(eos="<eos>", pad="<pad>"))
    answer = [words.index(w) for w in "cat sat on the mat .".split()] + [1]
    model = scripted_lm(script(answer, 1, len(words)))  # model.config.eos_token_id is None: tokenizer's
    assert generate(model, tok, "the", max_new_tokens=20) == "cat sat on the mat ."
    assert generate(model, tok, "the", max_new_tokens=20, stop="the") == "cat sat on "


# ---- errors ----------------------------------------------------------------------------------------
def test_prompt_too_long_names_the_limit():
    model = tiny(max_positions=16)
    with pytest.raises(ShapeError, match=r"10 tokens \+ max_new_tokens=7 = 17 .*max_positions=16"):
        generate_ids(model, torch.ones(1, 10, dtype=torch.long), max_new_tokens=7)
    generate_ids(model, torch.ones(1, 10, dtype=torch.long), max_new_tokens=6)  # exactly fits
    generate_ids(
        tiny(position="relative", max_positions=16), torch.ones(1, 10, dtype=torch.long), max_new_tokens=7
    )  # relative positions have no table to run out of
    with pytest.raises(ShapeError, match="max_positions=16"):
        generate_ids(tiny("seq2seq", max_positions=16), torch.ones(1, 4, dtype=torch.long), max_new_tokens=16)


def test_bad_inputs():
    model = tiny()
    with pytest.raises(ShapeError, match="outside the model's vocabulary"):
        generate_ids(model, torch.tensor([[1, 64]]))
    with pytest.raises(ShapeError, match="LEFT padding"):
        generate_ids(model, torch.tensor([[1, 2, 0]]), torch.tensor([[1, 1, 0]]))
    with pytest.raises(ConfigError, match="masked"):
        generate_ids(tiny("masked"), torch.tensor([[1, 2]]))


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(do_sample=True, temperature=0.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(num_beams=0), "num_beams"),
        (dict(num_beams=2, do_sample=True), "beam sampling not supported"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(stop=("",)), "stop"),
        (dict(temprature=0.5), 'did you mean "temperature"'),
    ],
)
def test_invalid_config(options, message):
    assert GenerationConfig(stop="x", eos_token_id=(3, 4)) == GenerationConfig(
        stop=("x",), eos_token_id=[3, 4]
    )
    with pytest.raises(ConfigError, match=message):
        generate_ids(tiny(), torch.tensor([[1, 2]]), **options)


def test_stream_rejects_beams(byte_tokenizer):
    model = tiny(vocab_size=byte_tokenizer.vocab_size)
    with pytest.raises(ConfigError, match="beam"):
        stream(model, byte_tokenizer, "hi", num_beams=2)
