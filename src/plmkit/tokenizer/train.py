"""Training tokenizers on raw text: byte-level BPE (GPT-2), WordPiece (Chinese BERT), Unigram (T5).

All three are `tokenizers` (Rust) pipelines; this module only picks the parts
(normalizer -> pre-tokenizer -> model -> decoder):

- bpe:       none (exact round trips) -> ByteLevel -> BPE over the 256 bytes -> ByteLevel
- wordpiece: BertNormalizer (each CJK char apart, lowercase) -> BertPreTokenizer -> WordPiece `##` -> WordPiece
- unigram:   NFKC -> Metaspace "▁" -> Unigram (SentencePiece) -> Metaspace

Special tokens get the first ids in their family's reference order; T5 sentinels (<extra_id_N>)
get the last ids, <extra_id_0> the highest (`plmkit.tokenizer.special_token_order`). The
post-processor that `encode(text, add_special_tokens=True)` applies follows the family:
`[CLS] $A [SEP]` (pairs `[CLS] $A [SEP] $B [SEP]`, type ids 0/1) for WordPiece or a tokenizer with
only cls/sep; otherwise `[bos] $A [eos]` (GPT-2 `$A <|endoftext|>`, T5 `$A </s>`, LLaMA `<s> $A </s>`;
RoBERTa/BART pairs `<s> $A </s></s> $B </s>`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from plmkit.errors import ConfigError, DataError, PlmkitError, did_you_mean
from plmkit.tokenizer.special import (
    FAMILIES,
    SENTINEL_PATTERN,
    SpecialTokens,
    family_special_tokens,
    special_token_order,
)

KINDS = ("bpe", "wordpiece", "unigram")
FAMILY_KIND = {"bert": "wordpiece", "glm": "wordpiece", "t5": "unigram"}  # every other family: bpe
KIND_FAMILY = {"bpe": "gpt2", "wordpiece": "bert", "unigram": "t5"}  # special tokens when no family


def train_backend(
    texts: Iterable[str],
    kind: str | None = None,
    *,
    vocab_size: int,
    special_tokens: SpecialTokens | None = None,
    family: str | None = None,
    min_frequency: int = 2,
    lowercase: bool = True,
    n_sentinels: int = 100,
) -> tuple[BackendTokenizer, SpecialTokens]:
    """A trained backend of `kind` on `texts` (documents) and its special tokens; `Tokenizer.train`
    wraps them (see it for the options)."""
    kind, default_family = _resolve_kind_and_family(kind, family)
    if isinstance(texts, str):
        raise ConfigError("texts must be an iterable of documents, not one string; wrap it in a list")
    if special_tokens is None:
        family = family or default_family
        special_tokens = family_special_tokens(family, n_sentinels)
    order = special_token_order(special_tokens, family)  # given tokens, no family: in tokens() order
    sentinels = [t for t in order if SENTINEL_PATTERN.fullmatch(t)]
    leading = order[: len(order) - len(sentinels)]
    _check_vocab_size(kind, vocab_size, len(order))

    backend, trainer = _BUILDERS[kind](
        vocab_size - len(sentinels), leading, special_tokens, min_frequency, lowercase
    )
    documents = _CountDocuments(texts)
    try:
        backend.train_from_iterator(documents, trainer=trainer)
    except PlmkitError:  # raised by the caller's reader (bad file, bad line): keep it as it is
        raise
    except Exception as e:
        if documents.count == 0:
            raise DataError("no text to train the tokenizer on: the input is empty") from e
        if "not large enough to contain all chars" in str(e):
            raise ConfigError(
                f"vocab_size={vocab_size} is too small for a unigram tokenizer of this text: "
                "every distinct character needs a piece; raise vocab_size"
            ) from e
        raise
    if documents.count == 0:
        raise DataError("no text to train the tokenizer on: the input is empty")
    if sentinels:  # after training, so that they take the last ids (T5 convention)
        backend.add_special_tokens(sentinels)
    post_processor = _post_processor(backend, special_tokens, kind)
    if post_processor is not None:
        backend.post_processor = post_processor
    return backend, special_tokens


def _resolve_kind_and_family(kind: str | None, family: str | None) -> tuple[str, str]:
    if family is not None and family not in FAMILIES:
        raise ConfigError(
            f'unknown tokenizer family "{family}"{did_you_mean(family, FAMILIES)}; '
            f"known: {', '.join(FAMILIES)}"
        )
    if kind is None:
        kind = FAMILY_KIND.get(family or "", "bpe")
    if kind not in KINDS:
        raise ConfigError(
            f'unknown tokenizer kind "{kind}"{did_you_mean(kind, KINDS)}; known: {", ".join(KINDS)}'
        )
    return kind, family or KIND_FAMILY[kind]


def _check_vocab_size(kind: str, vocab_size: int, n_special: int) -> None:
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
        raise ConfigError(f"vocab_size must be an integer, got {vocab_size!r}")
    # Byte-level BPE needs its 256 byte symbols; the others need room for at least one real token.
    minimum = n_special + (256 if kind == "bpe" else 1)
    if vocab_size < minimum:
        need = (
            f"256 bytes + {n_special} special tokens" if kind == "bpe" else f"{n_special} special tokens + 1"
        )
        raise ConfigError(
            f"vocab_size={vocab_size} is too small for a {kind} tokenizer: it needs at least "
            f"{minimum} ({need})"
        )


class _CountDocuments:
    """Passes texts through to the trainer and counts the non-blank ones (to report empty input)."""

    def __init__(self, texts: Iterable[str]):
        self.texts, self.count = texts, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            if not isinstance(text, str):
                raise ConfigError(f"texts must be strings, got a {type(text).__name__}")
            if text.strip():
                self.count += 1
            yield text


# ---- one builder per kind: (untrained backend, trainer) --------------------------------------------


def _bpe(
    vocab_size: int, specials: list[str], roles: SpecialTokens, min_frequency: int, lowercase: bool
) -> tuple[BackendTokenizer, trainers.Trainer]:
    """GPT-2 byte-level BPE: text is UTF-8 bytes, so no character is ever unknown and
    `decode(encode(s)) == s` for every string (no normalizer, no invented prefix space)."""
    backend = BackendTokenizer(models.BPE(unk_token=roles.unk))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    return backend, trainer


def _wordpiece(
    vocab_size: int, specials: list[str], roles: SpecialTokens, min_frequency: int, lowercase: bool
) -> tuple[BackendTokenizer, trainers.Trainer]:
    """Chinese BERT: the normalizer puts spaces around every CJK character, so each one is its own
    pre-token and (being in the trainer's alphabet, however rare) its own token; English words
    split into pieces with `##` continuations (un ##bel ##iev ##able)."""
    if roles.unk is None:
        raise ConfigError(
            "a wordpiece tokenizer needs an unk token for characters it never saw; "
            'set special_tokens.unk or use family="bert"'
        )
    backend = BackendTokenizer(models.WordPiece(unk_token=roles.unk, max_input_chars_per_word=100))
    # strip_accents=None: accents are stripped exactly when lowercasing, as in BERT
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        continuing_subword_prefix="##",
        show_progress=False,
    )
    return backend, trainer


def _unigram(
    vocab_size: int, specials: list[str], roles: SpecialTokens, min_frequency: int, lowercase: bool
) -> tuple[BackendTokenizer, trainers.Trainer]:
    """T5 / SentencePiece Unigram: spaces become "▁" and belong to the next piece, so plain text
    round-trips up to NFKC normalisation (full-width "，" decodes as ","). `min_frequency` does not
    apply: Unigram prunes by likelihood."""
    if roles.unk is None:
        raise ConfigError(
            "a unigram tokenizer needs an unk token for characters it never saw; "
            'set special_tokens.unk or use family="t5"'
        )
    backend = BackendTokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token=roles.unk, show_progress=False
    )
    return backend, trainer


