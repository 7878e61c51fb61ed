"""adapters_off(): inside the block the LoRA / adapter model computes exactly its frozen base, in this thread
only, without any change to the model; a merged LoRA, prompt tuning or a plain model is refused."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

import plmkit.peft as peft
from plmkit.errors import ConfigError
from plmkit.model import ModelConfig, build_model
from plmkit.peft.disable import adapters_active, adapters_off
from tiny import ARCHS, VOCAB
from tiny import SIZES as TINY


def trained(method: str, **options) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the base, a copy with `method` whose new weights are made non-zero, as after training)."""
    torch.manual_seed(0)
    base = build_model(ModelConfig(**{**TINY, **ARCHS["gpt2"]})).eval()
    model = peft.apply(copy.deepcopy(base), method, **options).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.5)
    return base, model


IDS = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("method, options", [("lora", {"r": 4, "target": "all-linear"}), ("adapter", {})])
def test_adapters_off_is_the_base(method, options):
    base, model = trained(method, **options)
    with torch.no_grad():
        tuned = model(IDS).logits
        with adapters_off(model):
            off = model(IDS).logits
        again = model(IDS).logits
    assert torch.equal(off, base(IDS).logits)
    assert not torch.allclose(tuned, off) and torch.equal(again, tuned)  # nothing stays switched off


def test_the_switch_is_private_to_the_thread():
    seen = []
    with adapters_off():
        worker = threading.Thread(target=lambda: seen.append(adapters_active()))
        worker.start()
        worker.join()
        assert not adapters_active()
    assert seen == [True] and adapters_active()


def test_what_cannot_be_switched_off():
    base, model = trained("lora", r=4)
    peft.merge(model)
    with pytest.raises(ConfigError, match="merged"):
        adapters_off(model).__enter__()
    with pytest.raises(ConfigError, match="carries no PEFT method"):
        adapters_off(base).__enter__()
    _, bitfit = trained("bitfit")
    with pytest.raises(ConfigError, match="peft.method=bitfit"):
        adapters_off(bitfit).__enter__()
