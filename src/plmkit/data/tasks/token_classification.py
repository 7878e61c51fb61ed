"""Token classification (NER, POS) over pre-split words: word labels -> sub-token labels, and
sub-token predictions -> word predictions.

Words are encoded as Hugging Face does with `is_split_into_words=True` (each word pre-tokenized on
its own, then split into sub-tokens). The first sub-token of a word carries the word's label; its
other sub-tokens and the special tokens get -100 (no loss), as in transformers'
`run_ner.py` with `label_all_tokens=False`.

    ids, labels, word_ids = align_word_labels(tok, ["Paris", "rocks"], [3, 0], max_length=128)
    # ids: [CLS] paris rocks [SEP]; labels: [-100, 3, 0, -100]; word_ids: [None, 0, 1, None]
    word_predictions(model_argmax_row, word_ids, n_words=2, fill=0)  # one prediction per word
"""

from __future__ import annotations

from collections.abc import Sequence

from plmkit.errors import ConfigError, DataError, ShapeError
from plmkit.tokenizer.base import Tokenizer

IGNORE = -100  # the label no loss is computed for


def align_word_labels(
    tokenizer: Tokenizer, words: Sequence[str], labels: Sequence[int], max_length: int
) -> tuple[list[int], list[int], list[int | None]]:
    """(input_ids, labels, word_ids), one entry per token, at most `max_length` tokens.

    input_ids carry the tokenizer's single-sequence special tokens (e.g. [CLS] ... [SEP]);
    word_ids[t] is the index in `words` of token t's word (None for special tokens). The sub-tokens
    are truncated to make room for the special tokens: words cut off by truncation are simply lost
    (no token carries their label; `word_predictions` fills them). A word that yields no token at
    all (e.g. only characters the normalizer drops) is lost the same way.
    """
    if len(words) != len(labels):
        raise DataError(f"{len(words)} words but {len(labels)} labels; give one label per word")
    backend = tokenizer.backend
    n_special = backend.num_special_tokens_to_add(is_pair=False)
    if max_length <= n_special:
        raise ConfigError(
            f"max_length={max_length} leaves no room for words next to {n_special} special tokens; "
            "raise data.max_length"
        )
    encoding = backend.encode(list(words), is_pretokenized=True, add_special_tokens=False)
    encoding.truncate(max_length - n_special)
    encoding = backend.post_process(encoding, add_special_tokens=True)
    word_ids = list(encoding.word_ids)
    token_labels, previous = [], None
    for word in word_ids:
        first = word is not None and word != previous  # a word's sub-tokens are contiguous
        token_labels.append(labels[word] if first else IGNORE)
        previous = word
    return list(encoding.ids), token_labels, word_ids


def word_predictions(
    token_predictions: Sequence[int], word_ids: Sequence[int | None], n_words: int, fill: int
) -> list[int]:
    """One prediction per word: its first sub-token's; `fill` for words no token carries (lost to
    truncation). `token_predictions` may be longer than `word_ids` (padding is ignored)."""
    if len(token_predictions) < len(word_ids):
        raise ShapeError(f"{len(token_predictions)} token predictions for {len(word_ids)} tokens")
    predictions = [fill] * n_words
    seen = set()
    for prediction, word in zip(token_predictions, word_ids, strict=False):
        if word is not None and word not in seen:
            if word >= n_words:
                raise ShapeError(f"word id {word} out of range for n_words={n_words}")
            seen.add(word)
            predictions[word] = int(prediction)
    return predictions
