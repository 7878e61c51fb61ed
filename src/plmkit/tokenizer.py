"""Tokenizers: a thin, readable wrapper over the Rust `tokenizers` library.

`Tokenizer` holds a `tokenizers.Tokenizer` (the "backend", which does all the real work) plus the
roles of its special tokens (`SpecialTokens`: which string is eos, which is pad, ...). The wrapper
adds what the rest of plmkit needs and the backend does not know: ids by role, padding a batch into
tensors, and a small `tokenizer_config.json` that records the roles next to the backend's
`tokenizer.json`.

Training a new tokenizer: `Tokenizer.train_bpe(texts, vocab_size)` builds a GPT-2-style byte-level
BPE. Every string round-trips exactly (`decode(encode(s)) == s`): text is split into UTF-8 bytes, so
no character (Chinese, emoji, control characters) is ever unknown, and no normalizer or prefix space
alters the input.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors, trainers

from plmkit.errors import ConfigError, DataError, ShapeError, did_you_mean

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
CONFIG_VERSION = 1  # bump when tokenizer_config.json changes incompatibly

# The roles a special token can play. Adding a role = one name here + one field in SpecialTokens.
ROLES = ("bos", "eos", "pad", "unk", "mask", "cls", "sep")


@dataclass
class SpecialTokens:
    """The strings that play each special role; None when a tokenizer has no such token."""

    bos: str | None = None  # beginning of sequence
    eos: str | None = None  # end of sequence / document separator
    pad: str | None = None  # padding (never attended to, never in the loss)
    unk: str | None = None  # unknown (byte-level BPE never needs one)
    mask: str | None = None  # masked-LM corruption
    cls: str | None = None  # sequence summary (BERT)
    sep: str | None = None  # segment separator (BERT)
    additional: list[str] = field(default_factory=list)  # other specials (sentinels, chat markers)

    def tokens(self) -> list[str]:
        """Every special token string, roles first, without duplicates (a token may play two roles)."""
        found = [getattr(self, role) for role in ROLES] + list(self.additional)
        return list(dict.fromkeys(t for t in found if t is not None))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SpecialTokens:
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ConfigError(f'unknown special token role "{key}"{did_you_mean(key, known)}; '
                                  f"known roles: {', '.join(known)}")
        return cls(**d)


# GPT-2 convention: one <|endoftext|> separates documents; no bos. We add a separate pad token so
# padding can never be confused with a real end of text.
DEFAULT_BPE_SPECIAL_TOKENS = SpecialTokens(eos="<|endoftext|>", pad="<|pad|>")


class Tokenizer:
    """Text <-> token ids, with special tokens known by role. Wraps a `tokenizers.Tokenizer`."""

    def __init__(self, backend: BackendTokenizer, special_tokens: SpecialTokens | None = None):
        self.backend = backend
        self.special_tokens = special_tokens or SpecialTokens()
        # The wrapper owns padding and truncation (pad_batch); the backend returns raw ids.
        backend.no_padding()
        backend.no_truncation()
        vocab = backend.get_vocab(with_added_tokens=True)
        for token in self.special_tokens.tokens():
            if token not in vocab:
                raise ConfigError(f'special token "{token}" is not in the vocabulary'
                                  f"{did_you_mean(token, vocab)}; add it to the tokenizer or fix the config")

    # ---- vocabulary -------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self.backend.id_to_token(token_id)

    def special_id(self, role: str) -> int | None:
        """Id of the token playing `role` (one of ROLES), or None when there is none."""
        if role not in ROLES:
            raise ConfigError(f'unknown special token role "{role}"{did_you_mean(role, ROLES)}')
        token = getattr(self.special_tokens, role)
        return None if token is None else self.backend.token_to_id(token)

    @property
    def all_special_ids(self) -> list[int]:
        return [self.backend.token_to_id(t) for t in self.special_tokens.tokens()]

    bos_id = property(lambda self: self.special_id("bos"))
    eos_id = property(lambda self: self.special_id("eos"))
    pad_id = property(lambda self: self.special_id("pad"))
    unk_id = property(lambda self: self.special_id("unk"))
    mask_id = property(lambda self: self.special_id("mask"))
    cls_id = property(lambda self: self.special_id("cls"))
    sep_id = property(lambda self: self.special_id("sep"))

    # ---- encode / decode --------------------------------------------------------------------------
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. `add_special_tokens` applies the backend's template (e.g. `... eos`)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Like `encode` for many texts at once (parallel in the Rust backend)."""
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)
        return [e.ids for e in encodings]

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Sequence[Sequence[int]] | torch.Tensor,
                     skip_special_tokens: bool = True) -> list[str]:
        if isinstance(batch, torch.Tensor):
            batch = batch.tolist()
        lists = [list(ids) for ids in batch]
        return self.backend.decode_batch(lists, skip_special_tokens=skip_special_tokens)

    def pad_batch(self, batch: Sequence[Sequence[int]], padding_side: str = "right",
                  max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad id lists to one length -> (input_ids (B, T), attention_mask (B, T)), both int64.

        T is the longest sequence, or `max_length` when given (longer sequences are an error:
        truncate them first). Left padding is what batched generation with a causal LM needs.
        """
        if padding_side not in ("right", "left"):
            raise ConfigError(f'padding_side must be "right" or "left", got "{padding_side}"')
        pad_id = self.pad_id if self.pad_id is not None else self.eos_id
        if pad_id is None:
            raise ConfigError("cannot pad: the tokenizer has neither a pad nor an eos token; "
                              "set special_tokens.pad")
        longest = max((len(ids) for ids in batch), default=0)
        length = longest if max_length is None else max_length
        if longest > length:
            raise ShapeError(f"a sequence has {longest} tokens, more than max_length={max_length}; "
                             "truncate before padding")
        input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
        for row, ids in enumerate(batch):
            n = len(ids)
            cols = slice(0, n) if padding_side == "right" else slice(length - n, length)
            input_ids[row, cols] = torch.as_tensor(list(ids), dtype=torch.long)
            attention_mask[row, cols] = 1
        return input_ids, attention_mask

    # ---- training ---------------------------------------------------------------------------------
    @classmethod
    def train_bpe(cls, texts: Iterable[str], vocab_size: int, special_tokens: SpecialTokens | None = None,
                  min_frequency: int = 2) -> Tokenizer:
        """Train a GPT-2-style byte-level BPE on `texts`.

        Default special tokens: eos="<|endoftext|>", pad="<|pad|>", no bos (GPT-2 convention).
        Special tokens get the first ids (0, 1, ...), then the 256 byte symbols, then merges.
        `encode(text, add_special_tokens=True)` appends eos (and prepends bos when one is set).
        """
        special_tokens = special_tokens or dataclasses.replace(DEFAULT_BPE_SPECIAL_TOKENS)
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        minimum = len(alphabet) + len(special_tokens.tokens())
        if vocab_size < minimum:
            raise ConfigError(f"vocab_size={vocab_size} is too small for byte-level BPE: it needs at least "
                              f"{minimum} (256 bytes + {minimum - 256} special tokens)")
        backend = BackendTokenizer(models.BPE(unk_token=special_tokens.unk))
        # add_prefix_space=False: a leading space would be invented on encode and break round trips.
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                      special_tokens=special_tokens.tokens(), initial_alphabet=alphabet,
                                      show_progress=False)
        return cls._train(backend, trainer, texts, special_tokens)

    @classmethod
    def _train(cls, backend: BackendTokenizer, trainer: trainers.Trainer, texts: Iterable[str],
               special_tokens: SpecialTokens) -> Tokenizer:
        """Shared tail of every train_* method: train, then install the bos/eos template."""
        backend.train_from_iterator(iter(texts), trainer=trainer)
        post_processor = _bos_eos_template(backend, special_tokens)
        if post_processor is not None:
            backend.post_processor = post_processor
        return cls(backend, special_tokens)

    # ---- files ------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write `tokenizer.json` (the backend) and `tokenizer_config.json` (our roles) to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / TOKENIZER_FILE), pretty=True)
        config = {"plmkit_tokenizer": CONFIG_VERSION, "special_tokens": self.special_tokens.to_dict()}
        (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n",
                                             encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        """Read a tokenizer written by `save`. DataError names the missing or corrupt file."""
        directory = Path(directory)
        backend_path, config_path = directory / TOKENIZER_FILE, directory / CONFIG_FILE
        for path in (backend_path, config_path):
            if not path.is_file():
                raise DataError(f"cannot load tokenizer: {path} does not exist")
        try:
            backend = BackendTokenizer.from_file(str(backend_path))
        except Exception as e:  # the Rust side raises plain Exception on malformed JSON
            raise DataError(f"{backend_path} is not a valid tokenizers file: {e}") from e
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{config_path} is not valid JSON: {e}") from e
        # Hook: Hugging Face tokenizer_config.json files (no "plmkit_tokenizer" key) are read here later.
        if not isinstance(config, dict) or "plmkit_tokenizer" not in config:
            raise DataError(f'{config_path} is not a plmkit tokenizer config (no "plmkit_tokenizer" key)')
        if config["plmkit_tokenizer"] > CONFIG_VERSION:
            raise DataError(f"{config_path} has version {config['plmkit_tokenizer']}, newer than this "
                            f"plmkit understands ({CONFIG_VERSION}); upgrade plmkit")
        try:
            special_tokens = SpecialTokens.from_dict(config.get("special_tokens", {}))
            return cls(backend, special_tokens)
        except ConfigError as e:
            raise DataError(f"{config_path}: {e}") from e

    def __repr__(self) -> str:
        roles = {r: getattr(self.special_tokens, r) for r in ROLES if getattr(self.special_tokens, r)}
        return f"Tokenizer(vocab_size={self.vocab_size}, special_tokens={roles})"


def _bos_eos_template(backend: BackendTokenizer,
                      special_tokens: SpecialTokens) -> processors.TemplateProcessing | None:
    """`[bos] $A [eos]` (pairs: `[bos] $A [eos] $B [eos]`) for causal-LM style tokenizers."""
    bos, eos = special_tokens.bos, special_tokens.eos
    if bos is None and eos is None:
        return None
    head = f"{bos} " if bos else ""
    tail = f" {eos}" if eos else ""
    tail_b = f" {eos}:1" if eos else ""
    used = [t for t in (bos, eos) if t is not None]
    return processors.TemplateProcessing(
        single=f"{head}$A{tail}", pair=f"{head}$A{tail} $B:1{tail_b}",
        special_tokens=[(t, backend.token_to_id(t)) for t in used])
