"""Task heads on a single stack: sequence classification, token classification, span QA, value/reward.

Each head model owns a `transformer` Stack that uses its family's mask (a causal family pools the
last real token, an encoder pools [CLS] or the mean), so any family can be fine-tuned for any task.
Weights of the stack load from a language model checkpoint with the same `transformer.*` names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError
from plmkit.model.config import ModelConfig
from plmkit.model.pretrained import ModelOutput, PretrainedModel, self_attention_allowed, with_token_loss
from plmkit.model.stack import Stack

POOLINGS = ("cls", "mean", "last")


def pool(h: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """(B, T, C) -> (B, C). cls: first token; mean: average of real tokens; last: last real token
    (works for right and left padding)."""
    if attention_mask is None:
        attention_mask = torch.ones(h.shape[:2], dtype=torch.long, device=h.device)
    if how == "cls":
        return h[:, 0]
    if how == "mean":
        weights = attention_mask.to(h.dtype).unsqueeze(-1)
        return (h * weights).sum(1) / weights.sum(1).clamp(min=1)
    # last real token: the highest index whose mask is 1
    positions = torch.arange(h.shape[1], device=h.device)
    last = (attention_mask.bool() * positions).argmax(dim=1)
    return h[torch.arange(h.shape[0], device=h.device), last]


class _HeadModel(PretrainedModel):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.mask_kind = "causal" if config.family == "causal" else "bidirectional"
        self.transformer = Stack(config, config.n_layer, bidirectional=self.mask_kind != "causal")

    def _hidden(self, input_ids, attention_mask, token_type_ids) -> torch.Tensor:
        self._check(input_ids)
        b, t = input_ids.shape
        allowed, is_causal = self_attention_allowed(self.mask_kind, b, t, 0, input_ids.device, attention_mask)
        h, _ = self.transformer(input_ids, allowed, is_causal, token_type_ids=token_type_ids)
        return h


class TransformerModel(_HeadModel):
    """The bare stack: hidden states (sentence encoders such as all-MiniLM, feature extraction).
    `embed()` gives pooled sentence embeddings (mean pooling by default, as sentence-transformers).
    With `pooler=True` it also carries BERT's pooler (dense + tanh on the first token) -> out.pooled."""

    def __init__(self, config: ModelConfig, pooler: bool = False) -> None:
        super().__init__(config)
        self.pooler = nn.Linear(config.d_model, config.d_model) if pooler else None
        self._init_weights()

    def init_kwargs(self) -> dict:
        return {"pooler": self.pooler is not None}

    def forward(self, input_ids, attention_mask=None, token_type_ids=None) -> ModelOutput:
        h = self._hidden(input_ids, attention_mask, token_type_ids)
        pooled = torch.tanh(self.pooler(h[:, 0])) if self.pooler is not None else None
        return ModelOutput(hidden_states=h, pooled=pooled)

    def embed(
        self, input_ids, attention_mask=None, token_type_ids=None, pooling: str = "mean"
    ) -> torch.Tensor:
        h = self._hidden(input_ids, attention_mask, token_type_ids)
        return pool(h, attention_mask, pooling)  # (B, C)


class SequenceClassifier(_HeadModel):
    """Pooled representation -> n_labels logits. num_labels=1 is regression (MSE), as in transformers.
    `pooler_dense` adds BERT's dense+tanh pooler before the classifier."""

    def __init__(
        self, config: ModelConfig, num_labels: int, pooling: str = "cls", pooler_dense: bool = False
    ):
        super().__init__(config)
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling={pooling!r} is not one of {', '.join(POOLINGS)}")
        self.pooling = pooling
        self.num_labels = num_labels
        self.pooler_dense = pooler_dense  # init arguments are kept so checkpoints can rebuild the model
        self.pooler = nn.Linear(config.d_model, config.d_model) if pooler_dense else None
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.d_model, num_labels)
        self._init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ModelOutput:
        h = self._hidden(input_ids, attention_mask, token_type_ids)
        pooled = pool(h, attention_mask, self.pooling)
        if self.pooler is not None:
            pooled = torch.tanh(self.pooler(pooled))
        logits = self.classifier(self.dropout(pooled))  # (B, n_labels)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels)
        return ModelOutput(loss=loss, logits=logits, hidden_states=h)


class TokenClassifier(_HeadModel):
    """A label per token (NER, POS); labels -100 where no loss (padding, sub-word continuations)."""

    def __init__(self, config: ModelConfig, num_labels: int) -> None:
        super().__init__(config)
        self.num_labels = num_labels
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.d_model, num_labels)
        self._init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ModelOutput:
        h = self._hidden(input_ids, attention_mask, token_type_ids)
        logits = self.classifier(self.dropout(h))  # (B, T, n_labels)
        return with_token_loss(ModelOutput(logits=logits, hidden_states=h), labels, shift=False)


class SpanQA(_HeadModel):
    """Extractive QA (SQuAD, CMRC): start and end logits per token; loss = mean of the two CEs."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.qa = nn.Linear(config.d_model, 2)
        self._init_weights()

    def forward(
        self, input_ids, attention_mask=None, token_type_ids=None, start_positions=None, end_positions=None
    ) -> ModelOutput:
        h = self._hidden(input_ids, attention_mask, token_type_ids)
        start, end = self.qa(h).float().unbind(dim=-1)  # (B, T) each
        if attention_mask is not None:  # padding can never be an answer boundary
            start = start.masked_fill(attention_mask == 0, torch.finfo(start.dtype).min)
            end = end.masked_fill(attention_mask == 0, torch.finfo(end.dtype).min)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = (F.cross_entropy(start, start_positions) + F.cross_entropy(end, end_positions)) / 2
        return ModelOutput(loss=loss, hidden_states=h, start_logits=start, end_logits=end)


class ValueHead(nn.Module):
    """A scalar per token (PPO critic, reward model). Kept separate so a policy can carry one."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.score = nn.Linear(d_model, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.score(h).squeeze(-1).float()  # (B, T)


class RewardModel(_HeadModel):
    """Scalar score per sequence, read at the last real token (InstructGPT reward model).
    With `chosen`/`rejected` pairs, the loss is -log σ(r_chosen - r_rejected); here `labels`
    are optional regression targets for the score."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        self.value_head = ValueHead(config.d_model)
        self._init_weights()

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ModelOutput:
        h = self._hidden(input_ids, attention_mask, token_type_ids)
        values = self.value_head(h)  # (B, T)
        mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        last = (mask.bool() * torch.arange(h.shape[1], device=h.device)).argmax(dim=1)
        scores = values[torch.arange(h.shape[0], device=h.device), last]
        loss = F.mse_loss(scores, labels.float()) if labels is not None else None
        return ModelOutput(loss=loss, hidden_states=h, values=values, scores=scores)
