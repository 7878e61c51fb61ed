"""Argument checks shared by the align losses: one wording for a shape mismatch and a bad choice."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from plmkit.errors import ConfigError, ShapeError, did_you_mean


def same_shape(where: str, **tensors: torch.Tensor) -> None:
    """Raise ShapeError unless every tensor has the first one's shape."""
    (first, reference), *rest = tensors.items()
    for name, tensor in rest:
        if tensor.shape != reference.shape:
            raise ShapeError(
                f"{where}: {name} has shape {tuple(tensor.shape)} but {first} has {tuple(reference.shape)}; "
                "pass tensors of one shape"
            )


def choice(where: str, key: str, value: str, choices: Iterable[str]) -> None:
    """Raise ConfigError unless `value` is one of `choices`."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(
            f"{where}: {key}={value!r} is not one of {', '.join(choices)}{did_you_mean(str(value), choices)}"
        )
