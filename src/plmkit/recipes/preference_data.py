"""The preference recipes' data (`plm reward`, `plm dpo`): the `data` section, and its splits read into
tokenized examples (plmkit.prompting.preferences does the rows, texts and tokens).

    data:
      train: ../shared/data/hh_rlhf_harmless_base/test.jsonl
      train_rows: "300:"          # python slices of the rows read: the first 300 are held out as dev
      dev: ../shared/data/hh_rlhf_harmless_base/test.jsonl
      dev_rows: ":300"
      format: hh                  # pairs | hh | sharegpt | ranked
      max_length: 256             # tokens per prompt + response (the response is cut from the right)
      max_prompt_length: 192      # optional: the prompt keeps its last N tokens
      identical: skip             # chosen == rejected: skip and count (default), or error
      on_error: raise             # a bad row (file:line): raise, or skip and count

A row whose prompt leaves no room for a response token (`data.max_length`) is a bad row: an error naming
the row and the fix, or with `on_error: skip` skipped and counted as "prompt longer than the context".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from plmkit.config.fields import Range
from plmkit.data.sources import SkipReport
from plmkit.data.tasks import read_split
from plmkit.data.tasks.rows import TASK_FORMATS, TaskDataConfig, rows_slice
from plmkit.errors import ConfigError, DataError
from plmkit.prompting.chat import ChatTemplate
from plmkit.prompting.preferences import (
    FORMAT_COLUMNS,
    Preference,
    PromptTooLong,
    encode_response,
    preference_from_row,
    render_preference,
)

PreferenceFormat = Literal["pairs", "hh", "sharegpt", "ranked"]
IDENTICAL = "chosen identical to rejected"
TOO_LONG = "prompt longer than the context"
UNUSABLE = "row that is not a usable preference"


@dataclass
class PreferenceDataConfig:
    """The `data` section of `plm reward` and `plm dpo`."""

    train: str | None = None  # a file (.jsonl .json .csv .tsv .parquet, each also .gz) or a datasets folder
    dev: str | None = None  # held-out pairs: pair accuracy (reward), reward accuracy and margins (dpo)
    format: PreferenceFormat = "pairs"  # pairs | hh | sharegpt | ranked (plmkit.prompting.preferences)
    format_options: dict[str, Any] = field(default_factory=dict)  # sharegpt: role_map
    file_format: Literal[TASK_FORMATS] = "auto"  # how the file is stored (auto: from its suffix)
    columns: dict[str, str] = field(default_factory=dict)  # the format's key -> the file's column
    on_error: Literal["raise", "skip"] = "raise"  # skip: bad rows are counted and reported
    identical: Literal["skip", "error"] = "skip"  # chosen == rejected (any two of a ranking): count or fail
    train_rows: str | None = None  # "START:END", a python slice of the rows read
    dev_rows: str | None = None
    max_length: Annotated[int, Range(ge=2)] = 512  # tokens per prompt + response
    max_prompt_length: Annotated[int, Range(ge=1, off="null", means="the whole prompt")] | None = None

    def __post_init__(self) -> None:
        for split in ("train", "dev"):
            rows_slice(getattr(self, f"{split}_rows"), f"data.{split}_rows")
        unknown = [k for k in self.format_options if k != "role_map" or self.format != "sharegpt"]
        if unknown:
            raise ConfigError(
                f"data.format_options.{unknown[0]}: format {self.format} has "
                + ("one option, role_map" if self.format == "sharegpt" else "no options")
            )
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ConfigError(
                f"data.max_prompt_length={self.max_prompt_length} leaves no room for the response in "
                f"data.max_length={self.max_length}; set it below max_length"
            )

    def task_data(self) -> TaskDataConfig:
        """The rows' reader settings (plmkit.data.tasks.read_split)."""
        return TaskDataConfig(
            train=self.train,
            dev=self.dev,
            format=self.file_format,
            columns=dict(self.columns),
            on_error=self.on_error,
            train_rows=self.train_rows,
            dev_rows=self.dev_rows,
        )


@dataclass
class Encoding:
    """How texts become token ids for one recipe's model (plmkit.prompting.preferences.encode_response)."""

    tokenizer: Any
    template: ChatTemplate | None  # renders conversations; None: HH transcripts (an encoder's default)
    causal: bool  # prompt + response with labels on the response; else the encoder's pair template
    append_eos: bool = True  # plain-text responses end with EOS (a template ends its turns itself)


@dataclass
class PreferenceExample:
    responses: list[dict[str, list[int]]]  # best first: [chosen, rejected] for a pair
    margin: float | None
    where: str


@dataclass
class PreferenceSplit:
    name: str  # train / dev
    path: str
    examples: list[PreferenceExample]
    skipped: SkipReport  # rows not read, identical responses, prompts with no room (on_error=skip)


def read_preference_split(
    data: PreferenceDataConfig, split: str, encoding: Encoding, margin: bool = False
) -> PreferenceSplit:
    """The examples of data.<split>; `margin`: read the optional margin column (the reward model's)."""
    required, optional = FORMAT_COLUMNS[data.format]
    optional = tuple(c for c in optional if margin or c != "margin")
    rows = read_split(data.task_data(), split, required, optional)
    skipped, examples = rows.skipped, []
    role_map = data.format_options.get("role_map")
    for row in rows.rows:
        try:
            preference = preference_from_row(row.values, data.format, row.where, role_map)
            example = encode_preference(preference, data, encoding)
        except PromptTooLong:
            if data.on_error == "raise":
                raise
            skipped.add(TOO_LONG, row.where)
            continue
        except DataError as e:
            if data.on_error == "raise":
                raise DataError(f"{e} (or set data.on_error=skip to skip and count such rows)") from None
            skipped.add(UNUSABLE, row.where)
            continue
        if example is None:  # two responses are the same text
            if data.identical == "error":
                raise DataError(
                    f"{row.where}: chosen and rejected are the same text, so the pair teaches nothing; fix the "
                    "row, or set data.identical=skip to skip and count such rows"
                )
            skipped.add(IDENTICAL, row.where)
            continue
        examples.append(example)
    if not examples:
        raise DataError(
            f"data.{split} {rows.path} has no usable preference ({skipped}); fix the rows, data.format or "
            "data.columns"
        )
    return PreferenceSplit(split, rows.path, examples, skipped)


def encode_preference(
    preference: Preference, data: PreferenceDataConfig, encoding: Encoding
) -> PreferenceExample | None:
    """The tokenized responses of one preference; None when two of its responses are the same text."""
    prompt, texts = render_preference(preference, encoding.template, encoding.tokenizer)
    if len(set(texts)) < len(texts):
        return None
    plain = not preference.conversational
    responses = [
        encode_response(
            encoding.tokenizer,
            prompt,
            text,
            max_length=data.max_length,
            max_prompt_length=data.max_prompt_length,
            causal=encoding.causal,
            append_eos=encoding.append_eos and plain,
            bos=plain,
            where=preference.where,
        )
        for text in texts
    ]
    return PreferenceExample(responses, preference.margin, preference.where)
