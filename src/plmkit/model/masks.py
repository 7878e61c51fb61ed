"""Attention masks: which key each query may see.

Every family is `softmax(QKᵀ/√d + M)V` with a different M. Here masks are built as boolean
"allowed" tensors (True = may attend) of shape (B or 1, 1, T_q, T_k) and turned into the additive
float M at the end. `past` is the number of cached positions before the first query, so query i sits
at absolute position past + i while keys cover positions 0 .. T_k-1.
"""

from __future__ import annotations

import torch

from plmkit.errors import ShapeError


def causal(t_q: int, t_k: int, past: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """Left-to-right: query at position past+i sees keys at positions <= past+i. (1, 1, T_q, T_k)"""
    q = torch.arange(past, past + t_q, device=device)[:, None]
    k = torch.arange(t_k, device=device)[None, :]
    return (k <= q)[None, None]


def right_to_left(t_q: int, t_k: int, past: int = 0, device: torch.device | None = None) -> torch.Tensor:
    """UniLM's right-to-left LM: query at position p sees keys at positions >= p. (1, 1, T_q, T_k)"""
    q = torch.arange(past, past + t_q, device=device)[:, None]
    k = torch.arange(t_k, device=device)[None, :]
    return (k >= q)[None, None]


def bidirectional(t_q: int, t_k: int, device: torch.device | None = None) -> torch.Tensor:
    """Everything sees everything (BERT). (1, 1, T_q, T_k)"""
    return torch.ones(1, 1, t_q, t_k, dtype=torch.bool, device=device)


def prefix(prefix_lengths: torch.Tensor, t_q: int, t_k: int, past: int = 0) -> torch.Tensor:
    """UniLM seq2seq / prefix LM: source (positions < prefix length) sees all source; target sees
    all source and earlier target. prefix_length 0 gives causal, >= T gives bidirectional. (B, 1, T_q, T_k)"""
    q = torch.arange(past, past + t_q, device=prefix_lengths.device)[None, :, None]
    k = torch.arange(t_k, device=prefix_lengths.device)[None, None, :]
    in_source = k < prefix_lengths.view(-1, 1, 1)
    return (in_source | (k <= q))[:, None]


def padding(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T_k) with 1 = real token, 0 = padding  ->  (B, 1, 1, T_k) boolean: keys that are real."""
    return attention_mask.bool()[:, None, None, :]


def from_user(mask: torch.Tensor, batch: int, t_q: int, t_k: int) -> torch.Tensor:
    """Normalise a user mask to a boolean (B|1, 1|H, T_q|1, T_k) tensor.

    2D (B, T_k): padding mask (1 = attend). 3D (B, T_q, T_k): an arbitrary per-example mask.
    4D: (B, 1 or H, T_q, T_k), boolean (True = attend) or additive float (0 = attend).
    """
    if mask.dim() == 2:
        if mask.shape != (batch, t_k):
            raise ShapeError(
                f"attention_mask has shape {tuple(mask.shape)} but the keys need ({batch}, {t_k}) "
                "(batch, cached + new tokens)"
            )
        return padding(mask)
    if mask.dim() == 3:
        if mask.shape[0] not in (1, batch) or mask.shape[1:] != (t_q, t_k):
            raise ShapeError(
                f"3D attention_mask has shape {tuple(mask.shape)} but must be ({batch}, {t_q}, {t_k}) "
                "(batch, queries, keys)"
            )
        return mask.bool()[:, None]
    if mask.dim() == 4:
        if mask.shape[0] not in (1, batch) or mask.shape[2:] != (t_q, t_k):
            raise ShapeError(
                f"4D attention_mask has shape {tuple(mask.shape)} but must be ({batch}, 1 or heads, {t_q}, {t_k})"
            )
        return mask if mask.dtype == torch.bool else mask == 0
    raise ShapeError(f"attention_mask must be 2D, 3D or 4D, got shape {tuple(mask.shape)}")


def to_additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean allowed-mask -> additive M: 0 where allowed, the dtype's most negative value elsewhere.

    The finite minimum (not -inf) keeps rows with no allowed key (left padding) NaN-free."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)
