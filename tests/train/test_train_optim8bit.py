"""8-bit AdamW (`optim.name: adamw8bit`, bitsandbytes): a tiny recipe trains with it, its optimizer state is
~4x smaller than AdamW's, it keeps plmkit's parameter groups, and a resumed run continues exactly."""

from __future__ import annotations

import io
import sys

import pytest
import torch

import train_helpers as h
from plmkit.config import load_config
from plmkit.errors import ConfigError
from plmkit.model import build_model
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.pretrain import pretrain
from plmkit.train.checkpoint import load_training_state
from plmkit.train.config import OptimConfig
from plmkit.train.optim import build_optimizer

pytest.importorskip("bitsandbytes")
GPT = h.ROOT / "recipes" / "gpt-clm.yaml"
COMPARED = ("step", "loss", "lr", "tokens")


def state_bytes(optimizer_state: dict) -> int:
    """Bytes of every tensor in an optimizer state dict's per-parameter state (nested dicts included)."""

    def size(value) -> int:
        if torch.is_tensor(value):
            return value.numel() * value.element_size()
        return sum(size(v) for v in value.values()) if isinstance(value, dict) else 0

    return sum(size(s) for s in optimizer_state["state"].values())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same tiny recipe trained with adamw and with adamw8bit (8 steps, checkpoints every 4)."""
    root = tmp_path_factory.mktemp("optim8bit")
    corpus = h.write_english(root / "en.txt", 30_000)

    def config(name: str, *extra: str) -> RecipeConfig:
        overrides = h.tiny_overrides(GPT, corpus, root, steps=8, vocab=512) + [
            "model.n_layer=2",
            "model.d_model=64",
            "model.n_head=4",
            "model.d_ff=256",
            "model.max_positions=72",
            "data.block_size=64",
            "optim.lr=3e-3",
            "checkpoint.every=4",
            "checkpoint.keep_last=2",
            f"optim.name={name}",
            f"out_dir={root / name}",
            *extra,
        ]
        return load_config(RecipeConfig, GPT, overrides)

    results = {name: pretrain(config(name), stream=io.StringIO()) for name in ("adamw", "adamw8bit")}
    return root, config, results


def test_adamw8bit_trains_a_recipe_with_4x_smaller_state(runs):
    root, _, results = runs
    losses = [r["loss"] for r in h.read_metrics(root / "adamw8bit") if "loss" in r]
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.5  # it trains
    plain = [r["loss"] for r in h.read_metrics(root / "adamw") if "loss" in r]
    assert abs(losses[-1] - plain[-1]) < 0.3  # and about as well as 32-bit AdamW
    sizes, states = {}, {}
    for name, result in results.items():
        state, _ = load_training_state(h.Path(result["checkpoint"]))  # torch.load(weights_only=True)
        states[name], sizes[name] = (
            state["optimizers"]["model"]["state"],
            state_bytes(state["optimizers"]["model"]),
        )
    # both moments in uint8 for every tensor of >= 4096 elements; smaller ones (biases, norms) keep fp32
    # states and each 8-bit tensor adds its absmax per 256 values and two 256-entry maps: ~3.5x in all here
    moments = [s["__bnb_optimizer_quant_state__"]["state1"] for s in states["adamw8bit"].values()]
    assert all((m.dtype == torch.uint8) == (m.numel() >= 4096) for m in moments)
    assert sum(m.numel() for m in moments if m.dtype == torch.uint8) > 0.95 * sum(m.numel() for m in moments)
    assert 3.3 < sizes["adamw"] / sizes["adamw8bit"] < 4.0, sizes


def test_a_resumed_adamw8bit_run_continues_exactly(runs):
    root, config, _ = runs
    checkpoint = root / "adamw8bit" / "checkpoints" / "step-00000004"
    pretrain(config("adamw8bit", f"out_dir={root / 'resumed'}", f"resume={checkpoint}"), stream=io.StringIO())
    want = [
        {k: r[k] for k in COMPARED}
        for r in h.read_metrics(root / "adamw8bit")
        if r.get("step", 0) > 4 and "loss" in r
    ]
    got = [{k: r[k] for k in COMPARED} for r in h.read_metrics(root / "resumed") if "loss" in r]
    assert got == want and len(got) == 4


def test_adamw8bit_keeps_the_parameter_groups():
    model = build_model(
        "gpt2-tiny", vocab_size=128, d_model=32, n_layer=1, n_head=2, d_ff=64, max_positions=32
    )
    optimizer = build_optimizer(model, OptimConfig(name="adamw8bit", weight_decay=0.1), torch.device("cpu"))
    assert type(optimizer).__name__ == "AdamW8bit"
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decayed = {id(p) for p in decay["params"]}
    assert id(model.transformer.blocks[0].attn.qkv.weight) in decayed
    assert id(model.transformer.embed.tokens.weight) not in decayed  # embeddings, biases, norms: no decay
    assert id(model.transformer.blocks[0].attn.qkv.bias) not in decayed


def test_unknown_optimizer_and_missing_package_are_clear_errors(monkeypatch):
    model = build_model(
        "gpt2-tiny", vocab_size=128, d_model=32, n_layer=1, n_head=2, d_ff=64, max_positions=32
    )
    with pytest.raises(
        ConfigError, match=r"optim.name='adamw8' is not one of adamw, adamw8bit \(did you mean"
    ):
        build_optimizer(model, OptimConfig(name="adamw8"), torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(
        ConfigError, match=r"adamw8bit needs the bitsandbytes package.*pip install 'plmkit\[quant\]'"
    ):
        build_optimizer(model, OptimConfig(name="adamw8bit"), torch.device("cpu"))
