"""The static KV cache and the fast decode step: the same ids as recomputing from scratch and as the
list cache of the model's forward, for every family that decodes; bf16 / int8 decode weights; weights
prepared once per model and never stale; timings in the output."""

from __future__ import annotations

import pytest
import torch

from plmkit.generation import GenerationConfig, generate_ids
from plmkit.generation import decoder as decoder_module
from plmkit.generation.engine import eligible
from plmkit.model import StaticCache, reorder_cache
from tiny import ARCHS, BART_STYLE, T5_STYLE, tiny_model

SMALL = dict(vocab_size=64, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=64, initializer_range=0.3)
UNILM = dict(pre_norm=False, embedding_norm=True, lm_head_transform=True, type_vocab_size=2)
FAMILIES = {
    "gpt2": ("causal", ARCHS["gpt2"]),
    "llama": ("causal", {k: v for k, v in ARCHS["llama"].items() if k != "family"}),
    "unilm": ("prefix", UNILM),
    "bart": ("seq2seq", BART_STYLE),
    "t5": ("seq2seq", T5_STYLE),
}
PROMPTS = [[5, 17, 3, 40, 22, 8, 9], [9, 1, 33], [12, 13, 14, 15, 16]]


def model_of(name: str, seed: int = 0):
    family, overrides = FAMILIES[name]
    overrides = {k: v for k, v in overrides.items() if k != "family"}
    return tiny_model(family, seed, **{**SMALL, **overrides})


def padded(prompts: list[list[int]], seq2seq: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padded (decoder-only) or right padded (an encoder's input), pad id 0."""
    t = max(map(len, prompts))
    pads = [[0] * (t - len(p)) for p in prompts]
    rows = [p + pad if seq2seq else pad + p for p, pad in zip(prompts, pads)]
    mask = [
        [1] * len(p) + [0] * len(pad) if seq2seq else [0] * len(pad) + [1] * len(p)
        for p, pad in zip(prompts, pads)
    ]
    return torch.tensor(rows), torch.tensor(mask)


def recompute(model, prompt: list[int], n: int) -> list[int]:
    """Greedy by re-running the whole sequence every step (no cache)."""
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


def list_cache_greedy(model, prompt: list[int], n: int) -> list[int]:
    """Greedy through the model's forward with its list cache (torch.cat per step): the ids before."""
    family, ids, new = model.config.family, torch.tensor([prompt]), []
    with torch.no_grad():
        if family == "seq2seq":
            memory = model.encode(ids)
            token, past = torch.tensor([[model.config.decoder_start_id]]), None
            for _ in range(n):
                out = model(
                    decoder_input_ids=token,
                    encoder_hidden_states=memory,
                    past_key_values=past,
                    use_cache=True,
                )
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
                new.append(int(token))
            return new
        kwargs = {"prefix_lengths": torch.tensor([len(prompt)])} if family == "prefix" else {}
        out = model(ids, use_cache=True, **kwargs)
        for _ in range(n):
            token = out.logits[:, -1:].argmax(-1)
            new.append(int(token))
            out = model(token, past_key_values=out.past_key_values, use_cache=True)
    return new


@pytest.mark.parametrize("name", list(FAMILIES))
def test_static_cache_greedy_equals_recompute_and_the_list_cache(name, monkeypatch):
    model = model_of(name)
    assert eligible(model)  # the fast step runs for every stock family
    for prompt in PROMPTS[:2]:
        fast = generate_ids(model, torch.tensor([prompt]), max_new_tokens=12)[0].tolist()
        monkeypatch.setattr(decoder_module, "FAST_STEPS", False)  # the model's forward on the static cache
        through_forward = generate_ids(model, torch.tensor([prompt]), max_new_tokens=12)[0].tolist()
        monkeypatch.setattr(decoder_module, "FAST_STEPS", True)
        assert fast == through_forward == recompute(model, prompt, 12) == list_cache_greedy(model, prompt, 12)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_batch_of_different_lengths_equals_one_by_one(name):
    model = model_of(name, seed=1)
    seq2seq = model.config.family == "seq2seq"
    ids, mask = padded(PROMPTS, seq2seq)
    batch = generate_ids(model, ids, mask, max_new_tokens=10)
    for row, prompt in enumerate(PROMPTS):
        alone = generate_ids(model, torch.tensor([prompt]), max_new_tokens=10)
        assert batch[row].tolist() == alone[0].tolist()


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5"])
def test_beam_search_reorders_the_static_cache(name, monkeypatch):
    model = model_of(name, seed=2)
    config = GenerationConfig(max_new_tokens=8, num_beams=3)
    ids, mask = padded(PROMPTS[:2], model.config.family == "seq2seq")
    fast = generate_ids(model, ids, mask, config)
    monkeypatch.setattr(decoder_module, "FAST_STEPS", False)
    assert torch.equal(fast, generate_ids(model, ids, mask, config))


def test_static_cache_reorder_and_growth():
    cache = StaticCache(1, 2, 1, 2, 3, torch.float32, torch.device("cpu"))
    k = torch.arange(8.0).view(2, 1, 2, 2)
    cache[0].write(k, -k)
    cache.advance(2)
    assert not StaticCache(1, 1, 1, 1, 1, torch.float32, torch.device("cpu")) and cache  # falsy while empty
    assert reorder_cache(cache, torch.tensor([1, 1])) is cache
    assert torch.equal(cache[0][0], k[[1, 1]]) and torch.equal(cache[0][1], -k[[1, 1]])
    cache[0].write(k, k)  # 2 + 2 columns > 3: the buffers grow, the filled columns kept
    cache.advance(2)
    assert cache.keys[0].shape[2] >= 4 and torch.equal(cache[0][0][:, :, :2], k[[1, 1]])


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a == b).float().mean())


