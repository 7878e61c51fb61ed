"""Task heads on a single stack: sequence classification, token classification, span QA, value/reward,
and the bare encoder (`TransformerModel`) with sentence embeddings.

Each head model owns a `transformer` Stack that uses its family's mask (a causal family pools the
last real token, an encoder pools [CLS] or the mean), so any family can be fine-tuned for any task.
Weights of the stack load from a language model checkpoint with the same `transformer.*` names.
A bare encoder becomes its family's LM with `with_new_lm_head` (the head freshly initialised).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import CheckpointError, ConfigError, did_you_mean
from plmkit.model.config import ModelConfig
from plmkit.model.dropout import Dropout
from plmkit.model.pretrained import ModelOutput, PretrainedModel, self_attention_allowed, with_token_loss
from plmkit.model.stack import Stack
from plmkit.model.transformer import CausalLM, MaskedLM, PrefixLM

POOLINGS = ("cls", "mean", "last")  # a classifier's
# sentence embeddings: sentence-transformers' pooling modes (cls_token, mean_tokens, max_tokens,
# mean_sqrt_len_tokens, weightedmean_tokens, lasttoken)
EMBED_POOLINGS = ("mean", "cls", "max", "mean_sqrt_len", "weightedmean", "last")


def pool(h: torch.Tensor, attention_mask: torch.Tensor | None, how: str) -> torch.Tensor:
    """(B, T, C) -> (B, C). cls: first token; mean: average of real tokens; max: their element-wise
    maximum; mean_sqrt_len: their sum / sqrt(count); weightedmean: their average weighted by position
    1, 2, ...; last: last real token (works for right and left padding)."""
    if how not in EMBED_POOLINGS:
        raise ConfigError(
            f"pooling={how!r} is not one of {', '.join(EMBED_POOLINGS)}{did_you_mean(how, EMBED_POOLINGS)}"
        )
    if attention_mask is None:
        attention_mask = torch.ones(h.shape[:2], dtype=torch.long, device=h.device)
    if how == "cls":
        return h[:, 0]
    weights = attention_mask.to(h.dtype).unsqueeze(-1)
    if how == "mean":
        return (h * weights).sum(1) / weights.sum(1).clamp(min=1)
    if how == "mean_sqrt_len":
        return (h * weights).sum(1) / weights.sum(1).clamp(min=1).sqrt()
    if how == "max":
        return h.masked_fill(weights == 0, torch.finfo(h.dtype).min).max(dim=1).values
    if how == "weightedmean":
        weights = weights * torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype)[None, :, None]
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
    With `pooler=True` it also carries BERT's pooler (dense + tanh on the first token) -> out.pooled.

    `embed()` gives pooled sentence embeddings. How is part of the model, saved with it: `pooling`
    (one of EMBED_POOLINGS), `normalize` (L2) and `max_length` (longer texts are truncated), as read
    from a sentence-transformers folder's modules.json; else mean pooling, not normalised."""

    def __init__(
        self,
        config: ModelConfig,
        pooler: bool = False,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int | None = None,
    ) -> None:
        super().__init__(config)
        if pooling not in EMBED_POOLINGS:
            raise ConfigError(
                f"pooling={pooling!r} is not one of {', '.join(EMBED_POOLINGS)}"
                f"{did_you_mean(pooling, EMBED_POOLINGS)}"
            )
        self.pooler = nn.Linear(config.d_model, config.d_model) if pooler else None
        self.pooling, self.normalize, self.max_length = pooling, bool(normalize), max_length
        self._init_weights()

    def init_kwargs(self) -> dict:
        return {
            "pooler": self.pooler is not None,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "max_length": self.max_length,
        }

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None) -> ModelOutput:
        if labels is not None:  # e.g. `plm eval` of a sentence encoder: there is no loss to report
            raise CheckpointError(
                "this checkpoint is a bare encoder (TransformerModel, e.g. a Hugging Face BertModel or a "
                "sentence-transformers model): it has no LM head, so it has no loss; use `plm embed` for "
                "its sentence embeddings, or train a head first (a pretrain recipe with init_from and "
                "objective mlm starts one)"
            )
        h = self._hidden(input_ids, attention_mask, token_type_ids)
        pooled = torch.tanh(self.pooler(h[:, 0])) if self.pooler is not None else None
        return ModelOutput(hidden_states=h, pooled=pooled)

    def embed(
        self,
        input_ids,
        attention_mask=None,
        token_type_ids=None,
        pooling: str | None = None,
        normalize: bool | None = None,
    ) -> torch.Tensor:
        """(B, C) sentence embeddings; `pooling` / `normalize` override the model's own settings."""
        h = self._hidden(input_ids, attention_mask, token_type_ids)
        pooled = pool(h, attention_mask, self.pooling if pooling is None else pooling)
        return (
            F.normalize(pooled, p=2, dim=-1)
            if (self.normalize if normalize is None else normalize)
            else pooled
        )


