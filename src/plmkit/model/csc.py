"""Chinese spelling correction (CSC): MacBERT4CSC, a masked LM that rewrites every character, plus a
detection head that says which input characters are wrong.

pycorrector's macbert4csc (after "Revisiting Pre-trained Models for Chinese NLP", Cui et al. 2020, and
Soft-Masked BERT, Zhang et al. 2020): a BERT encoder reads the (possibly misspelt) sentence; its masked-LM
head predicts the right character at EVERY position (correction: the input character when it is right),
and Linear(d_model, 1) on the last hidden states gives the logit of "this input character is wrong"
(detection). Inference reads the correction argmax only (plmkit.data.tasks.spelling.predict_ids); the
detection head is an auxiliary training signal.

    loss = detection_weight · BCE(detection) + (1 − detection_weight) · CE(correction)

both averaged over the SAME positions: those whose correction label is not -100 (the characters; the
batches of plmkit.data.tasks.spelling put -100 on [CLS], [SEP] and padding).

detection_weight defaults to 0.7. In pycorrector's macbert4csc the configured 0.3 (HYPER_PARAMS /
loss_coefficient) weights the CORRECTION loss: its forward returns (det_loss, cor_loss, ...) and its
training step computes `w * outputs[1] + (1 - w) * outputs[0]` = 0.3 · correction + 0.7 · detection.
Differences from pycorrector: its current detection loss is a sigmoid focal loss (BCE, used here, is
its earlier, commented-out choice), and both of its losses also cover [CLS] and [SEP] (labelled 0 and
themselves); here both cover the characters only.

Weights are named like MaskedLM's (`transformer.*`, `lm_head.*`) plus `detection.*`, so
`SpellingCorrector.from_masked_lm(plmkit.load(bert_folder)[0])` starts from any plmkit or Hugging Face
BERT masked LM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError, ShapeError
from plmkit.model.config import ModelConfig
from plmkit.model.heads import _HeadModel
from plmkit.model.losses import IGNORE
from plmkit.model.pretrained import LMHead, ModelOutput
from plmkit.model.transformer import MaskedLM

MACBERT4CSC_DETECTION_WEIGHT = 0.7  # = 1 - pycorrector's loss_coefficient 0.3 (see the module docstring)


@dataclass
class CorrectorOutput(ModelOutput):
    """ModelOutput plus the detection head's logits and the two parts of the loss (means over the
    characters, so loss = w · detection_loss + (1 − w) · correction_loss)."""

    detection_logits: torch.Tensor | None = None  # (B, T) fp32, > 0: "this input character is wrong"
    detection_loss: torch.Tensor | None = None
    correction_loss: torch.Tensor | None = None


class SpellingCorrector(_HeadModel):
    """MacBERT4CSC: correction logits (B, T, V) from the masked-LM head at every position and detection
    logits (B, T) from Linear(d_model, 1); see the module docstring for the loss."""

    def __init__(self, config: ModelConfig, detection_weight: float = MACBERT4CSC_DETECTION_WEIGHT) -> None:
        if config.family != "masked":
            raise ConfigError(
                f"SpellingCorrector reads both sides of each character: it needs a masked-LM (BERT) "
                f'config, got family "{config.family}"; start from a MaskedLM (from_masked_lm)'
            )
        if not 0.0 <= detection_weight <= 1.0:
            raise ConfigError(f"detection_weight must be in [0, 1], got {detection_weight}")
        super().__init__(config)
        self.detection_weight = float(detection_weight)  # stored: checkpoints rebuild the model with it
        self.lm_head = LMHead(config, transform=config.lm_head_transform)
        self.detection = nn.Linear(config.d_model, 1)
        self._init_weights()
        self.tie_weights(self.lm_head, self.transformer.embed.tokens)

    @classmethod
    def from_masked_lm(
        cls, model: MaskedLM, detection_weight: float = MACBERT4CSC_DETECTION_WEIGHT
    ) -> SpellingCorrector:
        """A corrector with a copy of `model`'s stack and LM head (so its correction logits are the
        masked LM's) and a new detection head (initialised from torch's global RNG, like every head),
        on `model`'s device and dtype, in `model`'s train/eval mode."""
        if type(model) is not MaskedLM:
            raise ConfigError(
                f"from_masked_lm needs a plain MaskedLM, got {type(model).__name__}; load a BERT masked "
                "LM (plmkit.load(folder)) without PEFT or quantization"
            )
        corrector = cls(model.config, detection_weight)
        reference = next(model.parameters())
        corrector.to(dtype=reference.dtype, device=reference.device)
        missing, unexpected = corrector.load_state_dict(model.state_dict(), strict=False)
        missing = [name for name in missing if not name.startswith("detection.")]
        if missing or unexpected:  # the two classes name their weights alike; a mismatch is a bug
            raise ConfigError(f"from_masked_lm: weights missing {missing}, unexpected {unexpected}")
        return corrector.train(model.training)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) [CLS] characters [SEP] padding
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 real, 0 padding
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,  # (B, T) the right character's id, -100: no loss
        detection_labels: torch.Tensor | None = None,  # (B, T) 1 wrong / 0 right where labels != -100
    ) -> CorrectorOutput:
        """Logits (B, T, V) and detection_logits (B, T); given labels, also the loss (a mean over the
        labelled positions), loss_sum / targets (its sum and their number) and its two parts.
        detection_labels are read where labels != -100 (other entries are ignored); without them the
        detection target is input_ids != labels there."""
        h = self._hidden(input_ids, attention_mask, token_type_ids)  # (B, T, C)
        out = CorrectorOutput(
            logits=self.lm_head(h),
            detection_logits=self.detection(h).squeeze(-1).float(),
            hidden_states=h,
        )
        if labels is not None:
            self._add_loss(out, input_ids, labels, detection_labels)
        return out

    def _add_loss(
        self,
        out: CorrectorOutput,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        detection_labels: torch.Tensor | None,
    ) -> None:
        if labels.shape != input_ids.shape:
            raise ShapeError(
                f"labels shape {tuple(labels.shape)} != input_ids shape {tuple(input_ids.shape)}"
            )
        keep = labels != IGNORE  # (B, T) the characters
        if detection_labels is None:
            wrong = (input_ids != labels).float()
        else:
            if detection_labels.shape != labels.shape:
                raise ShapeError(
                    f"detection_labels shape {tuple(detection_labels.shape)} != labels shape "
                    f"{tuple(labels.shape)}"
                )
            wrong = detection_labels.float()
            if not torch.compiler.is_compiling() and bool((keep & (wrong != 0) & (wrong != 1)).any()):
                raise ShapeError(
                    "detection_labels must be 0 or 1 wherever labels != -100 (the characters); "
                    "build batches with plmkit.data.tasks.spelling.csc_example"
                )
        vocab = out.logits.shape[-1]
        ce = F.cross_entropy(  # (B, T), 0 where ignored
            out.logits.float().reshape(-1, vocab), labels.reshape(-1), ignore_index=IGNORE, reduction="none"
        ).view_as(labels)
        bce = F.binary_cross_entropy_with_logits(
            out.detection_logits, wrong.masked_fill(~keep, 0.0), reduction="none"
        )
        bce = bce.masked_fill(~keep, 0.0)  # (B, T)
        w = self.detection_weight
        count = keep.sum()
        detection_sum, correction_sum = bce.sum(), ce.sum()
        out.loss_sum = w * detection_sum + (1.0 - w) * correction_sum
        out.targets = count
        out.loss = out.loss_sum / count  # nan when no position has a label, as the LMs' loss
        out.detection_loss = detection_sum / count
        out.correction_loss = correction_sum / count

    def loss_sum_count(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(Σ over the labelled positions p of [w · BCE_p + (1 − w) · CE_p], their number N), fp32, for
        exact accumulation over micro-batches: sum / N equals forward's `loss` (w = detection_weight)."""
        if batch.get("labels") is None:
            raise ShapeError("loss_sum_count needs a batch with labels (the right character ids)")
        out = self(**batch)
        return out.loss_sum, out.targets
