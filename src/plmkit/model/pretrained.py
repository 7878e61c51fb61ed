"""What every model shares: its output record, the LM head, the base class (weight init, input
checks, gradient checkpointing switch) and the self-attention mask policy of the families."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torch import nn

from plmkit.errors import ShapeError
from plmkit.model import masks
from plmkit.model.config import ModelConfig
from plmkit.model.layers import activation_fn, make_norm
from plmkit.model.losses import IGNORE, linear_token_loss, shifted, token_loss
from plmkit.model.moe import Experts, Routing
from plmkit.model.moe_losses import router_outputs
from plmkit.model.stack import Cache, Stack


@dataclass
class ModelOutput:
    """What every model returns; fields not computed stay None. Supports out.loss and out["loss"].
    An LM given labels returns no logits unless asked (`compute_logits=True`, see `PretrainedModel.lm_output`)."""

    loss: torch.Tensor | None = None  # mean over the targets: loss_sum / targets
    logits: torch.Tensor | None = None  # (B, T, V) or (B, n_labels)
    hidden_states: torch.Tensor | None = None  # last layer (B, T, C)
    past_key_values: Cache | None = None
    encoder_hidden_states: torch.Tensor | None = None  # seq2seq (B, S, C)
    start_logits: torch.Tensor | None = None  # span QA (B, T)
    end_logits: torch.Tensor | None = None
    values: torch.Tensor | None = None  # value head, per token (B, T)
    scores: torch.Tensor | None = None  # reward head, per sequence (B,)
    pooled: torch.Tensor | None = None  # BERT pooler output (B, C)
    loss_sum: torch.Tensor | None = (
        None  # LMs: cross entropy summed over the targets (fp32), for exact accumulation
    )
    targets: torch.Tensor | None = None  # LMs: how many label positions the loss covers
    # mixture of experts (plmkit.model.moe_losses.RouterOutput): per MoE layer (N, E), the unweighted router
    # losses, assignments per expert (L, E) and capacity drops (L,). In training mode loss_sum and loss
    # include the weighted router losses (coef_aux · aux + coef_z · z per target).
    router_logits: tuple[torch.Tensor, ...] | None = None
    aux_loss: torch.Tensor | None = None
    z_loss: torch.Tensor | None = None
    expert_counts: torch.Tensor | None = None
    dropped: torch.Tensor | None = None

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]


class LMHead(nn.Module):
    """Hidden states -> vocabulary logits; optional BERT transform (dense, act, norm) before the decoder."""

    def __init__(self, config: ModelConfig, transform: bool = False) -> None:
        super().__init__()
        self.transform = nn.Linear(config.d_model, config.d_model) if transform else None
        self.transform_act = activation_fn(config.activation)
        self.transform_norm = make_norm(config) if transform else None
        self.decoder = nn.Linear(config.d_model, config.vocab_size, bias=config.lm_head_bias)
        self.scale = config.d_model**-0.5 if config.tied_output_scale else 1.0

    def forward(self, h: torch.Tensor, weight_t: torch.Tensor | None = None) -> torch.Tensor:
        """h (..., C) -> logits (..., V). `weight_t`: the caller's `transposed_weight()` copy, used
        instead of the decoder's own (V, C) matrix (same values, a faster layout for a few rows)."""
        if self.transform is not None:
            h = self.transform_norm(self.transform_act(self.transform(h)))
        if self.scale != 1.0:
            h = h * self.scale
        if weight_t is not None:
            logits = h @ weight_t
            return logits if self.decoder.bias is None else logits + self.decoder.bias
        return self.decoder(h)

    def loss(self, h: torch.Tensor, labels: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """token_loss(self(h), labels, shift) without the full logits: only the rows that carry a label
        go through the head (MLM: ~15% of them), and a plain decoder's matmul and cross entropy run in
        row chunks (losses.linear_token_loss). h (B, T, C), labels (B, T)."""
        if shift:
            labels = shifted(labels)
        labels = labels.reshape(-1)
        keep = labels != IGNORE
        count = keep.sum()
        rows = h.reshape(-1, h.shape[-1])[keep]  # (N, C)
        targets = labels[keep]
        if self.transform is not None:
            rows = self.transform_norm(self.transform_act(self.transform(rows)))
        if self.scale != 1.0:
            rows = rows * self.scale
        weight = getattr(self.decoder, "weight", None)
        if type(self.decoder) is nn.Linear and type(weight) in (torch.Tensor, nn.Parameter):
            return linear_token_loss(rows, weight, self.decoder.bias, targets), count
        # a LoRA / quantized / sharded decoder: its own forward, on the labelled rows only
        logits = self.decoder(rows).float()
        return torch.nn.functional.cross_entropy(logits, targets, reduction="sum"), count

    def transposed_weight(self) -> torch.Tensor | None:
        """A contiguous (C, V) copy of the output matrix for decoding, or None where it does not help.
        Decoding's few rows make the product a matrix-vector product, which CPU BLAS runs 2-3x faster
        in this layout. The caller holds the copy (nothing is stored here): it cannot go stale when the
        weights train, and concurrent callers never share or race on it."""
        if not isinstance(self.decoder, nn.Linear) or self.decoder.weight.device.type != "cpu":
            return None  # (a quantized head, plmkit.quant, multiplies by its int8 rows with its own kernel)
        return self.decoder.weight.detach().t().contiguous()


class PretrainedModel(nn.Module):
    """Shared plumbing: weight init, input checks, loss, gradient checkpointing switch."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    def _init_weights(self) -> None:
        std = self.config.initializer_range
        n_blocks = self.config.n_layer + (
            self.config.decoder_layers if self.config.family == "seq2seq" else 0
        )
        for name, module in self.named_modules():
            # GPT-2: residual projections scaled by 1/sqrt(2·layers) keep the residual stream's variance flat
            out_std = std / math.sqrt(2 * n_blocks)
            if isinstance(module, nn.Linear):
                scaled = name.endswith(("attn.out", "mlp.fc_out", "mlp.shared.fc_out"))
                nn.init.normal_(module.weight, 0.0, out_std if scaled else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, Experts):
                module.init_weights(std, out_std)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)

    def tie_weights(self, head: LMHead, tokens: nn.Embedding) -> None:
        if self.config.tie_embeddings:
            head.decoder.weight = tokens.weight

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        for module in self.modules():
            if isinstance(module, Stack):
                module.gradient_checkpointing = enabled

    def lm_output(
        self, h: torch.Tensor, labels: torch.Tensor | None, shift: bool, compute_logits: bool | None, **fields
    ) -> ModelOutput:
        """The LM's output on its final hidden states h. compute_logits: True = logits (and the loss from
        them when there are labels); False = hidden states only (generation); None (default) = logits
        when there are no labels, else the loss only: `LMHead.loss` never makes the (B, T, V) logits,
        which a training step does not read (transformers always returns them; ask with True)."""
        out = ModelOutput(hidden_states=h, **fields)
        if compute_logits is False:
            if labels is not None:
                raise ShapeError("compute_logits=False computes no logits and no loss; pass no labels")
            return out
        if labels is None or compute_logits:
            out.logits = self.lm_head(h)
            if labels is not None:
                out.loss_sum, out.targets = token_loss(out.logits, labels, shift)
        else:
            out.loss_sum, out.targets = self.lm_head.loss(h, labels, shift)
        if labels is not None:
            out.loss = out.loss_sum / out.targets  # nan when no position has a label
        return out

    def with_routing(
        self, out: ModelOutput, routings: list[Routing] | None, attention_mask: torch.Tensor | None = None
    ) -> ModelOutput:
        """`out` with the router side of an MoE model's forward (plmkit.model.moe_losses). In training
        mode the loss gains the router losses, coef_aux · aux + coef_z · z per target, on the (sum, count)
        contract: loss_sum += penalty · targets, so a step's loss is CE + coef · aux as transformers'
        (micro-batches weighted by their targets; on several ranks, the whole micro-batch's penalty times
        its targets, shared out). Evaluation reports them apart and leaves the loss CE."""
        router = router_outputs(routings, self.config, attention_mask, out.targets) if routings else None
        if router is None:
            return out
        for name in ("router_logits", "aux_loss", "z_loss", "expert_counts", "dropped"):
            setattr(out, name, getattr(router, name))
        if self.training and out.loss_sum is not None:
            out.loss_sum = out.loss_sum + router.penalty * router.weight
            out.loss = out.loss_sum / out.targets
        return out

    def _check(self, input_ids: torch.Tensor, past: int = 0, name: str = "input_ids") -> None:
        if torch.compiler.is_compiling():
            return
        if input_ids.dim() != 2:
            raise ShapeError(f"{name} must be 2D (batch, seq), got shape {tuple(input_ids.shape)}")
        vocab = self.config.vocab_size
        if input_ids.numel():
            high, low = int(input_ids.max()), int(input_ids.min())
            if high >= vocab or low < 0:
                bad = high if high >= vocab else low
                raise ShapeError(
                    f"{name} contains token id {bad} outside the model's vocabulary [0, {vocab}); "
                    f"the tokenizer and model.vocab_size={vocab} disagree"
                )
        limit = self.config.max_positions
        if self.config.position in ("learned", "sinusoidal", "rotary") and past + input_ids.shape[1] > limit:
            raise ShapeError(
                f"sequence of {past + input_ids.shape[1]} tokens ({name} length {input_ids.shape[1]} + {past} "
                f"cached) exceeds model.max_positions={limit}; truncate the input or use a longer-context model"
            )


def past_length(past_key_values: Cache | None) -> int:
    return past_key_values[0][0].shape[2] if past_key_values else 0


def self_attention_allowed(
    kind: str,
    batch: int,
    t: int,
    past: int,
    device: torch.device,
    attention_mask: torch.Tensor | None = None,
    prefix_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, bool]:
    """The boolean mask for a stack's self-attention and whether SDPA may use its causal fast path.

    kind: "bidirectional", "causal" or "prefix". A 3D/4D attention_mask replaces the family's mask."""
    t_k = past + t
    if attention_mask is not None and attention_mask.dim() >= 3:
        return masks.from_user(attention_mask, batch, t, t_k), False
    padding = masks.from_user(attention_mask, batch, t, t_k) if attention_mask is not None else None
    if kind == "bidirectional":
        return padding, False
    if t == 1 and past > 0:  # one new token after the cache (decoding): it sees every earlier key
        return padding, False
    if kind == "prefix" and prefix_lengths is not None:
        allowed = masks.prefix(prefix_lengths.to(device), t, t_k, past)
    else:
        if padding is None and past == 0:
            return None, True  # plain causal: no explicit mask needed
        allowed = masks.causal(t, t_k, past, device)
    return (allowed if padding is None else allowed & padding), False


def with_token_loss(out: ModelOutput, labels: torch.Tensor | None, shift: bool) -> ModelOutput:
    """The LM output with its loss (plmkit.model.losses.token_loss) when there are labels."""
    if labels is not None:
        out.loss_sum, out.targets = token_loss(out.logits, labels, shift)
        out.loss = out.loss_sum / out.targets  # nan when no position has a label
    return out