@pytest.mark.parametrize("name", ["gpt2", "llama", "t5"])
@pytest.mark.parametrize("dtype", ["bf16", "int8"])
def test_bf16_and_int8_decode_agree_with_fp32_greedy(dtype, name):
    # d_model and d_ff multiples of 16: the int8pack kernel's inner dimension
    family, overrides = FAMILIES[name]
    overrides = {k: v for k, v in overrides.items() if k != "family"}
    model = tiny_model(
        family, 3, **{**SMALL, **overrides, "d_model": 64, "d_ff": 128, "initializer_range": 0.05}
    )
    ids, mask = padded(PROMPTS, family == "seq2seq")
    # on the CPU the KV cache and attention stay fp32 under bf16 / int8 products (weights.cache_dtype)
    decoder = decoder_module.Decoder(model, ids, mask, 4, dtype)
    assert decoder.plan.cdtype == torch.bfloat16 and decoder.cache.dtype == torch.float32
    config = GenerationConfig(max_new_tokens=32)
    full = generate_ids(model, ids, mask, config)
    low = generate_ids(model, ids, mask, config.replace(dtype=dtype))
    assert low.shape == full.shape
    # measured (gpt2, seeds 0-3): bf16 1.0 of the 96 tokens each; int8 1.0, 1.0, 0.74, 1.0 (a flip changes
    # the rest of its row); a loose bound only
    assert agreement(low, full) >= 0.5, (dtype, agreement(low, full))


def test_prepared_weights_follow_training_and_leave_the_model_alone():
    model = model_of("gpt2")
    prompt = PROMPTS[0]
    before = {name: (t.data_ptr(), t._version) for name, t in model.state_dict().items()}
    generate_ids(model, torch.tensor([prompt]), max_new_tokens=6)
    assert {name: (t.data_ptr(), t._version) for name, t in model.state_dict().items()} == before
    with torch.no_grad():  # an optimizer step: in place, the version counters move
        for p in model.parameters():
            p.mul_(-1.5)
    got = generate_ids(model, torch.tensor([prompt]), max_new_tokens=6)[0].tolist()
    assert got == recompute(model, prompt, 6)


def test_output_carries_timings():
    model = model_of("llama")
    out = generate_ids(model, torch.tensor([PROMPTS[0]]), max_new_tokens=5, return_output=True)
    assert out.ids.shape == (1, 5) and out.logprobs is None and bool(out.mask.all())
    assert out.prefill_seconds > 0 and out.decode_seconds > 0 and out.decode_steps == 4
    beam = generate_ids(model, torch.tensor([PROMPTS[0]]), max_new_tokens=5, num_beams=2, return_output=True)
    assert beam.decode_seconds > 0 and beam.mask.shape == beam.ids.shape


def test_finished_rows_checked_every_few_steps_give_the_same_ids(monkeypatch):
    from plmkit.generation import sampling

    model = model_of("gpt2")
    ids, mask = padded(PROMPTS, False)
    logits = model(ids, attention_mask=mask).logits[:, -1]
    eos = int(logits[0].argmax())  # row 0 ends at once, the others later or never
    every_step = generate_ids(model, ids, mask, max_new_tokens=12, eos_token_id=eos)
    monkeypatch.setattr(sampling, "finished_check_every", lambda device: 5)  # as on an accelerator
    assert torch.equal(generate_ids(model, ids, mask, max_new_tokens=12, eos_token_id=eos), every_step)
    single = generate_ids(model, ids[:1, -len(PROMPTS[0]) :], max_new_tokens=12, eos_token_id=eos)
    assert single.tolist() == [[eos]]  # not 5 columns: the steps after the end are dropped


