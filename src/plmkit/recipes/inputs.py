"""A recipe's inputs before any model is built: its tokenizer (given, the base model's, this run's, the
resumed checkpoint's, or trained now) and the `init_from` base it continues from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from plmkit.data import iter_source_texts
from plmkit.errors import CheckpointError, ConfigError, DataError
from plmkit.recipes.config import RecipeConfig


def build_tokenizer(config: RecipeConfig, run_dir: Path, resume_from: Path | None = None) -> Any:
    """An existing tokenizer (recipe path, the init checkpoint's, this run's, or the resumed checkpoint's),
    else one trained now. A resume never trains one: it writes nothing before its checks pass."""
    from plmkit.tokenizer import Tokenizer

    own = run_dir / "tokenizer"
    if config.tokenizer.path:
        return load_tokenizer_folder(Path(config.tokenizer.path))
    if config.init_from:  # the base model's own tokenizer
        check_init_from(config)
        return load_tokenizer_folder(Path(config.init_from))
    if (own / "tokenizer.json").is_file():  # trained by an earlier start of this run
        return Tokenizer.load(own)
    if resume_from is not None:  # a branch from another folder's checkpoint, which holds its tokenizer
        return load_tokenizer_folder(resume_from)
    if not config.data.sources:
        raise ConfigError(
            "the recipe has no data.sources to train a tokenizer on; add data.sources or tokenizer.path"
        )
    t = config.tokenizer
    tokenizer = Tokenizer.train(
        iter_source_texts(config.data.sources), kind=t.kind, vocab_size=t.vocab_size, family=t.family
    )
    tokenizer.save(own)
    # use the saved copy: a resumed run reads these files, and must see the very same tokenizer
    # (Unigram scores can change in the last digit when written), or its token-store cache key differs
    return Tokenizer.load(own)


def load_tokenizer_folder(path: Path) -> Any:
    """A plmkit tokenizer folder, or a Hugging Face model / tokenizer folder."""
    from plmkit.tokenizer import Tokenizer
    from plmkit.tokenizer.hf import load_hf_tokenizer

    if not path.exists():
        raise DataError(
            f"tokenizer.path {path} does not exist; set it to a tokenizer or model folder, "
            "or leave it empty to train a tokenizer on data.sources"
        )
    if (path / "tokenizer_config.json").is_file():
        try:
            return Tokenizer.load(path)
        except DataError:
            pass  # a Hugging Face folder: its tokenizer_config.json is not ours
    return load_hf_tokenizer(path)


def check_init_from(config: RecipeConfig) -> None:
    """CheckpointError unless init_from is a folder. The message says that it is the base this recipe
    continues from (often another recipe's output, e.g. lora-clm's is gpt-clm's) and how to make it."""
    if not config.init_from or Path(config.init_from).is_dir():
        return
    path = Path(config.init_from)
    start = f"init_from {path} does not exist" if not path.exists() else f"init_from {path} is not a folder"
    folder = path.parent
    if folder.name != "checkpoints":  # a model folder, not a run's checkpoint
        raise CheckpointError(
            f"{start}: {config.name} continues from that model; set init_from= to a plmkit checkpoint "
            "or a Hugging Face model folder"
        )
    run = folder.parent
    recipe = Path("recipes") / f"{run.name}.yaml"  # a shipped recipe writes runs/<its name>
    base = f"{run.name}'s checkpoint" if recipe.is_file() else f"a checkpoint of the run in {run}"
    done = sorted(p.name for p in folder.glob("step-*") if p.is_dir()) if folder.is_dir() else []
    if done:  # the base run exists but has not written this step (yet)
        how = f"{folder} has {', '.join(done)}: set init_from= to one of them or finish that run"
    else:
        first = f"run plm pretrain {recipe}" if recipe.is_file() else "train that run"
        how = f"{first} first or set init_from= to a plmkit or Hugging Face model folder"
    raise CheckpointError(f"{start}: {config.name} continues from {base}; {how}")


# the model section's only keys that apply to an init_from checkpoint (load_init_from)
INIT_FROM_MODEL_KEYS = ("dropout", "attention_dropout")


def ignored_model_keys(config: Any) -> list[str]:
    """The model.* keys (preset included) that a run from init_from ignores: the checkpoint is the
    architecture, and only the dropout rates apply to it."""
    if not config.init_from:
        return []
    from plmkit.config.fields import given_fields

    return sorted(k for k in given_fields(config.model) if k not in INIT_FROM_MODEL_KEYS)


def load_init_from(config: Any, lm_head: bool = False) -> Any:
    """init_from's model (plmkit.io.load: eval mode, the checkpoint's own dropout rates) with the recipe's
    model.dropout / model.attention_dropout when set: the model section's only keys that apply to a
    checkpoint (like transformers' from_pretrained(..., hidden_dropout_prob=0.0)); the others describe a
    model built from scratch: a warning names any that is set."""
    from plmkit.io import load
    from plmkit.model.dropout import set_dropout_rates
    from plmkit.train.distributed.launch import is_rank_zero
    from plmkit.train.logging import warn

    if (ignored := ignored_model_keys(config)) and is_rank_zero():  # said once, not by every rank
        warn(
            f"init_from={config.init_from}: the model comes from that checkpoint, so the recipe's "
            f"{', '.join(f'model.{k}' for k in ignored)} are ignored (only model.dropout and "
            "model.attention_dropout apply to it); remove them (or init_from) to silence this"
        )

    model, _ = load(config.init_from, lm_head=lm_head)
    given = config.model.overrides()
    set_dropout_rates(model, given.get("dropout"), given.get("attention_dropout"))
    return model
