"""sentence-transformers folders: how a bare encoder turns hidden states into a sentence embedding.

Such a folder is a Hugging Face model (config.json + weights) plus `modules.json`, which lists the
modules applied in order: Transformer (the encoder; `sentence_bert_config.json` gives its
max_seq_length), Pooling (`1_Pooling/config.json`: one of the pooling_mode_* switches) and optionally
Normalize (L2). plmkit reads them into TransformerModel's `pooling`, `normalize` and `max_length`, and
writes them back when it exports a bare encoder, so sentence-transformers loads the export as it was.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from plmkit.errors import CheckpointError

# 1_Pooling/config.json switch -> plmkit pooling (plmkit.model.heads.EMBED_POOLINGS)
POOLING_MODES = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "last",
}
_ST = "sentence_transformers.models."


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; the sentence-transformers folder is incomplete") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def read_sentence_transformers(directory: Path) -> dict[str, Any]:
    """TransformerModel keyword arguments (pooling, normalize, max_length) from `directory`'s
    modules.json; {} when it has none. A module plmkit does not apply (Dense, ...) is an error: the
    embeddings would silently differ from sentence-transformers'."""
    path = directory / "modules.json"
    if not path.is_file():
        return {}
    modules = _json(path)
    if not isinstance(modules, list):
        raise CheckpointError(f"{path} must be a list of modules, got {type(modules).__name__}")
    settings: dict[str, Any] = {"normalize": False}
    for module in modules:
        kind = str(module.get("type", "")) if isinstance(module, dict) else ""
        folder = directory / str(module.get("path", "")) if isinstance(module, dict) else directory
        if kind == _ST + "Transformer":
            if folder.resolve() != directory.resolve():
                raise CheckpointError(
                    f"{path}: the encoder lives in {folder.name}/; load that folder (plmkit reads the "
                    "encoder from the folder's own config.json)"
                )
            config = folder / "sentence_bert_config.json"
            if config.is_file() and isinstance(_json(config).get("max_seq_length"), int):
                settings["max_length"] = _json(config)["max_seq_length"]
        elif kind == _ST + "Pooling":
            settings["pooling"] = _pooling(folder / "config.json")
        elif kind == _ST + "Normalize":
            settings["normalize"] = True
        else:
            raise CheckpointError(
                f"{path}: module {kind or module!r} is not supported (plmkit applies Transformer, Pooling "
                "and Normalize); its embeddings would differ from sentence-transformers'"
            )
    return settings


def _pooling(path: Path) -> str:
    config = _json(path)
    modes = [ours for key, ours in POOLING_MODES.items() if isinstance(config, dict) and config.get(key)]
    if len(modes) != 1:
        raise CheckpointError(
            f"{path} enables {len(modes)} pooling modes ({', '.join(modes) or 'none'}); plmkit applies "
            f"exactly one of {', '.join(POOLING_MODES)}"
        )
    return modes[0]


def write_sentence_transformers(model: Any, directory: Path) -> None:
    """modules.json, 1_Pooling/config.json and sentence_bert_config.json for a bare encoder."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": _ST + "Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": _ST + "Pooling"})
    if model.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _ST + "Normalize"})
        (directory / "2_Normalize").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": model.config.d_model}
    pooling.update({key: ours == model.pooling for key, ours in POOLING_MODES.items()})
    (directory / "1_Pooling").mkdir(exist_ok=True)
    _write(directory / "1_Pooling" / "config.json", pooling)
    _write(directory / "modules.json", modules)
    max_length = model.max_length or model.config.max_positions
    _write(directory / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})


def _write(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
