"""ELECTRA's model (Clark et al. 2020): a small MLM generator and a replaced-token-detection discriminator.

The batches come from `plmkit.data.objectives.electra.ElectraObjective` (MLM masking with ELECTRA's
proportions). The generator (a small `MaskedLM`) fills the masked positions by sampling from its softmax
(no gradient flows through the sample), the discriminator (a bidirectional `TransformerModel` stack + a
dense/act/dense(1) head) labels every real token as original (0) or replaced (1). A sampled token equal to
the original counts as original, as in the paper. loss = generator MLM loss + λ · discriminator loss, λ = 50.

The generator keeps the discriminator's d_model so the two share ONE token embedding (and position and
segment embeddings), the "tied embeddings" setting of the paper; it is smaller in layers, heads and MLP
width. After pre-training, `pretrainer.discriminator` is the model to fine-tune (its weights are named
`transformer.*` like every plmkit head model).

    model = build_electra(ModelConfig(family="masked", vocab_size=V, d_model=256, n_layer=12, n_head=4))
    out = model(**batch)            # out.loss, out.generator_loss, out.discriminator_loss, accuracies
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.errors import ConfigError
from plmkit.model.config import ModelConfig
from plmkit.model.heads import TransformerModel
from plmkit.model.layers import activation_fn
from plmkit.model.pretrained import self_attention_allowed
from plmkit.model.transformer import MaskedLM


@dataclass
class ElectraOutput:
    loss: torch.Tensor  # generator_loss + disc_weight * discriminator_loss
    generator_loss: torch.Tensor  # MLM cross-entropy at the masked positions
    discriminator_loss: torch.Tensor  # binary cross-entropy over the real tokens
    logits: torch.Tensor  # (B, T) discriminator logits (> 0: "replaced")
    corrupted_ids: torch.Tensor  # (B, T) the discriminator's input
    replaced: torch.Tensor  # (B, T) bool, the discriminator's labels (corrupted != original, real tokens)
    num_masked: int
    num_replaced: int
    generator_accuracy: float  # generator's argmax == original, at the masked positions
    discriminator_accuracy: float  # over the real tokens
    replaced_accuracy: float  # discriminator accuracy on the replaced tokens only (nan when none)

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]


class ReplacedTokenDetectionHead(nn.Module):
    """ELECTRA's discriminator head: dense, activation, dense to one logit per token."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.act = activation_fn(config.activation)
        self.out = nn.Linear(config.d_model, 1)
        for layer in (self.dense, self.out):  # BERT/ELECTRA initialisation
            nn.init.normal_(layer.weight, 0.0, config.initializer_range)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T)
        return self.out(self.act(self.dense(h))).squeeze(-1)