def test_unknown_dtype_is_refused():
    from plmkit.errors import ConfigError

    with pytest.raises(ConfigError, match=r"dtype must be one of fp32, bf16, int8, got 'fp16'.*bf16"):
        GenerationConfig(dtype="fp16")


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_fp32_matvec_column_blocks_equal_the_linear_layer(threads, bias, monkeypatch):
    """The fp32 few-row product runs as one bmm over a column block per thread; out = 7 leaves a padded
    last block for 2 and 3 threads. Equal to the layer's own output for 1 and 5 rows."""
    from plmkit.generation.weights import prepare_linear

    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 7, bias=bias)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    product = prepare_linear(layer, "fp32", torch.float32, matvec=True)
    for rows in (1, 5):
        x = torch.randn(rows, 12)
        with torch.no_grad():
            torch.testing.assert_close(product(x), layer(x), rtol=0, atol=1e-6)


def test_int8_decode_products_call_the_kernel_directly_only_where_it_is_right():
    from plmkit.generation.weights import prepare_linear
    from plmkit.quant.formats import quantize_int8
    from plmkit.quant.modules import int8pack_product, weight_only_int8

    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 48)
    x = torch.randn(3, 32, dtype=torch.bfloat16)
    q, scale = quantize_int8(layer.weight.detach())
    direct = int8pack_product(q, scale.to(torch.bfloat16))
    assert direct is not None and torch.equal(direct(x), weight_only_int8(x, q, scale.to(torch.bfloat16)))
    product = prepare_linear(layer, "int8", torch.bfloat16, matvec=True)
    assert torch.equal(product(x), direct(x) + layer.bias.detach().to(torch.bfloat16))
    # in_features not a multiple of 16 (wrong bf16 results from the kernel in torch 2.13): the fallback
    q24, scale24 = quantize_int8(torch.randn(48, 24))
    assert int8pack_product(q24, scale24.to(torch.bfloat16)) is None
    narrow = prepare_linear(torch.nn.Linear(24, 48), "int8", torch.bfloat16, matvec=True)
    assert narrow(torch.randn(2, 24, dtype=torch.bfloat16)).shape == (2, 48)


@pytest.mark.parametrize("name", ["gpt2", "t5"])
@pytest.mark.parametrize("fast", [True, False])
def test_bf16_decoding_prefills_in_bf16_where_bf16_matmuls_are_fast(monkeypatch, name, fast):
    """--dtype bf16: the prompt's forward runs under bf16 autocast on a device with fast bf16 matmuls
    (weights.prefill_autocast), in the model's fp32 elsewhere; the cache stays fp32 on the CPU."""
    from plmkit.generation import weights

    monkeypatch.setattr(weights, "bf16_matmuls_are_fast", lambda device: fast)
    family, overrides = FAMILIES[name]
    overrides = {k: v for k, v in overrides.items() if k != "family"}
    model = tiny_model(family, 3, **{**SMALL, **overrides, "d_model": 64, "d_ff": 128}).eval()
    ids = torch.tensor([PROMPTS[0]])

    def first_logits(dtype: str, autocast: bool) -> torch.Tensor:
        decoder = decoder_module.Decoder(model, ids, None, 4, dtype)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = decoder.prefill()
        assert logits.dtype == torch.float32 and decoder.cache.dtype == torch.float32
        return logits

    fp32 = first_logits("fp32", autocast=False)
    by_hand = first_logits("fp32", autocast=True)  # the same prefill under the caller's bf16 autocast
    assert not torch.equal(fp32, by_hand)
    assert torch.equal(first_logits("bf16", autocast=False), by_hand if fast else fp32)


def test_prefill_autocast_only_for_bf16_decoding_of_an_fp32_model_on_fast_hardware(monkeypatch):
    from plmkit.generation import weights

    model = model_of("gpt2")
    monkeypatch.setattr(weights, "bf16_matmuls_are_fast", lambda device: True)
    assert isinstance(weights.prefill_autocast(model, "bf16"), torch.autocast)
    for dtype in ("fp32", "int8"):  # int8 prefills with the model's float weights, as before
        assert not isinstance(weights.prefill_autocast(model, dtype), torch.autocast)
    assert not isinstance(weights.prefill_autocast(model.to(torch.bfloat16), "bf16"), torch.autocast)
    monkeypatch.setattr(weights, "bf16_matmuls_are_fast", lambda device: False)  # emulated bf16
    assert not isinstance(weights.prefill_autocast(model_of("gpt2"), "bf16"), torch.autocast)
