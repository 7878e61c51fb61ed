"""What every pre-training objective shares: a collator with its own seeded random generator.

An objective turns a list of token-id sequences into the batch dict its model family consumes
(`model(**batch)`), with -100 marking labels that carry no loss. All randomness comes from
`self.generator`, so a batch is reproducible from the seed and `state_dict()` lets a resumed run
draw exactly the masks an uninterrupted run would have drawn.

An objective is a dataclass: its fields after `tokenizer` and `seed` are its options (a recipe's
`objective.options`, checked against them before anything is built). It also declares the model it
trains: `family`, and `build_model`, which builds a plain model of that family unless the objective
needs its own (ELECTRA's generator + discriminator); `model_options` is the dataclass of the options
that `build_model` takes (a recipe's `objective.options.model`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch

from plmkit.config.fields import Range, check_ranges
from plmkit.errors import ConfigError, DataError
from plmkit.model.config import ModelConfig

Example = Sequence[int] | dict[str, Any]
# option types with their ranges: checked when a recipe is read and when an objective is built
Probability = Annotated[float, Range(ge=0, le=1, off="0", means="never")]  # that kind of change is off
Rate = Annotated[float, Range(gt=0, le=1)]  # a share of the tokens that must select some
Positive = Annotated[float, Range(gt=0)]


@dataclass(eq=False)
class Objective(abc.ABC):
    name: ClassVar[str] = ""
    family: ClassVar[str] = ""  # causal | masked | prefix | seq2seq: the model family that consumes it
    model_options: ClassVar[type | None] = None  # dataclass of build_model's options; None: it takes none

    tokenizer: Any
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges(self, f"objective {self.name!r}: ")  # the ranges declared on the options
        self.generator = torch.Generator().manual_seed(self.seed)

    @classmethod
    def build_model(cls, config: ModelConfig, **model_options: Any) -> torch.nn.Module:
        """The model this objective trains, from the recipe's model config (family already checked)."""
        from plmkit.model import build_model

        return build_model(config)

    @abc.abstractmethod
    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """The batch dict for `model(**batch)`; every objective module defines it."""

    # ---- resumability --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    # ---- helpers shared by the objectives ------------------------------------------------------
    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_id
        if pad is None:
            pad = self.tokenizer.eos_id
        if pad is None:
            raise ConfigError(f"objective {self.name!r} needs a tokenizer with a pad (or eos) token")
        return pad

    def special_ids(self) -> torch.Tensor:
        """Ids that are never masked or corrupted (all special tokens of the tokenizer)."""
        ids = {i for i in self.tokenizer.all_special_ids if i is not None}
        return torch.tensor(sorted(ids), dtype=torch.long)

    def required_id(self, role: str) -> int:
        token_id = self.tokenizer.special_id(role)
        if token_id is None:
            raise ConfigError(
                f"objective {self.name!r} needs a {role} token, but the tokenizer has none; "
                f"train the tokenizer with the {role} special token"
            )
        return token_id

    @staticmethod
    def ids_of(example: Example) -> list[int]:
        if isinstance(example, dict):
            if "input_ids" not in example:
                raise DataError(f"an example dict has no 'input_ids' (keys: {', '.join(map(str, example))})")
            ids = example["input_ids"]
        else:
            ids = example
        if len(ids) == 0:
            raise DataError("an example with no tokens reached the collator; filter empty documents first")
        if hasattr(ids, "tolist"):  # tensors and numpy arrays: one C call instead of a Python loop
            return ids.tolist()
        return [int(i) for i in ids]

    @staticmethod
    def strip_ends(ids: list[int], leading: set[int], trailing: set[int]) -> list[int]:
        """ids without one leading bos/cls and one trailing eos/sep (objectives re-add them once)."""
        start, end = 0, len(ids)
        if end - start > 1 and ids[start] in leading:
            start += 1
        if end - start > 1 and ids[end - 1] in trailing:
            end -= 1
        return ids[start:end]

    def uniform(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator)

    def pad_right(self, sequences: Sequence[Sequence[int]], value: int) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        out = torch.full((len(sequences), width), value, dtype=torch.long)
        for row, seq in enumerate(sequences):
            out[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
        return out

    def attention_mask(self, sequences: Sequence[Sequence[int]]) -> torch.Tensor:
        width = max(len(s) for s in sequences)
        lengths = torch.tensor([len(s) for s in sequences])
        return (torch.arange(width)[None, :] < lengths[:, None]).long()
