"""Prefix-tuning and P-tuning v2: attention with prefix keys/values, equivalence with the base model
reading real tokens first, KV-cache decoding == full recompute, folding, learning, adapters, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file

import plmkit.peft as peft
from plmkit.errors import CheckpointError, ConfigError
from plmkit.generation import generate, generate_ids, stream
from plmkit.model import ModelConfig, SequenceClassifier, build_model, masks
from plmkit.model.attention import Attention, reference_attention
from plmkit.peft.prefix import PrefixEncoder

VOCAB = 61
TINY = dict(
    vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=48, initializer_range=0.3
)
ARCHS = {
    "gpt2": dict(family="causal"),
    "llama": dict(
        family="causal",
        position="rotary",
        norm="rmsnorm",
        gated_mlp=True,
        activation="silu",
        attention_bias=False,
        mlp_bias=False,
        n_kv_head=2,
        tie_embeddings=False,
    ),
    "bert": dict(family="masked", pre_norm=False, embedding_norm=True, final_norm=False, type_vocab_size=2),
    "unilm": dict(family="prefix"),
    "bart": dict(
        family="seq2seq",
        pre_norm=False,
        embedding_norm=True,
        final_norm=False,
        position_offset=2,
        decoder_start_token_id=2,
    ),
    "t5": dict(
        family="seq2seq",
        position="relative",
        norm="rmsnorm",
        norm_bias=False,
        attention_bias=False,
        mlp_bias=False,
        gated_mlp=True,
        attention_scale=1.0,
        tied_output_scale=True,
        n_kv_head=2,
    ),
}
S = [5, 9, 11, 7]  # the real tokens a prefix is made of (P = 4)
P = len(S)


def make(arch: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**{**TINY, **ARCHS[arch], **overrides})).eval()


def batch(length: int = 7, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, length), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # right padding
    return ids, mask


def ones(n: int = P) -> torch.Tensor:
    return torch.ones(2, n, dtype=torch.long)


def with_s(ids: torch.Tensor) -> torch.Tensor:
    return torch.cat((torch.tensor([S, S]), ids), dim=1)


@torch.no_grad()
def logits(model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    if model.config.family == "seq2seq":
        decoder_ids = torch.tensor([[2, 7, 3, 9, 4], [2, 8, 5, 6, 11]])
        return model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
    kwargs = {"prefix_lengths": torch.tensor([3, 4])} if model.config.family == "prefix" else {}
    return model(ids, attention_mask=mask, **kwargs).logits


def perturb(model, std: float = 0.5) -> None:
    """Stand-in for training: move every PEFT parameter."""
    with torch.no_grad():
        for name in peft.peft_parameter_names(model):
            param = model.get_parameter(name)
            param.add_(torch.randn_like(param) * std)


# ---- the attention itself ---------------------------------------------------------------------------
def split_heads(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    b, t, _ = x.shape
    q_width, kv_width = attn.n_head * attn.head_dim, attn.n_kv_head * attn.head_dim
    q, k, v = attn.qkv(x).split([q_width, kv_width, kv_width], dim=-1)
    return tuple(z.view(b, t, -1, attn.head_dim).transpose(1, 2) for z in (q, k, v))


MASK_CASES = ["none", "sdpa-causal", "padding-causal", "bias", "boolean", "cached", "cross"]


@pytest.mark.parametrize("case", MASK_CASES)
def test_attention_sees_the_prefix_in_every_row_whatever_the_mask(case):
    """softmax(Q[Kp; K]ᵀ + [0 | M])[Vp; V]: the prefix columns get 0 (no position bias) and are never
    masked, SDPA's causal fast path becomes a bottom-right causal mask, and the cache keeps real keys only."""
    torch.manual_seed(0)
    config = ModelConfig(**{**TINY, "n_kv_head": 2})
    attn = Attention(config, cross=case == "cross").eval()
    b, t, n_kv, hd = 2, 5, 2, config.dim_per_head
    x = torch.randn(b, t, config.d_model)
    prefix = (torch.randn(1, n_kv, 3, hd), torch.randn(1, n_kv, 3, hd))
    past = 0
    cache = memory = mask = None
    is_causal = False
    pad = torch.ones(b, t, dtype=torch.long)
    pad[0, :2] = 0
    if case == "sdpa-causal":
        is_causal = True
        full = masks.to_additive(masks.causal(t, t), x.dtype)
    elif case == "padding-causal":
        mask = full = masks.to_additive(masks.causal(t, t) & masks.padding(pad), x.dtype)
    elif case == "bias":  # T5: a relative bias per head plus the causal mask
        mask = full = torch.randn(1, config.n_head, t, t) + masks.to_additive(masks.causal(t, t), x.dtype)
    elif case == "boolean":
        mask = masks.causal(t, t) & masks.padding(pad)
        full = masks.to_additive(mask, x.dtype)
    elif case == "cached":  # 2 new queries after 3 cached positions
        past = 3
        cache = (torch.randn(b, n_kv, past, hd), torch.randn(b, n_kv, past, hd))
        mask = full = masks.to_additive(masks.causal(t, past + t, past), x.dtype)
    elif case == "cross":
        memory = torch.randn(b, 6, config.d_model)
        mask = full = masks.to_additive(masks.padding(torch.tensor([[1] * 6, [1] * 4 + [0] * 2])), x.dtype)
    with torch.no_grad():
        got, new_cache = attn(x, mask, cache=cache, memory=memory, is_causal=is_causal, prefix=prefix)
        _, plain_cache = attn(x, mask, cache=cache, memory=memory, is_causal=is_causal)
        if case == "cross":
            q = attn.q(x).view(b, t, -1, hd).transpose(1, 2)
            k, v = (z.view(b, 6, -1, hd).transpose(1, 2) for z in attn.kv(memory).chunk(2, dim=-1))
        else:
            q, k, v = split_heads(attn, x)
        if cache is not None:
            k, v = torch.cat((cache[0], k), dim=2), torch.cat((cache[1], v), dim=2)
        keys = torch.cat((prefix[0].expand(b, -1, -1, -1), k), dim=2)
        values = torch.cat((prefix[1].expand(b, -1, -1, -1), v), dim=2)
        full = None if case == "none" else torch.cat((torch.zeros(*full.shape[:-1], 3), full), dim=-1)
        y = reference_attention(q, keys, values, full)
        expected = attn.out(y.transpose(1, 2).reshape(b, t, -1))
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    for ours, plain in zip(new_cache, plain_cache):  # the cache holds the real keys/values only
        assert torch.equal(ours, plain)