_BUILDERS = {"bpe": _bpe, "wordpiece": _wordpiece, "unigram": _unigram}


def _post_processor(
    backend: BackendTokenizer, special: SpecialTokens, kind: str
) -> processors.TemplateProcessing | None:
    """The template `encode(..., add_special_tokens=True)` applies (see the module docstring)."""
    bos, eos, cls, sep = special.bos, special.eos, special.cls, special.sep
    ids = lambda *tokens: [(t, backend.token_to_id(t)) for t in dict.fromkeys(tokens) if t]
    if cls and sep and (kind == "wordpiece" or not (bos or eos)):  # BERT: segment B has type id 1
        return processors.TemplateProcessing(
            single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B:1 {sep}:1", special_tokens=ids(cls, sep)
        )
    if not (bos or eos):
        return None
    head = f"{bos} " if bos else ""
    tail = f" {eos}" if eos else ""
    if bos and eos and (bos, eos) == (cls, sep):  # RoBERTa / BART: <s> A </s></s> B </s>, no type ids
        pair = f"{bos} $A {eos} {eos} $B {eos}"
    else:
        pair = f"{head}$A{tail} $B:1{tail}:1" if eos else f"{head}$A $B:1"
    return processors.TemplateProcessing(single=f"{head}$A{tail}", pair=pair, special_tokens=ids(bos, eos))