class ElectraPretrainer(nn.Module):
    def __init__(
        self,
        generator: MaskedLM,
        discriminator: TransformerModel,
        disc_weight: float = 50.0,
        temperature: float = 1.0,
        seed: int = 0,
        sampling_generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if generator.config.d_model != discriminator.config.d_model:
            raise ConfigError(
                f"electra: generator d_model {generator.config.d_model} != discriminator d_model "
                f"{discriminator.config.d_model}; tied embeddings need the same width"
            )
        self.generator = generator
        self.discriminator = discriminator
        self.rtd_head = ReplacedTokenDetectionHead(discriminator.config)
        self.disc_weight = disc_weight
        self.temperature = temperature
        self.seed = seed
        self.sampling_generator = sampling_generator  # created lazily on the model's device
        self.config = discriminator.config  # what checkpoints record (plmkit.io, resume checks)
        self.tie_embeddings()

    @classmethod
    def from_config(cls, config: ModelConfig, **kwargs) -> ElectraPretrainer:
        """Rebuild from a checkpoint's config and init_kwargs (see plmkit.io)."""
        return build_electra(config, **kwargs)

    def init_kwargs(self) -> dict:
        g = self.generator.config
        return {
            "generator_layers": g.n_layer,
            "generator_heads": g.n_head,
            "generator_d_ff": g.d_ff,
            "disc_weight": self.disc_weight,
            "temperature": self.temperature,
            "seed": self.seed,
        }

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the blocks of both stacks (generator and discriminator) during backward."""
        self.generator.set_gradient_checkpointing(enabled)
        self.discriminator.set_gradient_checkpointing(enabled)

    def rng_state_dict(self) -> dict:
        """The replacement sampler's state, so a resumed run draws the same replacements."""
        return {"sampling": None if self.sampling_generator is None else self.sampling_generator.get_state()}

    def load_rng_state_dict(self, state: dict) -> None:
        if state.get("sampling") is not None:
            self._rng(next(self.parameters()).device).set_state(state["sampling"])

    def tie_embeddings(self) -> None:
        """Generator and discriminator share token, position and segment embeddings (same Parameters);
        the generator's output projection stays tied to the shared token embedding."""
        shared = self.discriminator.transformer.embed
        own = self.generator.transformer.embed
        for name in ("tokens", "positions", "token_types", "block_positions"):
            if getattr(own, name, None) is not None and getattr(shared, name, None) is not None:
                setattr(own, name, getattr(shared, name))
        if self.generator.config.tie_embeddings:
            self.generator.lm_head.decoder.weight = shared.tokens.weight

    def _rng(self, device: torch.device) -> torch.Generator:
        if self.sampling_generator is None or self.sampling_generator.device != device:
            self.sampling_generator = torch.Generator(device=device).manual_seed(self.seed)
        return self.sampling_generator

    @torch.no_grad()
    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One token per row of (N, V) generator logits, from softmax(logits / temperature)."""
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self._rng(logits.device)).squeeze(-1)

    def forward(
        self,
        input_ids: torch.Tensor,  # (B, T) with [MASK] at the masked positions
        attention_mask: torch.Tensor | None = None,  # (B, T) 1 real, 0 padding
        labels: torch.Tensor | None = None,  # (B, T) original ids at masked positions, -100 elsewhere
        token_type_ids: torch.Tensor | None = None,
    ) -> ElectraOutput:
        if labels is None:
            raise ConfigError("ElectraPretrainer needs labels (the original ids at the masked positions)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        masked = labels != -100  # (B, T)
        original = torch.where(masked, labels, input_ids)

        # generator: MLM, logits only where something is predicted
        gen = self.generator
        gen._check(input_ids)
        b, t = input_ids.shape
        allowed, _ = self_attention_allowed("bidirectional", b, t, 0, input_ids.device, attention_mask)
        h, _ = gen.transformer(input_ids, allowed, token_type_ids=token_type_ids)
        gen_logits = gen.lm_head(h[masked])  # (N, V)
        targets = labels[masked]
        if targets.numel():
            generator_loss = F.cross_entropy(gen_logits.float(), targets)
        else:  # nothing masked in this batch: no MLM signal, keep the graph valid
            generator_loss = gen_logits.sum() * 0.0

        # corrupt: sampled tokens at the masked positions (no gradient through the sample)
        corrupted = input_ids.clone()
        corrupted[masked] = self.sample(gen_logits.detach())  # elsewhere input_ids == original
        real = attention_mask.bool()
        replaced = (corrupted != original) & real

        # discriminator: replaced-token detection on every real token
        h_disc = self.discriminator(corrupted, attention_mask, token_type_ids).hidden_states
        logits = self.rtd_head(h_disc)  # (B, T)
        discriminator_loss = F.binary_cross_entropy_with_logits(logits[real].float(), replaced[real].float())
        loss = generator_loss + self.disc_weight * discriminator_loss

        with torch.no_grad():
            predicted = logits > 0
            correct = (predicted == replaced) & real
            n_replaced = int(replaced.sum())
            gen_acc = (
                (gen_logits.argmax(-1) == targets).float().mean() if targets.numel() else torch.tensor(0.0)
            )
        return ElectraOutput(
            loss=loss,
            generator_loss=generator_loss,
            discriminator_loss=discriminator_loss,
            logits=logits,
            corrupted_ids=corrupted,
            replaced=replaced,
            num_masked=int(masked.sum()),
            num_replaced=n_replaced,
            generator_accuracy=float(gen_acc),
            discriminator_accuracy=float(correct.sum()) / max(int(real.sum()), 1),
            replaced_accuracy=float((correct & replaced).sum()) / n_replaced if n_replaced else float("nan"),
        )


def _divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, max(limit, 1) + 1) if n % d == 0)


def build_electra(
    disc_config: ModelConfig,
    generator_layers: int | None = None,
    generator_heads: int | None = None,
    generator_d_ff: int | None = None,
    disc_weight: float = 50.0,
    temperature: float = 1.0,
    seed: int = 0,
) -> ElectraPretrainer:
    """Discriminator from `disc_config`; generator with the same d_model and, by default, half the
    layers, a quarter of the heads and a quarter of the MLP width (ELECTRA's generator is 1/4-1/2 the
    discriminator's size). `seed` seeds the replacement sampling; weights are initialised from torch's
    global RNG like every plmkit model (seed it with torch.manual_seed for reproducible weights)."""
    disc_config = disc_config.replace(family="masked")
    heads = generator_heads or _divisor_at_most(disc_config.n_head, disc_config.n_head // 4)
    gen_config = disc_config.replace(
        n_layer=generator_layers or max(1, disc_config.n_layer // 2),
        n_head=heads,
        n_kv_head=None,
        d_ff=generator_d_ff or max(1, disc_config.d_ff // 4),
        tie_embeddings=True,
    )
    return ElectraPretrainer(
        MaskedLM(gen_config), TransformerModel(disc_config), disc_weight, temperature, seed
    )
