"""int8 / NF4 quantization (plmkit.quant): the formats' error bounds, the layers against their float
reference, the kernels against the dequantized reference, a trained model's perplexity and checkpoint size,
save / load round trips, and the errors a user can meet."""

from __future__ import annotations

import copy
import io
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import plmkit
import train_helpers as h
from plmkit.errors import CheckpointError, ConfigError
from plmkit.model import build_model
from plmkit.quant import QuantLinear, QuantSpec, formats, modules, quantize

GPT = h.ROOT / "recipes" / "gpt-clm.yaml"
MODES = ("int8", "int8-dynamic", "nf4")


def tiny(preset: str = "gpt2-tiny", **overrides):
    torch.manual_seed(0)
    sizes = dict(vocab_size=256, d_model=64, n_layer=2, n_head=4, d_ff=128, dropout=0.0, max_positions=64)
    return build_model(preset, **{**sizes, **overrides}).eval()


# ---- formats --------------------------------------------------------------------------------------
def test_int8_per_channel_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    w = torch.randn(48, 80) * torch.logspace(-3, 1, 48)[:, None]  # rows of very different ranges
    w[5] = 0.0  # an all-zero row
    q, scale = formats.quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (48,) and scale.dtype == torch.float32
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127  # symmetric: -128 unused
    assert torch.allclose(scale[torch.arange(48) != 5], w.abs().amax(1)[torch.arange(48) != 5] / 127)
    error = (formats.dequantize_int8(q, scale) - w).abs()
    assert (error <= scale[:, None] / 2 * (1 + 1e-6)).all()  # half a quantization step, per row
    assert error[5].max() == 0 and (q[5] == 0).all()
    q16, scale16 = formats.quantize_int8(w.bfloat16())
    assert scale16.dtype == torch.bfloat16  # scales follow the model's float dtype


def test_nf4_levels_and_blockwise_error():
    levels = formats.NF4_LEVELS
    assert levels.shape == (16,) and (levels[1:] > levels[:-1]).all()
    assert levels[0] == -1 and levels[-1] == 1 and (levels == 0).sum() == 1
    # QLoRA's published values (bitsandbytes' table), e.g. the second and the second-to-last level
    assert levels[1].item() == pytest.approx(-0.6961928009986877, abs=1e-6)
    assert levels[-2].item() == pytest.approx(0.7229568362236023, abs=1e-6)
    torch.manual_seed(0)
    w = torch.randn(10, 50)  # 500 elements: the last of 8 blocks is padded
    packed, absmax = formats.quantize_nf4(w)
    assert packed.dtype == torch.uint8 and packed.numel() == 8 * 64 // 2 and absmax.shape == (8,)
    back = formats.dequantize_nf4(packed, absmax, (10, 50))
    blocks = torch.cat((w.reshape(-1), w.new_zeros(12))).view(8, 64)
    assert torch.allclose(absmax, blocks.abs().amax(1))
    half_gap = (levels[1:] - levels[:-1]).max() / 2  # rounding to the nearest level
    error = (back - w).abs().reshape(-1)
    bound = (absmax[:, None] * half_gap).expand(8, 64).reshape(-1)[:500]
    assert (error <= bound + 1e-6).all()
    assert back.reshape(-1)[w.reshape(-1).abs().argmax()].abs() == w.abs().max()  # absmax is exact


def test_nf4_layout_is_bitsandbytes_layout():
    bf = pytest.importorskip("bitsandbytes.functional")
    torch.manual_seed(1)
    w = torch.randn(32, 128)
    packed, absmax = formats.quantize_nf4(w)
    theirs, state = bf.quantize_4bit(w, blocksize=64, quant_type="nf4")
    assert torch.equal(packed, theirs.reshape(-1))
    assert torch.allclose(absmax, state.absmax)
    assert torch.allclose(formats.NF4_LEVELS, state.code.float(), atol=2e-7)


