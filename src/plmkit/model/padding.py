"""Training without computing on padding: the real tokens of a padded batch as rows.

A fine-tuning batch of short texts is mostly padding (SST-2 batches of 32 hold ~400 real tokens in ~1,250
padded positions), and every projection and feed-forward of a padded forward computes on all of it. With a
`PaddingIndex`, a bidirectional stack runs its projections, feed-forwards, norms and dropout on the real
tokens only, (N, C); attention alone goes back to the padded (B, H, T, T) layout, where the key-padding mask
already hides the padding (the same idea as BERT's "unpadding" in NVIDIA's and MosaicBERT's kernels, without
a variable-length attention kernel). The real positions get the padded forward's values; the padding
positions come out as zeros (the padded forward gives them values no loss reads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PaddingIndex:
    """Where the N real tokens of a (B, T) batch are: rows <-> padded layout."""

    batch: int  # B
    length: int  # T
    index: torch.Tensor  # (N,) long: flat positions b * T + t of the real tokens

    @classmethod
    def from_key_mask(cls, allowed: torch.Tensor) -> PaddingIndex | None:
        """From a boolean key-padding mask (B, 1, 1, T) (True = a real key); None when the batch has no
        padding (nothing to save) or the mask is not a key-padding mask."""
        if allowed.dtype != torch.bool or allowed.dim() != 4 or allowed.shape[1:3] != (1, 1):
            return None
        keep = allowed[:, 0, 0, :]  # (B, T)
        b, t = keep.shape
        index = keep.reshape(-1).nonzero().squeeze(1)  # one host sync (nonzero), none for a separate all()
        return None if index.numel() == b * t else cls(b, t, index)

    def rows(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (N, D): the real tokens' vectors."""
        return x.reshape(self.batch * self.length, x.shape[-1]).index_select(0, self.index)

    def pad(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (B, T, D), zeros at the padding."""
        flat = rows.new_zeros(self.batch * self.length, rows.shape[-1]).index_copy(0, self.index, rows)
        return flat.view(self.batch, self.length, rows.shape[-1])
