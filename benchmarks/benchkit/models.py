"""The same weights on both sides (BENCHMARKING.md rule 1), and the checks made before any timing.

A transformers model is built with a fixed seed, every parameter nudged away from its initial value
(so a norm left at 1 cannot hide a wrong mapping), saved with save_pretrained; both sides load that
folder: transformers with from_pretrained (SDPA attention where it has it), plmkit with load_hf.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may download
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

HF_CLASS = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "bert": "BertForMaskedLM",
    "t5": "T5ForConditionalGeneration",
    "bart": "BartForConditionalGeneration",
}
SEQ2SEQ = ("t5", "bart")
LOGITS_ATOL = 1e-4
MASK_ID = 4


@dataclass(frozen=True)
class Shape:
    layers: int = 6
    d_model: int = 384
    heads: int = 6
    vocab: int = 8192
    positions: int = 1024

    def label(self) -> str:
        return f"{self.layers}x{self.d_model}"


def hf_config(family: str, s: Shape):
    import transformers as T

    if family == "gpt2":
        return T.GPT2Config(
            vocab_size=s.vocab,
            n_embd=s.d_model,
            n_layer=s.layers,
            n_head=s.heads,
            n_positions=s.positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=0,
            eos_token_id=0,
        )
    if family == "llama":
        return T.LlamaConfig(
            vocab_size=s.vocab,
            hidden_size=s.d_model,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            num_key_value_heads=max(1, s.heads // 2),
            intermediate_size=64 * round(8 * s.d_model / 3 / 64),
            max_position_embeddings=s.positions,
            tie_word_embeddings=False,
            bos_token_id=1,
            eos_token_id=2,
        )
    if family == "bert":
        return T.BertConfig(
            vocab_size=s.vocab,
            hidden_size=s.d_model,
            num_hidden_layers=s.layers,
            num_attention_heads=s.heads,
            intermediate_size=4 * s.d_model,
            max_position_embeddings=s.positions,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    if family == "t5":
        return T.T5Config(
            vocab_size=s.vocab,
            d_model=s.d_model,
            d_kv=s.d_model // s.heads,
            num_layers=s.layers,
            num_heads=s.heads,
            d_ff=4 * s.d_model,
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=1,
            decoder_start_token_id=0,
        )
    if family == "bart":
        return T.BartConfig(
            vocab_size=s.vocab,
            d_model=s.d_model,
            encoder_layers=s.layers,
            decoder_layers=s.layers,
            encoder_attention_heads=s.heads,
            decoder_attention_heads=s.heads,
            encoder_ffn_dim=4 * s.d_model,
            decoder_ffn_dim=4 * s.d_model,
            max_position_embeddings=s.positions,
            dropout=0.0,
            attention_dropout=0.0,
            activation_dropout=0.0,
        )
    raise ValueError(f"unknown family {family!r}; known: {', '.join(HF_CLASS)}")


def save_reference(family: str, shape: Shape, folder: Path, noise: float = 0.02) -> Path:
    """Build the transformers model (seed 0), nudge every parameter, save_pretrained into folder."""
    import transformers as T

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = getattr(T, HF_CLASS[family])(hf_config(family, shape))
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():  # tied parameters appear once
                p.add_(noise * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.save_pretrained(folder)
    return folder


def load_reference(family: str, folder: Path):
    """transformers' model from folder, with SDPA attention where the class has it."""
    import transformers as T

    cls = getattr(T, HF_CLASS[family])
    try:
        model = cls.from_pretrained(folder, attn_implementation="sdpa")
    except (ValueError, ImportError):  # a class without SDPA support
        model = cls.from_pretrained(folder)
    return model


def load_plmkit(folder: Path):
    from plmkit.model.hf import load_hf

    model, _ = load_hf(folder)
    return model


def attention_of(reference) -> str:
    return str(getattr(reference.config, "_attn_implementation", "default"))


def check_inputs(family: str, vocab: int, batch: int = 2, length: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    inputs = {"input_ids": torch.randint(5, vocab, (batch, length), generator=g)}
    if family in SEQ2SEQ:
        inputs["decoder_input_ids"] = torch.randint(5, vocab, (batch, length // 2), generator=g)
    return inputs


def logits_difference(family: str, ours, reference, vocab: int) -> float:
    """Max |logit difference| of the two sides (fp32, eval mode) on one batch; the modes are restored."""
    inputs = check_inputs(family, vocab)
    modes = ours.training, reference.training
    ours.eval()
    reference.eval()
    with torch.no_grad():
        a = ours(**inputs).logits.float()
        b = reference(**inputs).logits.float()
    ours.train(modes[0])
    reference.train(modes[1])
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max())


def decode_weight_bytes(reference, bytes_per_parameter: float) -> int:
    """Bytes of weights one decode step reads: every parameter used per token (tied ones once), not
    the input embedding table unless it is the output layer too (a lookup reads one row), no position
    tables, and for encoder-decoders not the encoder (it runs once, in the prefill)."""
    out = reference.get_output_embeddings()
    head = out.weight if out is not None else None
    inp = reference.get_input_embeddings().weight
    seen: set[int] = set()
    total = 0
    for name, p in reference.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if p is inp and p is not head:
            continue
        if "wpe" in name or "position_embeddings" in name or name.startswith("encoder."):
            continue
        total += p.numel()
    return int(total * bytes_per_parameter)


def model_flops_parameters(reference) -> int:
    """N of MFU = 6 N tokens/s: every parameter (tied ones once) but the position tables."""
    seen: set[int] = set()
    total = 0
    for name, p in reference.named_parameters():
        if id(p) in seen or "wpe" in name or "position_embeddings" in name:
            continue
        seen.add(id(p))
        total += p.numel()
    return total
