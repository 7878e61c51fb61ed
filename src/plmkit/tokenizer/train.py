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
only cls/sep; RoBERTa/BART `<s> $A </s>` (pairs `<s> $A </s></s> $B </s>`); other BPE tokenizers are
a decoder's and never append end-of-text, as GPT-2's and LLaMA's (GPT-2 nothing, LLaMA `<s> $A`);
Unigram `[bos] $A [eos]` (T5 `$A </s>`).

Training is deterministic: the same texts and options give a byte-identical tokenizer.json in any
process (see "determinism" below). A vocabulary smaller than vocab_size is a warning that says why.
"""

from __future__ import annotations

import json
import struct
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

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

    size = vocab_size - len(sentinels)
    with _replayable(texts, twice=kind == "wordpiece") as corpus:
        # WordPiece: the "##x" continuation symbols get fixed ids before training (see _continuations)
        extra = []
        if kind == "wordpiece":
            extra = _continuations(corpus, leading, special_tokens, min_frequency, lowercase)
        backend, trainer = _BUILDERS[kind](size, leading + extra, special_tokens, min_frequency, lowercase)
        _train(backend, trainer, corpus, vocab_size)
    if extra:
        backend = _unregister(backend, extra)
    if kind == "unigram":
        backend = _canonical_unigram(backend, leading)
    if sentinels:  # after training, so that they take the last ids (T5 convention)
        backend.add_special_tokens(sentinels)
    post_processor = _post_processor(backend, special_tokens, kind)
    if post_processor is not None:
        backend.post_processor = post_processor
    _warn_if_small(backend, kind, vocab_size, min_frequency)
    return backend, special_tokens


def _train(
    backend: BackendTokenizer, trainer: trainers.Trainer, texts: Iterable[str], vocab_size: int
) -> None:
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


def _warn_if_small(backend: BackendTokenizer, kind: str, vocab_size: int, min_frequency: int) -> None:
    """vocab_size is an upper bound: say so, and why, when the corpus gives fewer tokens."""
    n = backend.get_vocab_size(with_added_tokens=True)
    if n >= vocab_size:
        return
    why = (
        "the corpus has too few distinct pieces"
        if kind == "unigram"
        else f"the corpus has too few distinct pieces that occur at least min_frequency={min_frequency} times"
    )
    warnings.warn(
        f"the {kind} vocabulary has {n} tokens, fewer than vocab_size={vocab_size}: {why}; "
        "train on more text or lower vocab_size",
        stacklevel=4,  # the caller of Tokenizer.train
    )


# ---- determinism ------------------------------------------------------------------------------------
# The Rust trainers iterate over hash maps whose seed changes with every process, so the same corpus
# could give different tokenizer.json files. BPE is deterministic (its symbols are sorted and merge ties
# are broken by symbol id). WordPiece numbers the "##x" symbols in hash order, and ties between merges
# follow those ids; Unigram sums floats in hash order and gives the characters it must keep scores in
# hash order. The helpers below remove each of these.


@contextmanager
def _replayable(texts: Iterable[str], twice: bool) -> Iterator[Iterable[str]]:
    """`texts`, iterable twice when `twice`: a one-shot iterator (a generator reading files) is
    copied to a temporary file as it is read the first time, so memory stays flat."""
    if not twice or iter(texts) is not texts:
        yield texts
        return
    with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
        yield _Spool(texts, spool)


class _Spool:
    def __init__(self, texts: Iterable[str], file) -> None:
        self.texts, self.file, self.written = texts, file, False

    def __iter__(self) -> Iterator[str]:
        if self.written:
            self.file.seek(0)
            yield from (json.loads(line) for line in self.file)
            return
        for text in self.texts:
            self.file.write(json.dumps(text) + "\n")  # JSON: a document may hold newlines
            yield text
        self.written = True


def _continuations(
    texts: Iterable[str], leading: list[str], roles: SpecialTokens, min_frequency: int, lowercase: bool
) -> list[str]:
    """Every "##x" symbol the WordPiece trainer will create for `texts`, sorted. A first pass with no
    merges finds them; the real training gets them as (temporary) special tokens so that their ids,
    and the merge ties that depend on those ids, no longer depend on hash order."""
    probe, trainer = _wordpiece(0, leading, roles, min_frequency, lowercase)
    _train(probe, trainer, texts, 0)
    return sorted(
        t
        for t in probe.get_vocab(with_added_tokens=False)
        if t.startswith("##") and len(t) == 3 and t not in leading
    )


def _unregister(backend: BackendTokenizer, tokens: list[str]) -> BackendTokenizer:
    """The backend without `tokens` among its added (special) tokens; they stay in the vocabulary."""
    data = json.loads(backend.to_str())
    drop = set(tokens)
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in drop]
    return BackendTokenizer.from_str(json.dumps(data))


def _canonical_unigram(backend: BackendTokenizer, leading: list[str]) -> BackendTokenizer:
    """The trained Unigram model in a canonical form: the special tokens first as trained, then the
    pieces by score (rounded to float32, SentencePiece's own precision, which absorbs the last-bit
    noise of hash-ordered sums) and by piece for equal scores."""
    data = json.loads(backend.to_str())
    vocab = data["model"]["vocab"]
    head, rest = vocab[: len(leading)], vocab[len(leading) :]
    if [piece for piece, _ in head] != leading:  # the trainer's layout changed: leave the model as is
        return backend
    rest = _reorder_penalties(rest)
    rest = sorted(([piece, _float32(score)] for piece, score in rest), key=lambda ps: (-ps[1], ps[0]))
    data["model"]["vocab"] = head + rest
    return BackendTokenizer.from_str(json.dumps(data))


_PENALTY_STEP = 0.0001  # the Rust Unigram trainer's step between the scores of kept characters


def _reorder_penalties(pieces: list[list]) -> list[list]:
    """The Unigram trainer keeps every character of the corpus: one that pruning removed comes back
    with score min + k * 0.0001, k counting in hash order. Give those scores in character order."""
    if not pieces:
        return pieces
    low = min(score for _, score in pieces)
    found: list[int] = []
    penalty = 0.0
    while True:  # the same float arithmetic as the trainer, so scores compare exactly
        hits = [i for i, (p, s) in enumerate(pieces) if len(p) == 1 and s == low + penalty and i not in found]
        if not hits:
            break
        found += hits
        penalty += _PENALTY_STEP
    if len(found) < 2:
        return pieces
    out = [list(p) for p in pieces]
    penalty = 0.0
    for i in sorted(found, key=lambda i: pieces[i][0]):
        out[i][1] = low + penalty
        penalty += _PENALTY_STEP
    return out


def _float32(x: float) -> float:
    return struct.unpack("f", struct.pack("f", x))[0]


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
    if bos and eos and (bos, eos) == (cls, sep):  # RoBERTa / BART: <s> A </s></s> B </s>, no type ids
        return processors.TemplateProcessing(
            single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}", special_tokens=ids(bos, eos)
        )
    if kind == "bpe":  # a decoder's tokenizer: GPT-2 adds nothing, LLaMA only <s>; never end-of-text
        if not bos:
            return None
        return processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos}:1 $B:1", special_tokens=ids(bos)
        )
    if not (bos or eos):
        return None
    head = f"{bos} " if bos else ""
    tail = f" {eos}" if eos else ""
    pair = f"{head}$A{tail} $B:1{tail}:1" if eos else f"{head}$A $B:1"
    return processors.TemplateProcessing(single=f"{head}$A{tail}", pair=pair, special_tokens=ids(bos, eos))