# ---- layers and kernels ---------------------------------------------------------------------------
def test_quantized_linear_close_to_float_within_the_documented_bound():
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 96)
    x = torch.randn(3, 5, 64)
    reference = linear(x)
    for spec, tolerance in (
        (QuantSpec("int8"), 0.02),
        (QuantSpec("int8", "dynamic"), 0.02),
        (QuantSpec("nf4"), 0.2),
    ):
        q = QuantLinear.from_linear(linear, spec)
        y = q(x)
        assert y.shape == (3, 5, 96) and y.dtype == torch.float32
        # relative to the output's scale: int8 ≈ 1/254 of each row's range per weight, nf4 ~8x coarser
        assert (y - reference).abs().max() / reference.abs().max() < tolerance, spec


def test_int8pack_kernel_equals_the_dequantized_reference():
    torch.manual_seed(0)
    q, scale = formats.quantize_int8(torch.randn(96, 64))
    for dtype in (torch.bfloat16, torch.float32):
        x = torch.randn(7, 64, dtype=dtype)
        y = modules.weight_only_int8(x, q, scale)
        assert y.dtype == dtype
        # the kernel runs in bf16 (fp32 inputs are rounded to bf16 first); reference: same inputs, fp32 maths
        reference = x.bfloat16().float() @ formats.dequantize_int8(q, scale, torch.float32).t()
        assert torch.allclose(y.float(), reference, rtol=2**-7, atol=2**-7 * reference.abs().max().item())


def test_int8pack_is_used_only_where_it_is_right():
    """torch 2.13's bf16 _weight_int8pack_mm is wrong unless in_features % 16 == 0 (and crashes for some):
    other widths take the dequantize-then-matmul path and still match the reference."""
    torch.manual_seed(0)
    for n_in in (24, 50, 100):
        q, scale = formats.quantize_int8(torch.randn(30, n_in))
        x = torch.randn(5, n_in)
        reference = x @ formats.dequantize_int8(q, scale).t()
        assert torch.allclose(modules.weight_only_int8(x, q, scale), reference, atol=1e-5), n_in


def test_weight_only_falls_back_to_dequantize_then_matmul(monkeypatch):
    torch.manual_seed(0)
    q, scale = formats.quantize_int8(torch.randn(32, 48))
    x = torch.randn(4, 48)
    monkeypatch.setattr(modules, "_UNSUPPORTED", {("int8pack", "cpu", torch.bfloat16)})
    y = modules.weight_only_int8(x, q, scale)
    assert torch.allclose(y, x @ formats.dequantize_int8(q, scale).t(), atol=1e-6)


def test_int8pack_probe_remembers_a_kernel_that_does_not_run(monkeypatch):
    """int8pack_product probes the kernel once: where it raises (no such kernel for the device / dtype),
    None (decoding falls back to weight_only_int8) and the failure is remembered, as weight_only_int8 does."""
    q, scale = formats.quantize_int8(torch.randn(32, 48))
    calls = []

    def missing(*args):
        calls.append(args)
        raise NotImplementedError("no int8pack kernel here")

    monkeypatch.setattr(modules, "_UNSUPPORTED", set())
    monkeypatch.setattr(torch, "_weight_int8pack_mm", missing)
    assert modules.int8pack_product(q, scale.to(torch.bfloat16)) is None
    assert modules._UNSUPPORTED == {("int8pack", "cpu", torch.bfloat16)} and len(calls) == 1
    assert (
        modules.int8pack_product(q, scale.to(torch.bfloat16)) is None and len(calls) == 1
    )  # not probed again
    x = torch.randn(4, 48)
    assert torch.allclose(
        modules.weight_only_int8(x, q, scale), x @ formats.dequantize_int8(q, scale).t(), atol=1e-6
    )


def test_dynamic_int8_is_int8_times_int8_with_int32_accumulation():
    torch.manual_seed(0)
    q, scale = formats.quantize_int8(torch.randn(40, 72))
    x = torch.randn(6, 72) * 3
    xq, x_scale = modules.quantize_rows(x)
    assert xq.dtype == torch.int8 and x_scale.shape == (6,)
    assert ((xq.float() * x_scale[:, None] - x).abs() <= x_scale[:, None] / 2 + 1e-6).all()
    exact = (xq.long() @ q.long().t()).double() * x_scale.double()[:, None] * scale.double()[None]
    assert torch.allclose(modules._dynamic_int8(x, q, scale).double(), exact, rtol=1e-6, atol=1e-6)


