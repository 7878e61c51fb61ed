"""PET's pattern-verbalizer pairs (Schick & Schütze 2021): a pattern turns a row into a cloze text with one
mask slot, a verbalizer names each label by one or more words that may fill the slot.

    pattern = Pattern.parse("{text:truncate} It was {mask}.")
    ids, mask_positions = pattern.encode(tokenizer, {"text": "A fine film"}, max_length=128)
    # [CLS] a fine film it was [MASK] . [SEP]         mask_positions = [6]
    prompt = pattern.encode_prompt(tokenizer, {"text": "A fine film"}, 128)   # causal: "A fine film It was"
    verbalizer = Verbalizer({"0": ["bad"], "1": ["good", "great"]}, tokenizer, single_token=True)

Template syntax (str.format's): `{text}` and `{text_pair}` are the row's canonical text columns, `{mask}`
the one slot the verbalizer fills; `{{` / `}}` are literal braces. Truncation: a text slot written
`{text:truncate}` may be shortened to fit max_length (from its end, the longest truncatable slot first, as
PET's `shortenable` inputs are); when no slot is marked, every text slot may be. The pattern's own words,
the special tokens and the mask token(s) are never cut.

Whitespace: each part is tokenized on its own, and the whitespace that ends a literal before a slot moves
into the slot: it is prefixed to the slot's text, and before `{mask}` it is kept as `mask_prefix`, which the
verbalizer's words are tokenized with (" great"). Byte-level BPE (GPT-2, RoBERTa) then sees "Ġgreat" as in
running text; WordPiece and SentencePiece tokenizers are unaffected.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from plmkit.data.tasks import label_name
from plmkit.errors import ConfigError, DataError, did_you_mean

TEXT_SLOTS = ("text", "text_pair")  # the canonical text columns of a classification row
MASK = "mask"
TRUNCATE = "truncate"  # the format spec that marks a truncatable text slot
CONTINUING_FAMILIES = ("causal", "prefix", "seq2seq")  # score the verbalizer word as a continuation


@dataclass(frozen=True)
class Part:
    kind: Literal["literal", "slot", "mask"]
    value: str = ""  # the literal's text or the slot's column name
    truncate: bool = False  # a text slot that truncation may shorten


@dataclass(frozen=True)
class Pattern:
    """A parsed template (see the module docstring); build it with `Pattern.parse`."""

    template: str
    parts: tuple[Part, ...]
    mask_prefix: str = field(default="")  # " " when the template has whitespace just before {mask}

    @classmethod
    def parse(cls, template: str) -> Pattern:
        fix = 'e.g. "{text} It was {mask}." with slots text, text_pair and one mask'
        try:
            pieces = list(string.Formatter().parse(template))
        except ValueError as e:
            raise ConfigError(f"pattern {template!r}: {e}; {fix} ({{{{ }}}} for literal braces)") from None
        parts: list[Part] = []
        for literal, name, spec, conversion in pieces:
            if literal and parts and parts[-1].kind == "literal":  # "{{" splits a literal: join it again
                parts[-1] = Part("literal", parts[-1].value + literal)
            elif literal:
                parts.append(Part("literal", literal))
            if name is None:
                continue
            if name not in (*TEXT_SLOTS, MASK):
                shown = name or "{}"
                raise ConfigError(
                    f"pattern {template!r}: unknown slot {shown!r}{did_you_mean(name, (*TEXT_SLOTS, MASK))}; "
                    f"slots are {', '.join(TEXT_SLOTS)} and {MASK}"
                )
            if conversion or (spec and (spec != TRUNCATE or name == MASK)):
                written = (
                    "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                )
                allowed = f" or {{{name}:{TRUNCATE}}} (a slot truncation may shorten)" if name != MASK else ""
                raise ConfigError(
                    f"pattern {template!r}: slot {written} is not understood; write {{{name}}}{allowed}"
                )
            parts.append(Part(MASK if name == MASK else "slot", name, spec == TRUNCATE))
        masks = sum(p.kind == MASK for p in parts)
        if masks != 1:
            raise ConfigError(
                f"pattern {template!r} has {masks} {{mask}} slots; PET needs exactly one, where the "
                f"verbalizer's word goes ({fix})"
            )
        slots = [p for p in parts if p.kind == "slot"]
        if not slots:
            raise ConfigError(f"pattern {template!r} has no text slot, so every row reads the same; {fix}")
        if not any(p.truncate for p in slots):  # none marked: every text slot may be shortened
            parts = [Part(p.kind, p.value, p.kind == "slot") for p in parts]
        at = next(i for i, p in enumerate(parts) if p.kind == MASK)
        before = parts[at - 1].value if at and parts[at - 1].kind == "literal" else ""
        prefix = " " if before[-1:].isspace() else ""
        return cls(template, tuple(parts), prefix)

    @property
    def slots(self) -> tuple[str, ...]:
        """The text columns the pattern reads, in template order."""
        return tuple(dict.fromkeys(p.value for p in self.parts if p.kind == "slot"))

    @property
    def mask_at_end(self) -> bool:
        """Only whitespace follows {mask}: what a left-to-right model needs to score it as a continuation."""
        at = next(i for i, p in enumerate(self.parts) if p.kind == MASK)
        return all(p.kind == "literal" and not p.value.strip() for p in self.parts[at + 1 :])

    # ---- encoding ---------------------------------------------------------------------------------
    def encode(
        self,
        tokenizer: Any,
        values: Mapping[str, Any],
        max_length: int,
        mask_tokens: int = 1,
        where: str = "row",
    ) -> tuple[list[int], list[int]]:
        """(input_ids, mask_positions) of a row for a masked LM: the tokenizer's template around the
        pattern ([CLS] ... [SEP]), `mask_tokens` mask tokens at the mask slot (one per piece of a
        multi-token word), the truncatable slots shortened so that the whole fits `max_length`."""
        mask_id = tokenizer.mask_id
        if mask_id is None:
            raise ConfigError(
                f"pattern {self.template!r}: the tokenizer has no mask token; PET on a masked LM needs one "
                "(use a BERT-style tokenizer, or score a causal / seq2seq model with encode_prompt)"
            )
        if mask_tokens < 1:
            raise ConfigError(f"mask_tokens must be >= 1, got {mask_tokens}")
        head, tail = special_template(tokenizer)
        pieces = self._pieces(tokenizer, values, self.parts, where)
        self._truncate(pieces, max_length - len(head) - len(tail) - mask_tokens, max_length, where)
        ids, positions = list(head), []
        for part, piece in zip(self.parts, pieces, strict=True):
            if part.kind == MASK:
                positions = list(range(len(ids), len(ids) + mask_tokens))
                ids += [mask_id] * mask_tokens
            else:
                ids += piece
        return ids + tail, positions

    def encode_prompt(
        self,
        tokenizer: Any,
        values: Mapping[str, Any],
        max_length: int,
        family: str = "causal",
        where: str = "row",
    ) -> list[int]:
        """The ids of the pattern up to its mask, for a model that scores the verbalizer's word as a
        continuation (continuation_logprobs). The mask must end the pattern. A decoder (causal / prefix)
        continues the prompt, so only the template's opening special tokens are kept (LLaMA's <s>);
        an encoder-decoder's encoder reads the whole template (BART: <s> ... </s>)."""
        if family not in CONTINUING_FAMILIES:
            raise ConfigError(f"encode_prompt is for {', '.join(CONTINUING_FAMILIES)} models, not {family!r}")
        if not self.mask_at_end:
            raise ConfigError(
                f"pattern {self.template!r} has text after {{mask}}, but a {family} model scores the "
                "verbalizer's word as the continuation of the text before it; end the pattern with "
                '{mask} (e.g. "{text} It was {mask}")'
            )
        head, tail = special_template(tokenizer)
        if family != "seq2seq":
            tail = []
        at = next(i for i, p in enumerate(self.parts) if p.kind == MASK)
        parts = self.parts[:at]
        pieces = self._pieces(tokenizer, values, parts, where)
        self._truncate(pieces, max_length - len(head) - len(tail), max_length, where, parts)
        return list(head) + [i for piece in pieces for i in piece] + list(tail)

    def _pieces(
        self, tokenizer: Any, values: Mapping[str, Any], parts: Sequence[Part], where: str
    ) -> list[list[int]]:
        """Token ids of each part (none for the mask), whitespace moved from a literal into the next slot."""
        backend = tokenizer.backend
        out: list[list[int]] = []
        carried = ""  # whitespace that ended the previous literal
        for i, part in enumerate(parts):
            if part.kind == "literal":
                nxt = self.parts[i + 1] if i + 1 < len(self.parts) else None
                text = part.value.rstrip() if nxt is not None else part.value
                carried = part.value[len(text) :] if nxt is not None else ""
                out.append(backend.encode(text, add_special_tokens=False).ids if text.strip() else [])
                continue
            if part.kind == MASK:
                out.append([])
            else:
                value = values.get(part.value)
                if value is None:
                    raise DataError(
                        f"{where}: pattern {self.template!r} reads {part.value}, which the row lacks; give every "
                        f"row a {part.value} or use a pattern without {{{part.value}}}"
                    )
                out.append(backend.encode(carried + str(value), add_special_tokens=False).ids)
            carried = ""
        return out

    def _truncate(
        self,
        pieces: list[list[int]],
        room: int,
        max_length: int,
        where: str,
        parts: Sequence[Part] | None = None,
    ) -> None:
        """Shorten the truncatable slots in place, a token at a time from the end of the longest one."""
        parts = self.parts if parts is None else parts
        cuttable = [i for i, p in enumerate(parts) if p.kind == "slot" and p.truncate]
        excess = sum(len(p) for p in pieces) - room
        while excess > 0:
            longest = max(cuttable, key=lambda i: len(pieces[i]), default=None)
            if longest is None or not pieces[longest]:
                raise ConfigError(
                    f"{where}: pattern {self.template!r} needs {excess} tokens more than max_length={max_length} "
                    f"even with its truncatable slots emptied; raise max_length or mark more slots "
                    f"{{name:{TRUNCATE}}}"
                )
            pieces[longest].pop()
            excess -= 1


