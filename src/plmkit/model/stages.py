"""Pipeline stages of a single-stack language model: the model cut at block boundaries.

    stage 0          embeddings -> blocks[0 : L/P]
    stage s          blocks[s·L/P : (s+1)·L/P]                          (hidden states in, hidden states out)
    stage P-1        blocks[...] -> final norm -> LM head -> (loss_sum, targets)

`cut_stage(model, s, P)` turns the model into its stage s in place (what the other stages hold is dropped)
and returns it as a `StageModule`. The parameters keep the names they have in the whole model
(`transformer.blocks.5.attn.qkv.weight` stays block 5 on whatever stage holds it), so the stages' sharded
checkpoints together are the whole model's, and resume at another number of stages or none.

A stage's forward takes the previous stage's output (the first stage: input_ids) and the batch's other
tensors (attention_mask, position_ids, labels, ...) as keywords; each stage builds the attention mask and
rotary tables from them again (cheap, and nothing but the hidden states crosses between stages). The last
stage computes the loss as the whole model does (`PretrainedModel.lm_output`: the head on the labelled
rows only) and returns it as (summed loss, target count); without labels, the logits.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from plmkit.errors import ConfigError
from plmkit.model.config import ModelConfig
from plmkit.model.pretrained import PretrainedModel, self_attention_allowed
from plmkit.model.stack import Stack


def check_pipeline_parallel(
    config: ModelConfig, stages: int, key: str = "distributed.pipeline_parallel"
) -> None:
    """Raise ConfigError unless a model with `config` can be cut into `stages` equal pipeline stages."""
    where = f"{key}={stages}"
    if stages < 1:
        raise ConfigError(f"{where}: give the number of pipeline stages, a whole number >= 1 (1: none)")
    if stages == 1:
        return
    if config.family == "seq2seq":
        raise ConfigError(
            f"{where}: pipeline parallelism cuts single-stack models (causal, prefix, masked); "
            "model.family=seq2seq has two stacks joined by cross-attention: use FSDP alone"
        )
    if config.position == "relative":
        raise ConfigError(
            f"{where}: T5's relative position bias is one table that every block reads, which the stages "
            "cannot share; use model.position=rotary/learned/sinusoidal, or FSDP alone"
        )
    if config.tie_embeddings:
        raise ConfigError(
            f"{where} with model.tie_embeddings=true: the first stage's token embedding and the last "
            "stage's LM head would be one matrix on two ranks; set model.tie_embeddings=false"
        )
    if config.n_layer % stages:
        fits = [d for d in range(1, config.n_layer + 1) if config.n_layer % d == 0]
        raise ConfigError(
            f"{where} does not divide model.n_layer={config.n_layer} (each stage holds the same number "
            f"of blocks); choose a pipeline size in {fits}"
        )


def stage_layers(n_layer: int, stage: int, stages: int) -> range:
    """The blocks of stage `stage` of `stages` (equal shares, in order)."""
    per = n_layer // stages
    return range(stage * per, (stage + 1) * per)


class BlockRange(nn.ModuleDict):
    """A stage's blocks under their index in the whole stack (so their parameter names do not change);
    iterating gives the blocks, as iterating the stack's ModuleList does."""

    def __iter__(self) -> Iterator[nn.Module]:  # type: ignore[override]
        return iter(self._modules.values())


class StageModule(nn.Module):
    """Stage `stage` of `stages` of a single-stack LM (CausalLM, PrefixLM, MaskedLM), holding the model's
    own modules under their own names: `transformer` (embed on the first stage, its blocks, final_norm on
    the last) and `lm_head` (last stage only)."""

    def __init__(self, model: PretrainedModel, stage: int, stages: int) -> None:
        super().__init__()
        stack = getattr(model, "transformer", None)
        if not isinstance(stack, Stack) or not hasattr(model, "mask_kind"):
            raise ConfigError(
                f"pipeline parallelism cuts plmkit's single-stack language models (CausalLM, PrefixLM, "
                f"MaskedLM), not {type(model).__name__}"
            )
        check_pipeline_parallel(model.config, stages)
        self.config = model.config
        self.cut_from = type(model).__name__  # plmkit.model.registry.model_class_name: the class it rebuilds
        self.mask_kind, self.shift_labels = model.mask_kind, model.shift_labels
        self.stage, self.stages = stage, stages
        self.layers = stage_layers(len(stack.blocks), stage, stages)
        stack.blocks = BlockRange({str(i): stack.blocks[i] for i in self.layers})
        if not self.is_first:
            stack.embed = None
        if not self.is_last:
            stack.final_norm = None
        self.transformer = stack
        self.lm_head = model.lm_head if self.is_last else None

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.stages - 1

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.transformer.gradient_checkpointing = enabled

    def forward(
        self,
        x: torch.Tensor,  # the first stage: input_ids (B, T); the others: hidden states (B, T, C)
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        prefix_lengths: torch.Tensor | None = None,
        block_position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Hidden states (B, T, C) for the next stage; the last stage: (loss_sum, targets) given labels,
        else the logits (B, T, V)."""
        stack = self.transformer
        b, t = x.shape[:2]
        if position_ids is None:
            position_ids = torch.arange(t, device=x.device)[None].expand(b, t)
        if self.is_first:
            x = stack.embed(x, position_ids, token_type_ids, block_position_ids)  # (B, T, C)
        allowed, is_causal = self_attention_allowed(
            self.mask_kind, b, t, 0, x.device, attention_mask, prefix_lengths
        )
        mask, _, rotary, fast_causal = stack.attention_inputs(x, allowed, is_causal, position_ids)
        for block in stack.blocks:
            x, _ = stack.run_block(block, x, mask, rotary, None, None, None, fast_causal, None)
        if not self.is_last:
            return x
        if stack.final_norm is not None:
            x = stack.final_norm(x)
        # the whole model's output layer and loss (the head on the labelled rows only), on this stage's head
        out = PretrainedModel.lm_output(self, x, labels, self.shift_labels, None)
        return out.logits if labels is None else (out.loss_sum, out.targets)


def cut_stage(model: PretrainedModel, stage: int, stages: int) -> StageModule:
    """Stage `stage` of `stages` of `model` (changed in place: the other stages' modules are dropped)."""
    return StageModule(model, stage, stages)