def test_gradients_reach_the_input_not_the_frozen_weights():
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 24)
    for spec in (QuantSpec("int8"), QuantSpec("int8", "dynamic"), QuantSpec("nf4")):
        q = QuantLinear.from_linear(linear, spec)
        x = torch.randn(5, 32, requires_grad=True)
        q(x).square().sum().backward()
        # d(Σy²)/dx = 2y · W with W dequantized (straight-through for dynamic mode's activation rounding)
        expected = (2 * q(x.detach())) @ modules.dequantize_weight(q)
        assert torch.allclose(x.grad, expected, atol=1e-5), spec
        assert all(not p.requires_grad and p.grad is None for p in q.parameters())


def test_backward_dequantizes_in_row_chunks(monkeypatch):
    """The backward never holds a whole float weight: chunks of rows (NF4: block-aligned) give the same grad."""
    torch.manual_seed(0)
    for n_in, n_out in ((48, 100), (100, 90)):
        linear = torch.nn.Linear(n_in, n_out)
        for spec in (QuantSpec("int8"), QuantSpec("nf4")):
            q = QuantLinear.from_linear(linear, spec)
            chunks = modules.row_chunks(q, max_elements=500)
            assert len(chunks) > 1 and chunks[0].start == 0 and chunks[-1].stop == n_out
            parts = torch.cat([modules.dequantize_weight(q, rows=rows) for rows in chunks])
            assert torch.equal(parts, modules.dequantize_weight(q))
            x = torch.randn(3, n_in, requires_grad=True)
            q(x).sum().backward()
            whole = x.grad.clone()
            x.grad = None
            monkeypatch.setattr(modules, "row_chunks", lambda m, chunks=chunks: chunks)
            q(x).sum().backward()
            monkeypatch.undo()
            assert torch.allclose(x.grad, whole, atol=1e-6)


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny", "bert-tiny", "bart-base"])
def test_quantize_every_family_and_reload_exactly(preset, tmp_path):
    extra = (
        {"n_kv_head": 2}
        if preset == "llama-tiny"
        else {"n_decoder_layer": 1}
        if preset == "bart-base"
        else {}
    )
    model = tiny(preset, **extra)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "labels": ids, "compute_logits": True}  # the loss and the logits
    with torch.no_grad():
        reference = model(**inputs).logits
    for mode in MODES:
        q = quantize(copy.deepcopy(model), mode)
        assert not any(isinstance(m, torch.nn.Linear) for n, m in q.named_modules() if ".blocks." in f".{n}")
        with torch.no_grad():
            logits = q(**inputs).logits
        assert (logits - reference).abs().max() < (
            0.15 if mode == "nf4" else 0.03
        ) * reference.abs().max() + 0.02
        plmkit.save(q, None, tmp_path / mode)
        loaded, _ = plmkit.load(tmp_path / mode)
        assert loaded.quant_config == q.quant_config
        with torch.no_grad():
            assert torch.equal(loaded(**inputs).logits, logits)


def test_a_bf16_quantized_model_stays_bf16_through_a_checkpoint(tmp_path):
    model = tiny()
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(ids).logits
    q = quantize(copy.deepcopy(model).to(torch.bfloat16), "int8")
    assert q.transformer.blocks[0].mlp.fc_in.weight_scale.dtype == torch.bfloat16
    with torch.no_grad():
        logits = q(ids).logits
    assert logits.dtype == torch.bfloat16 and (logits.float() - reference).abs().max() < 0.05
    plmkit.save(q, None, tmp_path / "bf16")
    loaded, _ = plmkit.load(tmp_path / "bf16")
    assert loaded.transformer.embed.tokens.weight_scale.dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, logits)


