"""LoRA (Hu et al. 2021): y = W x + s · B A x, with A (r, in), B (out, r), B = 0 at start, s = alpha / r
(rsLoRA: alpha / sqrt(r)). W stays frozen; merging adds s·BA into W for inference and unmerging
subtracts it again.

Targets are Linear modules chosen by name patterns (comma-separated, or a list):
  * a dotted suffix, e.g. `attn.qkv`, `mlp.fc_out`, `classifier` (matches `...blocks.3.attn.qkv`);
  * a glob on the full or the suffix name, e.g. `encoder.blocks.*.attn.out`, `blocks.[01].mlp.*`;
  * `all-linear`: every Linear inside the blocks (attention, cross-attention, MLP); never the LM head.

Fused projections. plmkit computes q|k|v with one Linear (`attn.qkv`), cross-attention k|v with one
(`cross_attn.kv`) and a gated MLP's gate|up with one (`mlp.fc_in`). Two ways to put LoRA there:
  * target the fused module (`attn.qkv`): one A (r, C) and one B (q+k+v, r), a rank-r update of the
    whole fused output. Exported to peft as three LoRAs that share A, each with its row block of B
    (q_proj gets lora_A = A, lora_B = B[q rows]): B_q A is exactly the q block of BA.
  * target a part (`attn.q`, `attn.k`, `attn.v`, `cross_attn.k`, `cross_attn.v`, `mlp.gate`, `mlp.up`):
    a separate rank-r LoRA (A_p, B_p) that adds to that slice of the fused output only — the same model
    as LoRA on a separate q_proj, so LLaMA-style exports map one to one; GPT-2's fused c_attn gets a
    block-structured LoRA of rank r·parts (see export.py).
Both export exactly. Targeting a fused module and one of its parts at once is refused.

The LM head is not targeted by `all-linear` and cannot be targeted at all (its weight is usually tied
to the embeddings, and decoding reads the weight directly); train a task head with `train_head`.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.config.fields import Range
from plmkit.errors import ConfigError, did_you_mean
from plmkit.model.attention import Attention
from plmkit.model.dropout import Dropout
from plmkit.model.layers import MLP
from plmkit.peft.base import LinearWrapper, is_linear, set_submodule
from plmkit.peft.disable import adapters_active
from plmkit.quant.modules import dequantize_weight, requantize_

FULL = "all"  # part name of a LoRA on the whole output of its Linear


@dataclass(frozen=True)
class LoraOptions:
    r: Annotated[int, Range(ge=1)] = 8
    alpha: Annotated[float, Range(gt=0, off="null", means="2·r (scaling 2)")] | None = None
    dropout: Annotated[float, Range(ge=0, lt=1, off="0", means="no dropout")] = 0.0
    target: str | tuple[str, ...] = "attn.qkv"
    rslora: bool = False  # scaling alpha / sqrt(r) (Kalajdzievski 2023): stable at large ranks

    def validate(self) -> None:
        if not isinstance(self.r, int) or self.r <= 0:
            raise ConfigError(f"lora r must be a positive integer, got {self.r!r}")
        if self.alpha is not None and not self.alpha > 0:
            raise ConfigError(f"lora alpha must be positive, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def scaling(self) -> float:
        alpha = self.alpha if self.alpha is not None else 2.0 * self.r
        return alpha / (math.sqrt(self.r) if self.rslora else self.r)


class LoRALinear(LinearWrapper):
    """A Linear with low-rank updates on its whole output (part "all") or on named row blocks of it.

    Parameters: `weight`, `bias` (the frozen base, same names as before), `lora_A.<part>` (r, in),
    `lora_B.<part>` (rows, r). `parts[name] = (first_row, end_row)` of the output each update writes."""

    peft_children = ("lora_A", "lora_B")

    def __init__(
        self, base: nn.Module, parts: dict[str, tuple[int, int]], r: int, scaling: float, dropout: float = 0.0
    ) -> None:
        super().__init__(base)
        self.r, self.scaling = r, scaling
        self.parts = dict(sorted(parts.items(), key=lambda item: item[1]))
        like = self.float_like()
        factory = dict(device=like.device, dtype=like.dtype)
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        for name, (start, end) in self.parts.items():
            a = torch.empty(r, self.in_features, **factory)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # nn.Linear's init, as in the LoRA reference code
            self.lora_A[name] = nn.Parameter(a)
            self.lora_B[name] = nn.Parameter(torch.zeros(end - start, r, **factory))  # update = 0 at start
        self.lora_dropout = Dropout(dropout) if dropout else nn.Identity()
        self.merged = False

    def delta_weight(self, part: str) -> torch.Tensor:
        """s · B A for one part: (rows, in), computed in fp32."""
        return (self.lora_B[part].float() @ self.lora_A[part].float()) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_forward(x)
        if self.merged or not adapters_active():  # adapters_off(): the frozen base alone
            return y
        h = self.lora_dropout(x)
        updates = {
            name: F.linear(F.linear(h, self.lora_A[name]), self.lora_B[name]) * self.scaling
            for name in self.parts
        }
        if FULL in updates:
            return y + updates[FULL]
        pieces, row = [], 0  # the update of the whole output: part updates with zeros between them
        for name, (start, end) in self.parts.items():
            if start > row:
                pieces.append(y.new_zeros(*y.shape[:-1], start - row))
            pieces.append(updates[name].to(y.dtype))
            row = end
        if row < self.out_features:
            pieces.append(y.new_zeros(*y.shape[:-1], self.out_features - row))
        return y + torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        if self.quant is not None:  # a quantized base: dequantize -> add s·BA -> quantize again
            weight = dequantize_weight(self, torch.float32)
            for name, (start, end) in self.parts.items():
                weight[start:end] += self.delta_weight(name)
            requantize_(self, weight)
        else:
            for name, (start, end) in self.parts.items():
                self.weight[start:end] += self.delta_weight(name).to(self.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if self.merged and self.quant is not None:
            raise ConfigError(
                "cannot unmerge LoRA from a quantized base: merging requantized its weights, which "
                "cannot be undone exactly; load the quantized checkpoint and the adapter again"
            )
        if self.merged:
            for name, (start, end) in self.parts.items():
                self.weight[start:end] -= self.delta_weight(name).to(self.weight.dtype)
            self.merged = False

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, r={self.r}, scaling={self.scaling:g}, "
            f"parts={list(self.parts)}"
        )


# ---- targets ---------------------------------------------------------------------------------------
def fused_parts(model: nn.Module) -> dict[str, tuple[str, str, tuple[int, int]]]:
    """Virtual part names -> (fused Linear's name, part, rows): `...attn.q` -> (`...attn.qkv`, q, rows)."""
    parts: dict[str, tuple[str, str, tuple[int, int]]] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, Attention):
            q, kv = module.n_head * module.head_dim, module.n_kv_head * module.head_dim
            if module.cross:
                blocks = {"k": (0, kv), "v": (kv, 2 * kv)}
                fused = "kv"
            else:
                blocks = {"q": (0, q), "k": (q, q + kv), "v": (q + kv, q + 2 * kv)}
                fused = "qkv"
            if is_linear(getattr(module, fused)):
                for part, rows in blocks.items():
                    parts[prefix + part] = (prefix + fused, part, rows)
        elif isinstance(module, MLP) and module.gated and is_linear(module.fc_in):
            d_ff = module.fc_in.out_features // 2
            parts[prefix + "gate"] = (prefix + "fc_in", "gate", (0, d_ff))
            parts[prefix + "up"] = (prefix + "fc_in", "up", (d_ff, 2 * d_ff))
    return parts


