"""PET, pattern-exploiting training (Schick & Schütze, EACL 2021, "Exploiting Cloze Questions for Few Shot
Text Classification and Natural Language Inference"): the mechanics.

    scores = label_scores(model, tokenizer, pattern, verbalizer, rows, max_length=128)   # (N, n_labels)
    loss_sum, count = pet_loss(model, batch, alpha=1e-4)      # one pattern's model, on the (sum, count) contract
    weights = ensemble_weights([acc_p0, acc_p1])              # each pattern's train accuracy before training
    targets = soft_labels(ensemble_logits([s_p0, s_p1], weights), temperature=2.0)
    loss_sum, count = distillation_loss(classifier_logits, targets)    # the final sequence classifier

Scores. A masked LM reads the pattern with the mask slot filled by as many [MASK] tokens as the word has
pieces; a word scores the mean over its pieces of log p(piece_i at mask_i) (log-softmax over the
vocabulary). A causal, prefix or seq2seq LM scores the word as the continuation of the pattern up to the
mask (generation.scoring.continuation_logprobs), again the mean over its tokens. A label with several words
scores the mean of its words' scores (PET averages the words' logits; log-probs at one mask differ from the
logits by a constant per row, so the ranking and any softmax over labels are the same). Scoring never
changes the model: no train / eval switch, dropout off for this thread (model.dropout.dropout_off), no
gradients.

Training (pet_loss): the label logits are the masked LM's logits at the [MASK] of each label's single-token
word(s), and the loss is (1 - alpha) * cross entropy over those (the restricted verbalizer set) + alpha *
the MLM loss on a batch of unlabelled texts (PET, "Auxiliary Language Modeling": L = (1 - α)·L_CE + α·L_MLM, α = 1e-4). On the engine's
(sum, count) contract count is the labelled rows; the MLM term is the unlabelled batch's mean token loss
times that count, so loss_sum / count is exactly PET's per-batch loss.

Ensemble and distillation (PET, "Combining PVPs"): each pattern's model weighs its scores by its accuracy on the
training set before training, normalised to sum 1 (PET's "weighted" ensemble; pet/modeling.py
merge_logits_lists, reduction="wmean"), soft labels are softmax(s / T) with T = 2, and the final sequence
classifier learns them by cross-entropy against the soft targets. iPET is not implemented.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError, ShapeError
from plmkit.evaluate.tasks.base import family_of, pad_rows
from plmkit.generation.scoring import continuation_logprobs
from plmkit.model.dropout import dropout_off
from plmkit.prompting.patterns import CONTINUING_FAMILIES, Pattern, Verbalizer, row_values

MLM_KEYS = ("mlm_input_ids", "mlm_attention_mask", "mlm_labels")  # the unlabelled batch in a PET batch


# ---- scoring -----------------------------------------------------------------------------------------
def label_scores(
    model: nn.Module,
    tokenizer: Any,
    pattern: Pattern,
    verbalizer: Verbalizer,
    rows: Sequence[Any],
    max_length: int,
    batch_size: int = 32,
) -> torch.Tensor:
    """(N, n_labels) float32: each label's mean log-prob at the pattern's mask for each row (a plmkit Row
    or a mapping of column -> value), labels in the verbalizer's order (see the module docstring)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    values = [row_values(r, i) for i, r in enumerate(rows)]
    words = verbalizer.word_ids(pattern.mask_prefix)  # [label][word] -> ids
    flat = [ids for label in words for ids in label]
    family = family_of(model)
    with dropout_off(), torch.no_grad():
        if family == "masked":
            scores = _masked_word_scores(model, tokenizer, pattern, flat, values, max_length, batch_size)
        elif family in CONTINUING_FAMILIES:
            scores = _continuation_word_scores(
                model, tokenizer, pattern, flat, values, max_length, batch_size
            )
        else:
            raise ConfigError(
                f"PET scores with a language model (masked, causal, prefix or seq2seq), not a "
                f"{type(model).__name__} of family {family!r}"
            )
    out = torch.empty(len(values), len(words))
    start = 0
    for label, label_words in enumerate(words):  # a label scores the mean of its words
        out[:, label] = scores[:, start : start + len(label_words)].mean(-1)
        start += len(label_words)
    return out