def test_checkpoint_stores_integers_and_the_tied_head_once(tmp_path):
    model = quantize(tiny(), "int8")
    head, tokens = model.lm_head.decoder, model.transformer.embed.tokens
    assert head.weight is tokens.weight and head.weight_scale is tokens.weight_scale  # one int8 table
    plmkit.save(model, None, tmp_path / "q")
    header = json.loads((tmp_path / "q" / "plmkit.json").read_text())
    assert header["quantization"] == {
        "mode": "int8",
        "embeddings": True,
        "backend": "torch",
        "block_size": 64,
    }
    with safe_open(str(tmp_path / "q" / "model.safetensors"), "pt") as f:
        dtypes = {name: f.get_slice(name).get_dtype() for name in f.keys()}
        tied = json.loads(f.metadata()["tied"])
    assert dtypes["transformer.blocks.0.attn.qkv.weight"] == "I8"
    assert dtypes["transformer.blocks.0.attn.qkv.weight_scale"] == "F32"
    assert dtypes["transformer.embed.tokens.weight"] == "I8"
    assert tied["lm_head.decoder.weight"] == "transformer.embed.tokens.weight"
    loaded, _ = plmkit.load(tmp_path / "q")
    assert loaded.lm_head.decoder.weight is loaded.transformer.embed.tokens.weight
    nf4 = quantize(tiny(), "nf4")
    plmkit.save(nf4, None, tmp_path / "nf4")
    with safe_open(str(tmp_path / "nf4" / "model.safetensors"), "pt") as f:
        assert f.get_slice("transformer.blocks.0.mlp.fc_in.weight").get_dtype() == "U8"


def test_embeddings_false_keeps_the_tables_and_the_head_in_float():
    model = quantize(tiny(), "int8", embeddings=False)
    assert isinstance(model.transformer.embed.tokens, torch.nn.Embedding)
    assert isinstance(model.lm_head.decoder, torch.nn.Linear)
    assert model.lm_head.decoder.weight is model.transformer.embed.tokens.weight  # still tied
    full = plmkit.quant.report(quantize(tiny(), "int8"))
    partial = plmkit.quant.report(model)
    assert partial.embeddings == 0 and partial.linears == full.linears - 1  # the tied head
    assert partial.float_bytes == full.float_bytes and partial.ratio < full.ratio


def test_generation_on_a_quantized_model_and_the_lm_head_decoding_path():
    from plmkit.generation import generate_ids

    model = tiny()
    ids = torch.randint(0, 256, (2, 6), generator=torch.Generator().manual_seed(3))
    float_ids = generate_ids(model, ids, max_new_tokens=8, eos_token_id=[])
    assert model.lm_head.transposed_weight() is not None  # the float head decodes with a (C, V) copy
    q = quantize(model, "int8")
    assert q.lm_head.transposed_weight() is None  # the int8 head has its own kernel: no float copy
    out = generate_ids(q, ids, max_new_tokens=8, eos_token_id=[])
    assert out.shape == float_ids.shape == (2, 8)
    # greedy decoding through the KV cache matches full recomputation of the quantized model
    full = torch.cat((ids, out), dim=1)
    with torch.no_grad():
        logits = q(full).logits[:, ids.shape[1] - 1 : -1]
    assert torch.equal(logits.argmax(-1), out)


def test_a_quantized_model_is_frozen_and_cannot_be_trained_directly():
    from plmkit.train.config import OptimConfig
    from plmkit.train.optim import build_optimizer

    model = quantize(tiny(), "int8")
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(ConfigError, match="quantized.*cannot be trained.*LoRA"):
        build_optimizer(model, OptimConfig(), torch.device("cpu"))
    with pytest.raises(RuntimeError):  # an int8 tensor can never require a gradient
        model.transformer.blocks[0].attn.qkv.weight.requires_grad_(True)


def test_errors_name_the_problem():
    model = tiny()
    with pytest.raises(ConfigError, match=r"unknown quantization mode 'int4' \(did you mean \"int8\"\?\)"):
        quantize(model, "int4")
    with pytest.raises(ConfigError, match="unknown quantization backend"):
        quantize(model, "int8", backend="cuda")
    with pytest.raises(ConfigError, match="int8-dynamic has no bitsandbytes kernel"):
        quantize(model, "int8-dynamic", backend="bitsandbytes")
    quantize(model, "nf4")
    with pytest.raises(ConfigError, match=r"already quantized \(nf4\)"):
        quantize(model, "int8")
    lora = plmkit.peft.apply(tiny(), "lora")
    with pytest.raises(ConfigError, match="before applying PEFT"):
        quantize(lora, "int8")
    with pytest.raises(ConfigError, match="no Linear layers inside transformer blocks"):
        quantize(_no_blocks(), "int8")


def _no_blocks():
    module = torch.nn.Linear(4, 4)
    module.config = tiny().config  # looks like a plmkit model, but has no blocks
    return module


