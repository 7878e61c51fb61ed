"""Label vocabularies (class name <-> class id) built from the train split, and regression targets.

    vocab = LabelVocab.from_rows(train.rows)        # names sorted: 0 < 1 < 2 numerically, else as strings
    vocab.encode(row.values["label"], row.where)     # -> class id; a label the train split lacks: DataError
    vocab.save(run_folder)                           # labels.json, so that a checkpoint names its classes

Labels are compared by their text (`label_name`): the 1 of a .jsonl file and the "1" of a .tsv file are
the same class, so train and dev may come in different formats.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plmkit.errors import CheckpointError, DataError, ShapeError
from plmkit.files import atomic_file, make_folder, read_json

if TYPE_CHECKING:
    from plmkit.data.tasks.rows import Row

LABELS_FILE = "labels.json"
_INT = re.compile(r"-?\d+")
_SHOWN = 10  # label names listed in an error message


def label_name(value: Any) -> str:
    """The text of a label value: strings as they are, 1 and 1.0 as "1", JSON true as "true"."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    raise TypeError(f"a label is a string or a number, not {type(value).__name__}")


def _name_at(value: Any, where: str, column: str) -> str:
    try:
        return label_name(value)
    except TypeError as e:
        raise DataError(
            f"{where}: {column} {value!r}: {e}; fix the row or map data.columns.{column}"
        ) from None


@dataclass
class LabelVocab:
    """Class names (label values as strings); a class id is the index into `names`."""

    names: list[str]
    _ids: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.names = [str(n) for n in self.names]
        self._ids = {name: i for i, name in enumerate(self.names)}
        if len(self._ids) != len(self.names):
            duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
            raise DataError(f"label names must be unique; repeated: {', '.join(duplicates)}")

    @classmethod
    def from_rows(cls, rows: Sequence[Row], column: str = "label", split_path: str = "") -> LabelVocab:
        """The labels of `rows` (the train split), sorted numerically when every one is an integer
        ("-1", "0", "2", "10"), else as strings; a list-valued column (token tags) gives each element."""
        seen: set[str] = set()
        for row in rows:
            value = row.values.get(column)
            if value is None:
                raise DataError(f"{row.where}: no {column}; every train row needs one to build the label set")
            for item in value if isinstance(value, (list, tuple)) else [value]:
                seen.add(_name_at(item, row.where, column))
        if not seen:
            raise DataError(
                f"{split_path or 'the train split'}: no {column} values to build the label set from"
            )
        numeric = all(_INT.fullmatch(n) for n in seen)
        return cls(sorted(seen, key=lambda n: (int(n), n)) if numeric else sorted(seen))

    def encode(self, value: Any, where: str) -> int:
        """The class id of `value`; DataError at `where` for a label the train split did not have."""
        name = _name_at(value, where, "label")
        index = self._ids.get(name)
        if index is None:
            shown = ", ".join(self.names[:_SHOWN]) + (", ..." if len(self.names) > _SHOWN else "")
            raise DataError(
                f"{where}: label {name!r} is not in the label set built from the train split ({shown}); "
                "fix the row or add rows with that label to data.train"
            )
        return index

    def decode(self, index: int) -> str:
        if not 0 <= int(index) < len(self.names):
            raise ShapeError(f"class id {index} is out of range for {len(self.names)} labels")
        return self.names[int(index)]

    def __len__(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelVocab:
        names = d.get("names") if isinstance(d, dict) else None
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            raise CheckpointError(f'a label set is {{"names": ["neg", "pos", ...]}}, got {str(d)[:80]}')
        return cls(names)

    def save(self, folder: Path) -> None:
        """folder/labels.json, written atomically."""
        make_folder(folder)
        with atomic_file(Path(folder) / LABELS_FILE) as f:
            f.write(json.dumps(self.to_dict(), ensure_ascii=False, indent=1).encode("utf-8"))

    @classmethod
    def load(cls, folder: Path) -> LabelVocab:
        path = Path(folder) / LABELS_FILE
        data = read_json(path, "label set")
        try:
            return cls.from_dict(data)
        except (CheckpointError, DataError) as e:
            raise CheckpointError(f"{path} is corrupt: {e}") from None


def regression_targets(rows: Sequence[Row], column: str = "label") -> list[float]:
    """The `column` of every row as a float (a number, or a string such as "3.8" from a .tsv)."""
    targets = []
    for row in rows:
        value = row.values.get(column)
        try:
            if isinstance(value, bool) or value is None:
                raise ValueError
            target = float(value)
        except (TypeError, ValueError):
            raise DataError(
                f"{row.where}: {column} {value!r} is not a number; a regression target must be one "
                f"(fix the row, or map data.columns.{column} to the column of scores)"
            ) from None
        if not math.isfinite(target):
            raise DataError(f"{row.where}: {column} {value!r} is not a finite number; fix the row")
        targets.append(target)
    return targets