def special_template(tokenizer: Any) -> tuple[list[int], list[int]]:
    """(opening, closing) special-token ids that the tokenizer's single-sequence template puts around a
    text: ([CLS], [SEP]) for BERT, (<s>, </s>) for RoBERTa / BART, ([], []) for GPT-2."""
    backend = tokenizer.backend
    encoding = backend.post_process(backend.encode("a", add_special_tokens=False))
    sequence = encoding.sequence_ids
    ours = [i for i, s in enumerate(sequence) if s == 0]
    if not ours:
        return [], []
    return list(encoding.ids[: ours[0]]), list(encoding.ids[ours[-1] + 1 :])


class Verbalizer:
    """Label -> the words that name it, in the mapping's order (label i is column i of every score matrix).

    `mapping` values are one word or a list of words. Words are tokenized after the pattern's
    `mask_prefix` ("" or " "); `prefixes` are those the words will be used with (both by default, when
    the pattern is not known yet). With `single_token`, every word must be one token after each of them
    (PET's training scores a single [MASK]): a word the tokenizer splits is a ConfigError naming its pieces."""

    def __init__(
        self,
        mapping: Mapping[Any, str | Sequence[str]],
        tokenizer: Any,
        single_token: bool = False,
        prefixes: Sequence[str] = ("", " "),
    ):
        if not mapping:
            raise ConfigError(
                'the verbalizer is empty; map each label to its words, e.g. {"0": ["bad"], "1": ["good"]}'
            )
        self.tokenizer, self.single_token = tokenizer, single_token
        self.labels: list[str] = []
        self.words: list[list[str]] = []
        owner: dict[str, str] = {}
        for label, words in mapping.items():
            name = label_name(label)
            listed = [words] if isinstance(words, str) else list(words)
            cleaned = [str(w).strip() for w in listed]
            if not cleaned or not all(cleaned):
                raise ConfigError(
                    f"verbalizer label {name!r} has no word (or an empty one): {listed!r}; give it one or more words"
                )
            for word in cleaned:
                if word in owner:
                    raise ConfigError(
                        f"verbalizer word {word!r} names both label {owner[word]!r} and {name!r}; give each label "
                        "its own words"
                    )
                owner[word] = name
            self.labels.append(name)
            self.words.append(cleaned)
        for prefix in prefixes:
            self.word_ids(prefix)  # checks every word

    def __len__(self) -> int:
        return len(self.labels)

    def word_ids(self, prefix: str = "") -> list[list[list[int]]]:
        """Token ids of every word: [label][word] -> ids, each word tokenized after `prefix`."""
        out = []
        for label, words in zip(self.labels, self.words, strict=True):
            out.append([])
            for word in words:
                ids = list(self.tokenizer.backend.encode(prefix + word, add_special_tokens=False).ids)
                if not ids:
                    raise ConfigError(f"verbalizer word {word!r} (label {label!r}) tokenizes to nothing")
                if self.single_token and len(ids) > 1:
                    pieces = [self.tokenizer.id_to_token(i) for i in ids]
                    after = " after a space" if prefix else ""
                    raise ConfigError(
                        f"verbalizer word {word!r} (label {label!r}) is {len(ids)} tokens{after}: {pieces}; "
                        "PET training needs single-token words: pick a word the tokenizer keeps whole"
                    )
                out[-1].append(ids)
        return out

    def single_token_ids(self, prefix: str = "") -> list[list[int]]:
        """[label] -> the token id of each of its words (ConfigError unless built with single_token)."""
        if not self.single_token:
            raise ConfigError("single_token_ids needs a Verbalizer built with single_token=True")
        return [[ids[0] for ids in words] for words in self.word_ids(prefix)]


def row_values(row: Any, index: int = 0) -> tuple[Mapping[str, Any], str]:
    """(values, where) of a plmkit Row (its file:line) or a plain mapping of column -> value ("row INDEX")."""
    values = row if isinstance(row, Mapping) else getattr(row, "values", None)
    if not isinstance(values, Mapping):
        raise DataError(f"a row is a mapping of column -> value (or a plmkit Row), not {type(row).__name__}")
    return values, f"row {index}" if isinstance(row, Mapping) else str(getattr(row, "where", f"row {index}"))