def test_save_hf_refuses_and_dequantize_gives_a_float_model(tmp_path):
    model = tiny()
    q = quantize(copy.deepcopy(model), "int8")
    with pytest.raises(CheckpointError, match="quantized.*dequantize"):
        plmkit.save_hf(q, None, tmp_path / "hf")
    ids = torch.randint(0, 256, (1, 10))
    with torch.no_grad():
        quantized_logits = q(ids).logits
    floats = plmkit.quant.dequantize(q)
    assert not plmkit.quant.is_quantized(floats)
    assert all(p.is_floating_point() and p.requires_grad for p in floats.parameters())
    assert floats.lm_head.decoder.weight is floats.transformer.embed.tokens.weight  # tied again
    with torch.no_grad():
        assert torch.allclose(floats(ids).logits, quantized_logits, atol=2e-2)  # int8pack ran in bf16
    plmkit.save_hf(floats, None, tmp_path / "hf")  # a float model exports


def test_bitsandbytes_backend_on_the_same_tensors(tmp_path):
    pytest.importorskip("bitsandbytes")
    model = tiny()
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    for mode in ("int8", "nf4"):
        ours = quantize(copy.deepcopy(model), mode)
        theirs = quantize(copy.deepcopy(model), mode, backend="bitsandbytes")
        for name, tensor in ours.state_dict().items():  # one format for both backends
            assert torch.equal(tensor, theirs.state_dict()[name]), name
        with torch.no_grad():
            a, b = ours(ids).logits, theirs(ids).logits
        # nf4: the same dequantized matrix; LLM.int8: 16-bit activations and outlier columns
        assert (a - b).abs().max() < (1e-4 if mode == "nf4" else 0.02)
        plmkit.save(theirs, None, tmp_path / mode)
        loaded, _ = plmkit.load(tmp_path / mode)
        assert loaded.quant_config.backend == "bitsandbytes"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bitsandbytes_kernels_on_cuda():
    pytest.importorskip("bitsandbytes")
    model = tiny(d_model=128, d_ff=256)
    ids = torch.randint(0, 256, (32, 16), device="cuda")  # > 16 rows: torch._int_mm's CUDA condition
    with torch.no_grad():
        reference = copy.deepcopy(model).cuda()(ids).logits
        for mode, backend in (("int8", "bitsandbytes"), ("nf4", "bitsandbytes"), ("int8-dynamic", "torch")):
            q = quantize(copy.deepcopy(model), mode, backend=backend).cuda()
            assert (q(ids).logits - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


# ---- a trained model: perplexity, size on disk, the CLI ------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small GPT trained for 40 steps on real English, its checkpoint and a held-out text file."""
    from plmkit.config import load_config
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.pretrain import pretrain

    tmp = tmp_path_factory.mktemp("quant")
    corpus = h.write_english(tmp / "train.txt", 60_000)
    held_out = tmp / "held_out.txt"
    held_out.write_text(h.english_text(70_000)[60_000:], encoding="utf-8")
    overrides = h.tiny_overrides(GPT, corpus, tmp, steps=40, vocab=512) + [
        "model.n_layer=2",
        "model.d_model=64",
        "model.n_head=4",
        "model.d_ff=256",
        "data.block_size=64",
        "optim.lr=3e-3",
        "schedule.warmup_steps=4",
        "log.every=10",
    ]
    result = pretrain(load_config(RecipeConfig, GPT, overrides), stream=io.StringIO())
    return tmp, result["checkpoint"], held_out


@pytest.fixture(autouse=True)
def token_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("PLMKIT_CACHE", str(tmp_path / "cache"))  # evaluation builds a token store


def test_perplexity_after_quantization_and_size_on_disk(trained):
    from plmkit.evaluate import evaluate_loss

    tmp, checkpoint, held_out = trained
    model, tokenizer = plmkit.load(checkpoint)
    ppl = {"fp32": evaluate_loss(model, tokenizer, str(held_out), block_size=64)["perplexity"]}
    sizes = {"fp32": (Path(checkpoint) / "model.safetensors").stat().st_size}
    for mode in MODES:
        q = quantize(copy.deepcopy(model), mode)
        ppl[mode] = evaluate_loss(q, tokenizer, str(held_out), block_size=64)["perplexity"]
        plmkit.save(q, tokenizer, tmp / f"q-{mode}")
        sizes[mode] = (tmp / f"q-{mode}" / "model.safetensors").stat().st_size
    assert ppl["fp32"] < 0.5 * 512  # it learned something: far below a uniform guess
    assert abs(ppl["int8"] / ppl["fp32"] - 1) < 0.03, ppl
    assert abs(ppl["int8-dynamic"] / ppl["fp32"] - 1) < 0.03, ppl
    assert abs(ppl["nf4"] / ppl["fp32"] - 1) < 0.15, ppl  # 4 bits: a looser bound
    assert sizes["fp32"] / sizes["int8"] >= 3.5, sizes  # files on disk, headers included
    assert sizes["fp32"] / sizes["nf4"] >= sizes["fp32"] / sizes["int8"]


def test_plm_quantize_then_generate_eval_and_info(trained, capsys):
    tmp, checkpoint, held_out = trained
    out = tmp / "cli-int8"
    code, stdout, err = h.run_cli(["quantize", checkpoint, "--int8", "--out", out], capsys)
    assert code == 0, err
    assert "int8:" in stdout and "x smaller" in stdout
    on_disk = [line for line in stdout.splitlines() if line.startswith("weights on disk:")]
    ratio = float(on_disk[0].split("(")[1].split("x")[0])
    assert ratio >= 3.5
    code, text, err = h.run_cli(
        ["generate", "--model", out, "--prompt", "The class", "--max-new-tokens", "8"], capsys
    )
    assert code == 0 and text.startswith("The class"), err
    code, text, err = h.run_cli(["eval", out, "--data", held_out, "--block-size", "64"], capsys)
    assert code == 0 and math.isfinite(json.loads(text)["perplexity"]), err
    code, text, err = h.run_cli(["info", out], capsys)
    assert code == 0 and "quantization: int8" in text, err
    code, _, err = h.run_cli(["quantize", checkpoint, "--nf4", "--out", tmp / "cli-nf4"], capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{tmp}/x"], "choose a quantization mode"),
        (["--mode", "int4", "--out", "{tmp}/x"], "unknown quantization mode 'int4'"),
        (["--int8", "--out", "{ckpt}"], "is the input"),
        (["--int8", "--backend", "gpu", "--out", "{tmp}/x"], "unknown quantization backend"),
    ],
)
def test_plm_quantize_errors_are_one_line(trained, capsys, args, message):
    tmp, checkpoint, _ = trained
    argv = ["quantize", checkpoint, *[a.format(tmp=tmp, ckpt=checkpoint) for a in args]]
    code, _, err = h.run_cli(argv, capsys)
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_plm_quantize_file_problems_and_an_already_quantized_checkpoint(trained, capsys, tmp_path):
    tmp, checkpoint, _ = trained
    code, _, err = h.run_cli(["quantize", tmp_path / "missing", "--int8", "--out", tmp_path / "x"], capsys)
    assert code == 2 and "does not exist" in err and err.count("\n") == 1
    code, _, err = h.run_cli(["quantize", checkpoint, "--int8", "--out", tmp_path / "q"], capsys)
    assert code == 0, err
    code, _, err = h.run_cli(["quantize", tmp_path / "q", "--nf4", "--out", tmp_path / "q2"], capsys)
    assert code == 2 and "already quantized (int8)" in err and err.count("\n") == 1
    code, _, err = h.run_cli(["convert", "--to-hf", tmp_path / "q", "--out", tmp_path / "hf"], capsys)
    assert code == 2 and "dequantize" in err
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    code, _, err = h.run_cli(["quantize", checkpoint, "--int8", "--out", tmp_path / "user"], capsys)
    assert code == 2 and "already exists and is not empty" in err
    header = tmp_path / "q" / "plmkit.json"
    data = json.loads(header.read_text())
    data["quantization"]["mode"] = "int3"
    header.write_text(json.dumps(data))
    code, _, err = h.run_cli(["generate", "--model", tmp_path / "q", "--prompt", "x"], capsys)
    assert code == 2 and "unknown quantization mode 'int3'" in err and "plmkit.json" in err