@torch.no_grad()
def embed_texts(
    model: TransformerModel,
    tokenizer: Any,
    texts: Sequence[str],
    pooling: str | None = None,
    normalize: bool | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """(len(texts), C) float32 embeddings of `texts`, in their order, as sentence-transformers' encode:
    the tokenizer's template ([CLS] ... [SEP]), truncation to the model's max_length, batches of
    similar length. `pooling` / `normalize` override the model's settings."""
    if not isinstance(model, TransformerModel):
        raise ConfigError(
            f"sentence embeddings come from a bare encoder (TransformerModel), not a {type(model).__name__}; "
            "load a sentence encoder (e.g. a sentence-transformers folder)"
        )
    if isinstance(texts, str):
        raise ConfigError("texts must be a list of strings, not one string; wrap it in a list")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    limit = min(model.max_length or model.config.max_positions, model.config.max_positions)
    backend = tokenizer.backend
    room = limit - backend.num_special_tokens_to_add(False)
    ids = []
    for text in texts:
        encoding = backend.encode(text, add_special_tokens=False)
        encoding.truncate(max(room, 0))
        ids.append(backend.post_process(encoding).ids)
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # little padding per batch
    out = torch.empty(len(ids), model.config.d_model)
    model.eval()
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        input_ids, mask = tokenizer.pad_batch([ids[i] for i in rows])
        vectors = model.embed(input_ids.to(model.device), mask.to(model.device), None, pooling, normalize)
        out[rows] = vectors.float().cpu()
    return out


def with_new_lm_head(model: TransformerModel, source: str) -> PretrainedModel:
    """The family's LM (e.g. MaskedLM for BERT) with `model`'s body and a freshly initialised LM head,
    reported as transformers reports new weights (a warning naming them)."""
    classes = {"masked": MaskedLM, "causal": CausalLM, "prefix": PrefixLM}
    family = model.config.family
    if family not in classes:
        raise CheckpointError(f"{source}: a bare {family} model cannot be given an LM head")
    with torch.random.fork_rng(devices=[]):  # the same new head on every load and rank; global RNG untouched
        torch.manual_seed(0)
        lm = classes[family](model.config)
    reference = next(model.parameters())
    lm.to(dtype=reference.dtype, device=reference.device)
    body = {k: v for k, v in model.state_dict().items() if k.startswith("transformer.")}
    missing, _ = lm.load_state_dict(body, strict=False)
    params = dict(lm.named_parameters())  # a tied decoder weight appears once, as the embeddings
    new = [name for name in missing if name in params]
    warnings.warn(
        f"Some weights of {type(lm).__name__} were not initialized from the model checkpoint at {source} "
        f"and are newly initialized: {new}. You should probably TRAIN this model (e.g. MLM pre-training "
        "with init_from) to be able to use it for predictions and inference.",
        stacklevel=3,
    )
    return lm.train(model.training)


def _checked_labels(labels: list[str] | None, num_labels: int) -> list[str] | None:
    if labels is not None and len(labels) != num_labels:
        raise ConfigError(f"{len(labels)} label names for num_labels={num_labels}; give one name per label")
    return None if labels is None else [str(name) for name in labels]


class SequenceClassifier(_HeadModel):
    """Pooled representation -> n_labels logits. num_labels=1 is regression (MSE), as in transformers.
    `pooler_dense` adds BERT's dense+tanh pooler before the classifier. `labels`: the class names by id
    (transformers' id2label), saved with the checkpoint so predictions can be read back as names."""

    def __init__(
        self,
        config: ModelConfig,
        num_labels: int,
        pooling: str = "cls",
        pooler_dense: bool = False,
        labels: list[str] | None = None,
    ):
        super().__init__(config)
        self.labels = _checked_labels(labels, num_labels)
        if pooling not in POOLINGS:
            raise ConfigError(
                f"pooling={pooling!r} is not one of {', '.join(POOLINGS)}{did_you_mean(pooling, POOLINGS)}"
            )
        self.pooling = pooling
        self.num_labels = num_labels
        self.pooler_dense = pooler_dense  # init arguments are kept so checkpoints can rebuild the model
        self.pooler = nn.Linear(config.d_model, config.d_model) if pooler_dense else None
        self.dropout = Dropout(config.dropout)  # obeys dropout_off() like the stack's
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
    """A label per token (NER, POS); labels -100 where no loss (padding, sub-word continuations).
    `labels`: the tag names by id, saved with the checkpoint."""

    def __init__(self, config: ModelConfig, num_labels: int, labels: list[str] | None = None) -> None:
        super().__init__(config)
        self.labels = _checked_labels(labels, num_labels)
        self.num_labels = num_labels
        self.dropout = Dropout(config.dropout)  # obeys dropout_off() like the stack's
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