def _masked_word_scores(model, tokenizer, pattern, flat, values, max_length, batch_size) -> torch.Tensor:
    """(N, n_words): words of k pieces are scored together from the rows encoded with k masks."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    out = torch.empty(len(values), len(flat))
    for k in sorted({len(w) for w in flat}):
        cols = [j for j, w in enumerate(flat) if len(w) == k]
        targets = torch.tensor([flat[j] for j in cols], device=device)  # (n_k, k)
        encoded = [pattern.encode(tokenizer, v, max_length, k, where) for v, where in values]
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            input_ids = pad_rows([ids for ids, _ in chunk], pad).to(device)  # (B, T)
            lengths = torch.tensor([len(ids) for ids, _ in chunk], device=device)
            attention_mask = (
                torch.arange(input_ids.shape[1], device=device)[None, :] < lengths[:, None]
            ).long()
            positions = torch.tensor([p for _, p in chunk], device=device)  # (B, k)
            logprobs = mask_logits(model, input_ids, attention_mask, positions).float().log_softmax(-1)
            picked = logprobs[:, torch.arange(k, device=device)[None, :], targets]  # (B, n_k, k)
            out[start : start + len(chunk), cols] = picked.mean(-1).cpu()
    return out


def _continuation_word_scores(
    model, tokenizer, pattern, flat, values, max_length, batch_size
) -> torch.Tensor:
    """(N, n_words): the mean log-prob of each word's tokens after the pattern's prompt."""
    family = family_of(model)
    room = max_length if family == "seq2seq" else max_length - max(len(w) for w in flat)
    prompts = [pattern.encode_prompt(tokenizer, v, room, family, where) for v, where in values]
    logprobs = continuation_logprobs(
        model, [p for p in prompts for _ in flat], [w for _ in prompts for w in flat], batch_size
    )
    means = torch.tensor([sum(lp) / len(lp) for lp in logprobs], dtype=torch.float32)
    return means.view(len(prompts), len(flat))


def mask_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """(B, k, V) vocabulary logits at `positions` (B, k). A plmkit LM puts only those rows through its
    LM head; a wrapped model (prompt tuning, ...) gives its full logits."""
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]  # (B, 1)
    head = getattr(model, "lm_head", None)
    if head is not None:
        h = model(input_ids, attention_mask, compute_logits=False).hidden_states  # (B, T, C)
        return head(h[rows, positions])
    logits = model(input_ids, attention_mask).logits
    if logits is None or logits.dim() != 3:
        shape = None if logits is None else tuple(logits.shape)
        raise ConfigError(
            f"PET reads vocabulary logits at the mask, but a {type(model).__name__} gives logits of shape {shape}; "
            "score with a language model (a MaskedLM, or a causal / seq2seq LM)"
        )
    return logits[rows, positions]


# ---- training ----------------------------------------------------------------------------------------
def verbalizer_logits(at_mask: torch.Tensor, label_word_ids: torch.Tensor) -> torch.Tensor:
    """(B, L): each label's logit, the mean of its words' logits in `at_mask` (B, V) (PET's mean over a
    label's verbalizations). label_word_ids (B, L, W): token ids, -1 where a label has fewer words."""
    b, n_labels, n_words = label_word_ids.shape
    valid = label_word_ids >= 0
    picked = at_mask.gather(1, label_word_ids.clamp(min=0).reshape(b, -1)).view(b, n_labels, n_words)
    return (picked * valid).sum(-1) / valid.sum(-1).clamp(min=1)


def pet_loss(model: nn.Module, batch: Mapping[str, torch.Tensor], alpha: float) -> tuple[torch.Tensor, int]:
    """(loss summed over the labelled rows, their number) = (1 - alpha) * cross entropy over the
    verbalizer's label logits + alpha * the MLM loss of the unlabelled batch (see the module docstring).

    batch: input_ids, attention_mask (B, T); mask_positions (B,); labels (B,) class ids (-100: no target);
    label_word_ids (B, L, W) (verbalizer_logits); with alpha > 0 also mlm_input_ids, mlm_attention_mask,
    mlm_labels (B, T') (-100 where no MLM target). One forward runs both batches."""
    if not 0 <= alpha <= 1:
        raise ConfigError(f"alpha (the MLM share of PET's loss) must be in [0, 1], got {alpha}")
    labels, input_ids = batch["labels"], batch["input_ids"]
    b = input_ids.shape[0]
    with_mlm = alpha > 0
    if with_mlm:
        missing = [k for k in MLM_KEYS if k not in batch]
        if missing:
            raise ConfigError(
                f"alpha={alpha} adds the MLM loss of unlabelled texts, but the batch lacks {', '.join(missing)}; "
                "collate them (PetTask.collate does) or set alpha=0"
            )
        t = max(input_ids.shape[1], batch["mlm_input_ids"].shape[1])
        ids = torch.cat([_pad_to(input_ids, t, 0), _pad_to(batch["mlm_input_ids"], t, 0)])
        mask = torch.cat([_pad_to(batch["attention_mask"], t, 0), _pad_to(batch["mlm_attention_mask"], t, 0)])
        lm_labels = torch.cat([torch.full_like(ids[:b], -100), _pad_to(batch["mlm_labels"], t, -100)])
        out = model(ids, mask, labels=lm_labels, compute_logits=True)  # logits (2B, t, V)
    else:
        out = model(input_ids, batch["attention_mask"])
    at_mask = out.logits[torch.arange(b, device=input_ids.device), batch["mask_positions"]].float()  # (B, V)
    logits = verbalizer_logits(at_mask, batch["label_word_ids"])  # (B, L)
    count = int((labels != -100).sum())
    loss = (1 - alpha) * F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
    if with_mlm:
        mlm_mean = out.loss_sum / torch.as_tensor(out.targets).clamp(min=1)  # 0 when nothing was masked
        loss = loss + alpha * count * mlm_mean
    return loss, count


def _pad_to(x: torch.Tensor, length: int, value: int) -> torch.Tensor:
    return F.pad(x, (0, length - x.shape[1]), value=value) if x.shape[1] < length else x


# ---- ensemble and distillation -----------------------------------------------------------------------
def ensemble_weights(train_accuracies: Sequence[float]) -> list[float]:
    """PET's weighted ensemble ("Combining PVPs"; its code: merge_logits_lists, "wmean"): w(p) = the accuracy of pattern p's model on the training set before
    training, normalised to sum 1 (s = 1/Z Σ_p w(p)·s_p, Z = Σ_p w(p))."""
    accuracies = [float(a) for a in train_accuracies]
    if not accuracies:
        raise ConfigError("ensemble_weights needs one train accuracy per pattern, got none")
    bad = [a for a in accuracies if not 0 <= a <= 1]  # nan fails the test too
    if bad:
        raise ConfigError(f"train accuracies are fractions in [0, 1]; got {bad[0]} in {accuracies}")
    total = sum(accuracies)
    if total == 0:
        raise ConfigError(
            f"every pattern's train accuracy before training is 0 ({accuracies}), so the weights are undefined; "
            f"weigh them equally ([1/{len(accuracies)}] * {len(accuracies)}) or check the verbalizer"
        )
    return [a / total for a in accuracies]


def ensemble_logits(per_pattern_scores: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """(N, L): 1/Z Σ_p w(p)·s_p of the patterns' (N, L) scores (Z = Σ w, so normalised weights stay)."""
    if not per_pattern_scores or len(per_pattern_scores) != len(weights):
        raise ShapeError(
            f"{len(per_pattern_scores)} score matrices but {len(weights)} weights; give one weight per pattern"
        )
    shapes = {tuple(s.shape) for s in per_pattern_scores}
    if len(shapes) != 1:
        raise ShapeError(f"every pattern scores the same rows and labels; got shapes {sorted(shapes)}")
    total = float(sum(weights))
    if not total > 0 or any(w < 0 for w in weights):
        raise ConfigError(f"ensemble weights must be >= 0 with a positive sum, got {list(weights)}")
    out = torch.zeros_like(per_pattern_scores[0], dtype=torch.float32)
    for w, s in zip(weights, per_pattern_scores, strict=True):
        out += (float(w) / total) * s.float()
    return out


def soft_labels(ensemble_logits: torch.Tensor, temperature: float = 2.0) -> torch.Tensor:
    """(N, L) targets softmax(s / T) (PET: T = 2, after Hinton et al. 2015)."""
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(ensemble_logits.float() / temperature, dim=-1)


def distillation_loss(
    student_logits: torch.Tensor, soft_labels: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, int]:
    """(Σ_rows −Σ_l q_l·log softmax(z / T)_l · T², rows): cross-entropy of the final classifier's logits z
    (N, L) against the soft targets q (N, L). The default T = 1 is plain cross-entropy; PET's code
    (pet/wrapper.py distillation_loss) divides the student's logits by the same T and scales by T², and
    uses KL(q‖·), which differs from this by q's entropy only: the same gradient at temperature=T."""
    if student_logits.shape != soft_labels.shape or student_logits.dim() != 2:
        raise ShapeError(
            f"student logits {tuple(student_logits.shape)} and soft labels {tuple(soft_labels.shape)} must both "
            "be (rows, labels)"
        )
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    logprobs = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    per_row = -(soft_labels.float() * logprobs).sum(-1)  # (N,)
    return per_row.sum() * temperature**2, int(student_logits.shape[0])


def accuracy(scores: torch.Tensor, targets: Sequence[int]) -> float:
    """The fraction of rows whose highest-scoring label is the target (ensemble_weights' input)."""
    if scores.shape[0] != len(targets) or not len(targets):
        raise ShapeError(f"{scores.shape[0]} score rows but {len(targets)} targets; give one per row")
    hits = (scores.argmax(-1).cpu() == torch.as_tensor(list(targets))).sum()
    return float(hits) / len(targets)