# ---- the model: a prefix acts as extra keys/values, nothing else -------------------------------------
def see_s_then(x_allowed: torch.Tensor) -> torch.Tensor:
    """A (B, P+T_q, P+T_k) mask for the base reading S then x: S sees only S (as when the prefix was made
    from it), x sees all of S and whatever x_allowed (B, T_q, T_k) allows within x."""
    b, t_q, t_k = x_allowed.shape
    allowed = torch.zeros(b, P + t_q, P + t_k, dtype=torch.bool)
    allowed[:, :, :P] = True
    allowed[:, P:, P:] = x_allowed
    return allowed


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert", "unilm", "bart", "seq-cls"])
def test_a_prefix_made_of_real_tokens_equals_the_base_reading_them_first(arch):
    """P-tuning v2 initialised from S holds the keys/values the frozen base computes for S; so the tuned
    model on x (positions starting at P) computes what the base computes on S + x, in every layer and
    family (learned and rotary positions, GQA, padding, prefix-LM and bidirectional masks, encoder,
    decoder self- and cross-attention, a classifier head)."""
    position_free = arch in ("bart", "seq-cls")  # no position_ids argument to shift: use no positions
    extra = dict(position="none") if position_free else {}
    base = make("gpt2" if arch == "seq-cls" else arch, **extra)
    if arch == "seq-cls":
        torch.manual_seed(0)
        base = SequenceClassifier(base.config, num_labels=3, pooling="last").eval()
    tuned = peft.apply(copy.deepcopy(base), "prefix", projection=False, n_tokens=P, init_ids=S)
    ids, mask = batch()
    t = ids.shape[1]
    positions = (P + torch.arange(t)).expand(2, t)
    with torch.no_grad():
        if arch in ("gpt2", "llama"):
            for m in (None, mask):  # SDPA's causal fast path, and an explicit padded mask
                got = tuned(ids, attention_mask=m, position_ids=positions).logits
                full_mask = None if m is None else torch.cat((ones(), m), dim=1)
                want = base(with_s(ids), attention_mask=full_mask).logits[:, P:]
                assert torch.allclose(got, want, atol=1e-5, rtol=0)
            return
        if arch == "bert":
            got = tuned(ids, attention_mask=mask, position_ids=positions).logits
            x_allowed = masks.padding(mask)[:, 0].expand(2, t, t)
            want = base(with_s(ids), attention_mask=see_s_then(x_allowed)).logits[:, P:]
        elif arch == "unilm":
            lengths = torch.tensor([3, 4])
            got = tuned(ids, attention_mask=mask, position_ids=positions, prefix_lengths=lengths).logits
            x_allowed = (masks.prefix(lengths, t, t) & masks.padding(mask))[:, 0]
            want = base(with_s(ids), attention_mask=see_s_then(x_allowed)).logits[:, P:]
        elif arch == "seq-cls":
            got = tuned(ids, attention_mask=mask).logits
            want = base(with_s(ids), attention_mask=torch.cat((ones(), mask), dim=1)).logits
        else:  # bart: encoder prefix, decoder self-attention prefix, cross-attention prefix
            decoder_ids = torch.tensor([[2, 7, 3, 9, 4], [2, 8, 5, 6, 11]])
            memory = tuned.encode(ids, mask)
            base_memory = base.encode(with_s(ids), see_s_then(masks.padding(mask)[:, 0].expand(2, t, t)))
            assert torch.allclose(memory, base_memory[:, P:], atol=1e-5, rtol=0)
            got = tuned(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
            # the decoder's S rows cross-attend to the encoder's S rows only, as when the prefix was made
            cross = see_s_then(masks.padding(mask)[:, 0].expand(2, 5, t))
            want = base(
                encoder_hidden_states=base_memory, attention_mask=cross, decoder_input_ids=with_s(decoder_ids)
            ).logits[:, P:]
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_outputs_change_only_through_the_prefix_and_the_base_stays_frozen():
    base = make("gpt2")
    ids, mask = batch()
    expected = logits(base, ids, mask)
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = peft.apply(base, "prefix", n_tokens=3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "transformer.prefix_encoder.embedding",
        "transformer.prefix_encoder.mlp.0.weight",
        "transformer.prefix_encoder.mlp.0.bias",
        "transformer.prefix_encoder.mlp.2.weight",
        "transformer.prefix_encoder.mlp.2.bias",
    }
    assert (logits(model, ids, mask) - expected).abs().max() > 1e-3  # a random prefix is attended to
    model.train()
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    assert all(model.get_parameter(n).grad.abs().sum() > 0 for n in trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)
    for name, param in model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name


# ---- decoding with the KV cache ----------------------------------------------------------------------
def naive_greedy(model, ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Reference: re-run the whole (left-padded) sequence at every step, no cache."""
    new = torch.empty(ids.shape[0], 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(n):
            if model.config.family == "seq2seq":
                start = torch.full((ids.shape[0], 1), model.config.decoder_start_id)
                out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=torch.cat((start, new), 1))
            else:
                full_mask = torch.cat((mask, torch.ones_like(new)), dim=1)
                positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
                out = model(torch.cat((ids, new), 1), attention_mask=full_mask, position_ids=positions)
            new = torch.cat((new, out.logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    return new


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bart", "t5"])
def test_kv_cache_decoding_with_a_prefix_equals_full_recompute(arch):
    model = peft.apply(make(arch), "prefix", n_tokens=3, hidden=16)
    perturb(model)
    ids, mask = batch(length=8, seed=3)
    seq2seq = model.config.family == "seq2seq"
    with torch.no_grad():
        if seq2seq:
            decoder_ids = torch.randint(3, VOCAB, (2, 6), generator=torch.Generator().manual_seed(4))
            full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids).logits
            memory = model.encode(ids, mask)
            past, steps = None, []
            for i in range(decoder_ids.shape[1]):
                out = model(
                    encoder_hidden_states=memory,
                    attention_mask=mask,
                    use_cache=True,
                    decoder_input_ids=decoder_ids[:, i : i + 1],
                    past_key_values=past,
                )
                past = out.past_key_values
                steps.append(out.logits)
            assert past[0][2].shape[2] == ids.shape[1]  # the cross cache holds the real encoder keys
        else:
            mask = mask.flip(1)  # left padding, as for generation
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            full = model(ids, attention_mask=mask, position_ids=positions).logits
            out = model(ids[:, :4], attention_mask=mask[:, :4], position_ids=positions[:, :4], use_cache=True)
            past, steps = out.past_key_values, [out.logits]
            for i in range(4, ids.shape[1]):
                out = model(
                    ids[:, i : i + 1],
                    attention_mask=mask[:, : i + 1],
                    use_cache=True,
                    position_ids=positions[:, i : i + 1],
                    past_key_values=past,
                )
                past = out.past_key_values
                steps.append(out.logits)
        assert past[0][0].shape[2] == (6 if seq2seq else ids.shape[1])  # real tokens only, no prefix
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5, rtol=0)
    if not seq2seq:
        ids, mask = ids[:, :6], mask[:, :6]
    assert torch.equal(generate_ids(model, ids, mask, max_new_tokens=6), naive_greedy(model, ids, mask, 6))


@pytest.fixture(scope="module")
def tokenizer():
    from plmkit.tokenizer import Tokenizer

    return Tokenizer.train_bpe(["the quick brown fox jumps over the lazy dog " * 20], vocab_size=300)


def test_greedy_sampling_beam_and_streaming_with_a_prefix_match_the_base_reading_it_first(tokenizer):
    """Without positions, a P-tuning v2 prefix made of S is exactly S read first: every decoding mode of
    the tuned model on x (batched, left padded) gives the base model's ids on S + x."""
    base = make("gpt2", position="none", vocab_size=tokenizer.vocab_size)
    tuned = peft.apply(copy.deepcopy(base), "prefix", projection=False, n_tokens=P, init_ids=S)
    ids = torch.randint(3, tokenizer.vocab_size, (2, 5), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding
    for options in (dict(), dict(do_sample=True, top_k=20, seed=3), dict(num_beams=3)):
        got = generate_ids(tuned, ids, mask, max_new_tokens=7, **options)
        want = generate_ids(base, with_s(ids), torch.cat((ones(), mask), dim=1), max_new_tokens=7, **options)
        assert torch.equal(got, want), options
    pieces = list(stream(tuned, tokenizer, "the quick", max_new_tokens=8))
    assert "".join(pieces) == generate(tuned, tokenizer, "the quick", max_new_tokens=8)


# ---- folding and the inference shortcut ------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_fold_keeps_the_outputs_and_drops_the_mlp(arch):
    model = peft.apply(make(arch), "prefix", n_tokens=3, hidden=16)
    perturb(model)
    ids, mask = batch()
    expected = logits(model, ids, mask)
    peft.fold(model)
    assert torch.allclose(logits(model, ids, mask), expected, atol=1e-6, rtol=0)
    names = peft.peft_parameter_names(model)
    assert names and all(n.endswith("prefix_encoder.key_values") for n in names)
    assert model.peft_config.options["projection"] is False
    layers = model.config.n_layer
    shapes = {n: tuple(model.get_parameter(n).shape) for n in names}
    hd = model.config.dim_per_head
    if arch == "t5":
        assert shapes == {
            "encoder.prefix_encoder.key_values": (layers, 2, 2, 3, hd),
            "decoder.prefix_encoder.key_values": (layers, 4, 2, 3, hd),
        }
    else:
        assert shapes == {"transformer.prefix_encoder.key_values": (layers, 2, 2, 3, hd)}


def test_without_gradients_the_mlp_runs_once_until_a_weight_changes():
    model = peft.apply(make("gpt2"), "prefix", n_tokens=3)
    calls = []
    model.transformer.prefix_encoder.mlp.register_forward_hook(lambda *_: calls.append(1))
    ids, mask = batch()
    first = logits(model, ids, mask)
    assert torch.equal(logits(model, ids, mask), first) and len(calls) == 1  # reused
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(ids, labels=ids).loss.backward()  # with gradients: always computed afresh
    optimizer.step()
    assert len(calls) == 2
    after = logits(model, ids, mask)  # the step changed the MLP: computed again
    assert len(calls) == 3 and (after - first).abs().max() > 1e-4
    assert torch.allclose(after, model(ids, attention_mask=mask).logits.detach(), atol=1e-6, rtol=0)


# ---- learning, with the base frozen ----------------------------------------------------------------
LEARN = {
    "prefix-gpt2": ("gpt2", dict(n_tokens=4), 3e-2, "next"),
    "prefix-bart": ("bart", dict(n_tokens=4), 1e-2, "recall"),
    "ptuning_v2-llama": ("llama", dict(n_tokens=4, projection=False), 1e-1, "recall"),
    "ptuning_v2-bert-classifier": (
        "bert",
        dict(n_tokens=4, projection=False, train_head=False),
        1e-1,
        "classify",
    ),
}


@pytest.mark.parametrize("name", list(LEARN))
def test_prefix_and_ptuning_v2_learn_a_tiny_task_with_the_base_frozen(name):
    arch, options, lr, task = LEARN[name]
    torch.manual_seed(0)
    base = make(arch)
    if task == "classify":  # the classifier head stays frozen too: only the prefix can learn
        torch.manual_seed(0)
        base = SequenceClassifier(base.config, num_labels=2)
    model = peft.apply(base.train(), "prefix", **options)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    assert all(".prefix_encoder." in n for n, p in model.named_parameters() if p.requires_grad)
    start = torch.randint(3, VOCAB, (8, 1), generator=torch.Generator().manual_seed(2))
    if task == "recall":  # one sequence to produce whatever the input: what a prefix can encode
        ids = (start[:1] * 7 + torch.arange(12) * 5).expand(8, 12) % VOCAB
    else:  # each next token is the current one + 1
        ids = (start + torch.arange(12)) % VOCAB
    inputs = {"input_ids": ids, "labels": ids}
    if task == "classify":
        inputs["labels"] = (start[:, 0] > VOCAB // 2).long()
    elif arch == "bart":
        inputs = {
            "input_ids": torch.randint(3, VOCAB, (8, 6), generator=torch.Generator().manual_seed(3)),
            "labels": ids[:, :8],
        }
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(40):
        loss = model(**inputs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), f"{n} changed"


# ---- adapters ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("projection", [True, False])
def test_the_adapter_holds_the_folded_prefixes_and_reloads_exactly(projection, tmp_path):
    model = peft.apply(make("t5"), "prefix", n_tokens=3, projection=projection)
    perturb(model)
    ids, mask = batch()
    expected = logits(model, ids, mask)
    peft.save_adapter(model, tmp_path / "a")
    tensors = load_file(tmp_path / "a" / "adapter_model.safetensors")
    hd = model.config.dim_per_head
    assert {n: tuple(t.shape) for n, t in tensors.items()} == {
        "encoder.prefix_encoder.key_values": (2, 2, 2, 3, hd),
        "decoder.prefix_encoder.key_values": (2, 4, 2, 3, hd),
    }
    assert hasattr(model.encoder.prefix_encoder, "mlp") == projection  # saving did not fold the model
    loaded = peft.load_adapter(make("t5"), tmp_path / "a")
    assert loaded.peft_config.options["projection"] is False
    assert torch.allclose(logits(loaded, ids, mask), expected, atol=1e-6, rtol=0)
    # onto a model that carries the MLP: it is folded to take the prefixes
    again = peft.load_adapter(peft.apply(make("t5"), "prefix", n_tokens=3), tmp_path / "a")
    assert torch.allclose(logits(again, ids, mask), expected, atol=1e-6, rtol=0)


def test_a_prefix_adapter_on_a_base_of_another_shape_is_a_clear_error(tmp_path):
    peft.save_adapter(peft.apply(make("llama"), "prefix", n_tokens=3), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"n_kv_head=2 \(this base: 4\)"):
        peft.load_adapter(make("llama", n_kv_head=4), tmp_path / "a")
    with pytest.raises(CheckpointError, match=r"n_layer=2 \(this base: 3\)"):
        peft.load_adapter(make("llama", n_layer=3), tmp_path / "a")
    header = (tmp_path / "a" / "adapter_config.json").read_text().replace('"n_tokens": 3', '"n_tokens": 5')
    (tmp_path / "a" / "adapter_config.json").write_text(header)
    with pytest.raises(
        CheckpointError, match=r"has shape \[2, 2, 2, 3, 8\] but the model expects \[2, 2, 2, 5, 8\]"
    ):
        peft.load_adapter(make("llama"), tmp_path / "a")


# ---- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "words"),
    [
        (dict(n_token=3), 'did you mean "n_tokens"'),
        (dict(n_tokens=0), "positive integer"),
        (dict(hidden=0), "hidden must be a positive integer"),
        (dict(init_ids=[3, 4]), "use projection=false"),
        (dict(projection=False, init_text="hello"), "needs the tokenizer"),
        (dict(projection=False, init_ids=[VOCAB]), r"init_ids must be token ids in \[0, 61\)"),
    ],
)
def test_bad_prefix_options_are_refused(options, words):
    with pytest.raises(ConfigError, match=words):
        peft.apply(make("gpt2"), "prefix", **options)


def test_ptuning_v2_by_name_points_to_prefix_and_one_method_per_model():
    with pytest.raises(ConfigError, match="method 'prefix' with projection=False"):
        peft.apply(make("gpt2"), "ptuning_v2")
    model = peft.apply(make("gpt2"), "prefix", n_tokens=2)
    with pytest.raises(ConfigError, match="already carries prefix"):
        peft.apply(model, "lora")
    assert isinstance(model.transformer.prefix_encoder, PrefixEncoder)
    with pytest.raises(ConfigError, match="only LoRA can be merged"):
        peft.merge(model)
