"""Tokenizers: a thin, readable wrapper over the Rust `tokenizers` library.

`Tokenizer` holds a `tokenizers.Tokenizer` (the "backend", which does all the real work) plus the
roles of its special tokens (`SpecialTokens`: which string is eos, which is pad, ...). The wrapper
adds what the rest of plmkit needs and the backend does not know: ids by role, padding a batch into
tensors, the chat template (Jinja source, Hugging Face's format; see plmkit.prompting.chat) that training
and generation share, and a small `tokenizer_config.json` that records the roles and the template next
to the backend's `tokenizer.json`.

Training a new tokenizer: `Tokenizer.train(texts, kind, vocab_size=N, family=...)` with kind
"bpe" (GPT-2 byte-level BPE, exact round trips), "wordpiece" (Chinese-BERT style: one token per CJK
character, `##` continuations) or "unigram" (T5-style SentencePiece); see `plmkit.tokenizer.train`.
Each model family has its default special tokens (`family_special_tokens`), in the id order of
its reference tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer as BackendTokenizer

from plmkit.errors import ConfigError, DataError, ShapeError, did_you_mean
from plmkit.tokenizer.special import ROLES, SENTINEL, SpecialTokens

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
CONFIG_VERSION = 1  # bump when tokenizer_config.json changes incompatibly


class Tokenizer:
    """Text <-> token ids, with special tokens known by role. Wraps a `tokenizers.Tokenizer`."""

    def __init__(
        self,
        backend: BackendTokenizer,
        special_tokens: SpecialTokens | None = None,
        chat_template: str | None = None,
    ):
        self.backend = backend
        self.special_tokens = special_tokens or SpecialTokens()
        if chat_template is not None and not isinstance(chat_template, str):
            raise ConfigError(f"chat_template must be a Jinja string, got {type(chat_template).__name__}")
        self.chat_template = chat_template  # saved with the tokenizer, so the checkpoint keeps its format
        # The wrapper owns padding and truncation (pad_batch); the backend returns raw ids.
        backend.no_padding()
        backend.no_truncation()
        vocab = backend.get_vocab(with_added_tokens=True)
        for token in self.special_tokens.tokens():
            if token not in vocab:
                raise ConfigError(
                    f'special token "{token}" is not in the vocabulary'
                    f"{did_you_mean(token, vocab)}; add it to the tokenizer or fix the config"
                )
        # Every special token, `additional` ones included, must be special to the backend too: then
        # "<sop>" in a text stays one token and decode(skip_special_tokens=True) drops it. Ids of
        # tokens already in the vocabulary do not change.
        registered = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        missing = [t for t in self.special_tokens.tokens() if t not in registered]
        if missing:
            backend.add_special_tokens(missing)

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

    def special_token_id(self, token: str) -> int:
        """Id of a special token by its string, e.g. "[gMASK]" or "<sop>" (ConfigError when the
        tokenizer has no such special token)."""
        specials = self.special_tokens.tokens()
        if token not in specials:
            raise ConfigError(
                f'the tokenizer has no special token "{token}"{did_you_mean(token, specials)}; '
                'train it with that token (e.g. family="glm") or add it to special_tokens'
            )
        return self.backend.token_to_id(token)

    def sentinel_ids(self, n: int) -> list[int]:
        """Ids of the T5 sentinels <extra_id_0> ... <extra_id_{n-1}> (descending, T5's order)."""
        specials = set(self.special_tokens.tokens())
        missing = [SENTINEL.format(i) for i in range(n) if SENTINEL.format(i) not in specials]
        if missing:
            raise ConfigError(
                f"the tokenizer has no special token {missing[0]} ({n} sentinels needed: "
                f"{SENTINEL.format(0)}..{SENTINEL.format(n - 1)}); train it with "
                f'family="t5" and n_sentinels >= {n}'
            )
        return [self.backend.token_to_id(SENTINEL.format(i)) for i in range(n)]

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

    def decode_batch(
        self, batch: Sequence[Sequence[int]] | torch.Tensor, skip_special_tokens: bool = True
    ) -> list[str]:
        if isinstance(batch, torch.Tensor):
            batch = batch.tolist()
        lists = [list(ids) for ids in batch]
        return self.backend.decode_batch(lists, skip_special_tokens=skip_special_tokens)

    def pad_batch(
        self, batch: Sequence[Sequence[int]], padding_side: str = "right", max_length: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad id lists to one length -> (input_ids (B, T), attention_mask (B, T)), both int64.

        T is the longest sequence, or `max_length` when given (longer sequences are an error:
        truncate them first). Left padding is what batched generation with a causal LM needs.
        """
        if padding_side not in ("right", "left"):
            raise ConfigError(f'padding_side must be "right" or "left", got "{padding_side}"')
        pad_id = self.pad_id if self.pad_id is not None else self.eos_id
        if pad_id is None:
            raise ConfigError(
                "cannot pad: the tokenizer has neither a pad nor an eos token; set special_tokens.pad"
            )
        longest = max((len(ids) for ids in batch), default=0)
        length = longest if max_length is None else max_length
        if longest > length:
            raise ShapeError(
                f"a sequence has {longest} tokens, more than max_length={max_length}; truncate before padding"
            )
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
    def train(
        cls,
        texts: Iterable[str],
        kind: str | None = None,
        *,
        vocab_size: int,
        special_tokens: SpecialTokens | None = None,
        family: str | None = None,
        min_frequency: int = 2,
        lowercase: bool = True,
        n_sentinels: int = 100,
    ) -> Tokenizer:
        """Train a new tokenizer of `kind` ("bpe", "wordpiece" or "unigram") on `texts`.

        `vocab_size` counts every token, special ones included (an upper bound: a small corpus
        may give fewer). `family` ("gpt2", "bert", "roberta", "bart", "t5", "glm", "llama") picks the
        default special tokens when `special_tokens` is None, and the kind when `kind` is None
        (bert/glm: wordpiece, t5: unigram, others: bpe); with neither, a GPT-2 byte-level BPE.
        `lowercase` applies to wordpiece, `min_frequency` to bpe and wordpiece merges,
        `n_sentinels` to the t5 family. Details in `plmkit.tokenizer.train.train_backend`.
        """
        from plmkit.tokenizer.train import train_backend

        backend, special_tokens = train_backend(
            texts,
            kind,
            vocab_size=vocab_size,
            special_tokens=special_tokens,
            family=family,
            min_frequency=min_frequency,
            lowercase=lowercase,
            n_sentinels=n_sentinels,
        )
        return cls(backend, special_tokens)

    @classmethod
    def train_bpe(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        special_tokens: SpecialTokens | None = None,
        min_frequency: int = 2,
    ) -> Tokenizer:
        """Shorthand for `train(texts, "bpe", ...)`: GPT-2-style byte-level BPE, exact round trips."""
        return cls.train(
            texts, "bpe", vocab_size=vocab_size, special_tokens=special_tokens, min_frequency=min_frequency
        )

    # ---- files ------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> None:
        """Write `tokenizer.json` (the backend) and `tokenizer_config.json` (our roles and the chat
        template, when there is one) to `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backend.save(str(directory / TOKENIZER_FILE), pretty=True)
        config = {"plmkit_tokenizer": CONFIG_VERSION, "special_tokens": self.special_tokens.to_dict()}
        if self.chat_template is not None:
            config["chat_template"] = self.chat_template  # the key transformers reads too
        (directory / CONFIG_FILE).write_text(
            json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )

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
            raise DataError(
                f"{config_path} has version {config['plmkit_tokenizer']}, newer than this "
                f"plmkit understands ({CONFIG_VERSION}); upgrade plmkit"
            )
        try:
            special_tokens = SpecialTokens.from_dict(config.get("special_tokens", {}))
            return cls(backend, special_tokens, chat_template=config.get("chat_template"))
        except ConfigError as e:
            raise DataError(f"{config_path}: {e}") from e

    def __repr__(self) -> str:
        roles = {r: getattr(self.special_tokens, r) for r in ROLES if getattr(self.special_tokens, r)}
        return f"Tokenizer(vocab_size={self.vocab_size}, special_tokens={roles})"