def _is_block_module(name: str) -> bool:
    return name.startswith("blocks.") or ".blocks." in name


def short_name(name: str) -> str:
    """`encoder.blocks.3.attn.qkv` -> `attn.qkv`; names outside the blocks stay whole."""
    if not _is_block_module(name):
        return name
    after = name.split("blocks.", 1)[1]
    return after.split(".", 1)[1] if "." in after else after


def _matches(pattern: str, name: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, f"*.{pattern}")


def split_patterns(target: str | list[str] | tuple[str, ...]) -> list[str]:
    items = target.split(",") if isinstance(target, str) else list(target)
    patterns = [p.strip() for p in items if isinstance(p, str) and p.strip()]
    if not patterns or not all(isinstance(i, str) for i in items):
        raise ConfigError(
            f"lora target {target!r} is empty or not a list of names; "
            'give module names such as "attn.qkv,attn.out" or "all-linear"'
        )
    return patterns


def resolve_targets(model: nn.Module, target: str | list[str] | tuple[str, ...]) -> dict[str, dict]:
    """{Linear name: {part: rows}} selected by the patterns; every pattern must select something."""
    linears = {n: m for n, m in model.named_modules() if is_linear(m)}
    virtual = fused_parts(model)
    whole: set[str] = set()
    chosen_parts: dict[str, dict[str, tuple[int, int]]] = {}
    named_parts: set[str] = set()  # fused modules whose parts a pattern without wildcards names
    for pattern in split_patterns(target):
        if pattern == "all-linear":
            hits = [n for n in linears if _is_block_module(n)]
            part_hits: list[str] = []
        else:
            hits = [n for n in linears if _matches(pattern, n)]
            part_hits = [v for v in virtual if _matches(pattern, v)]
        if not hits and not part_hits:
            available = sorted(
                {short_name(n) for n in linears if not n.endswith("lm_head.decoder")}
                | {short_name(v) for v in virtual}
            )
            raise ConfigError(
                f'lora target "{pattern}" matches no Linear module of {type(model).__name__}'
                f"{did_you_mean(pattern, available)}; available: {', '.join(available)} "
                '(a suffix such as "attn.qkv", a glob such as "blocks.*.mlp.*", or "all-linear")'
            )
        whole.update(hits)
        for v in part_hits:
            module, part, rows = virtual[v]
            chosen_parts.setdefault(module, {})[part] = rows
            if not any(c in pattern for c in "*?["):
                named_parts.add(module)
    selected: dict[str, dict[str, tuple[int, int]]] = {}
    order = {name: i for i, name in enumerate(linears)}
    for name in sorted(whole | set(chosen_parts), key=order.__getitem__):
        # naming parts of a module that is also targeted whole is a contradiction; a wildcard that
        # happens to cover both (e.g. "attn.*") just selects the whole module
        if name in whole and name in named_parts:
            raise ConfigError(
                f"lora targets select both {name} and its parts {', '.join(sorted(chosen_parts[name]))}; "
                "choose the fused module or its parts, not both"
            )
        rows = (0, linears[name].out_features)
        selected[name] = {FULL: rows} if name in whole else chosen_parts[name]
    _refuse_shared(model, selected)
    return selected


def _refuse_shared(model: nn.Module, selected: dict[str, dict]) -> None:
    counts: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        counts.setdefault(id(param), []).append(name)
    for name in selected:
        owners = counts[id(model.get_submodule(name).weight)]
        if len(owners) > 1 or name.endswith("lm_head.decoder"):
            raise ConfigError(
                f"lora cannot target {name}: its weight is the LM head ({' = '.join(owners)}), tied to the "
                "embeddings and read directly while decoding; target the blocks (e.g. all-linear)"
            )


def apply_lora(model: nn.Module, options: LoraOptions) -> list[str]:
    """Wrap the selected Linears in place; returns their names."""
    options.validate()
    selected = resolve_targets(model, options.target)
    for name, parts in selected.items():
        linear = model.get_submodule(name)
        if isinstance(linear, LoRALinear):
            raise ConfigError(f"{name} already carries LoRA")
        set_submodule(model, name, LoRALinear(linear, parts, options.r, options.scaling, options.dropout))
    return list(selected)


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALinear)]


def unload(model: nn.Module) -> None:
    """Replace every LoRALinear by its plain Linear (call after merging: the LoRA factors are dropped)."""
    for name, module in lora_modules(model):
        set_submodule(model, name, module.to_linear())
