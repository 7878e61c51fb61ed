"""Special tokens: the roles a special token plays (bos, eos, pad, ...) and each model family's default
set, in the id order of its reference tokenizer."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from plmkit.errors import ConfigError, did_you_mean

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
                raise ConfigError(
                    f'unknown special token role "{key}"{did_you_mean(key, known)}; '
                    f"known roles: {', '.join(known)}"
                )
        return cls(**d)


# ---- special tokens per model family ---------------------------------------------------------------
# (token, roles) in the id order of the family's reference tokenizer: a trained tokenizer gives its
# special tokens the first ids in this order (BERT [PAD]=0, T5 <pad>=0 which T5 also uses as the
# decoder start, fairseq's <s> <pad> </s> <unk> for RoBERTa/BART, LLaMA <unk> <s> </s>).
_BERT = (("[PAD]", "pad"), ("[UNK]", "unk"), ("[CLS]", "cls"), ("[SEP]", "sep"), ("[MASK]", "mask"))
_ROBERTA = (("<s>", "bos cls"), ("<pad>", "pad"), ("</s>", "eos sep"), ("<unk>", "unk"), ("<mask>", "mask"))
_FAMILIES: dict[str, tuple[tuple[str, str], ...]] = {
    # GPT-2 has one <|endoftext|> between documents and no bos; we add a pad so that padding is
    # never confused with a real end of text.
    "gpt2": (("<|endoftext|>", "eos"), ("<|pad|>", "pad")),
    "bert": _BERT,
    "roberta": _ROBERTA,
    "bart": _ROBERTA,
    "t5": (("<pad>", "pad"), ("</s>", "eos"), ("<unk>", "unk")),  # + sentinels, see below
    "glm": _BERT
    + (
        ("[gMASK]", "additional"),
        ("[sMASK]", "additional"),
        ("<sop>", "additional"),
        ("<eop>", "additional"),
    ),
    "llama": (("<unk>", "unk"), ("<s>", "bos"), ("</s>", "eos")),
}
FAMILIES = tuple(_FAMILIES)

# T5 sentinels <extra_id_0> ... <extra_id_{n-1}> replace corrupted spans. As in T5's vocabulary they
# take the LAST ids, in reverse: <extra_id_0> is the highest id, <extra_id_1> the one below, ...
SENTINEL = "<extra_id_{}>"
SENTINEL_PATTERN = re.compile(r"<extra_id_(\d+)>")


def family_special_tokens(family: str, n_sentinels: int = 100) -> SpecialTokens:
    """The default special tokens of `family` (one of FAMILIES); t5 gets `n_sentinels` sentinels."""
    if family not in _FAMILIES:
        raise ConfigError(
            f'unknown tokenizer family "{family}"{did_you_mean(family, FAMILIES)}; '
            f"known: {', '.join(FAMILIES)}"
        )
    special = SpecialTokens()
    for token, roles in _FAMILIES[family]:
        for role in roles.split():
            if role == "additional":
                special.additional.append(token)
            else:
                setattr(special, role, token)
    if family == "t5":
        if n_sentinels < 0:
            raise ConfigError(f"n_sentinels must be >= 0, got {n_sentinels}")
        special.additional += [SENTINEL.format(i) for i in range(n_sentinels)]
    return special


def special_token_order(special_tokens: SpecialTokens, family: str | None = None) -> list[str]:
    """The order in which training gives `special_tokens` their ids.

    First the tokens of `family`'s reference order, then the others in `SpecialTokens.tokens()`
    order, and T5 sentinels (`<extra_id_N>`) last with the highest N first (so <extra_id_0> gets
    the highest id of the vocabulary, as in T5).
    """
    tokens = special_tokens.tokens()
    reference = [token for token, _ in _FAMILIES.get(family or "", ())]
    sentinels = sorted(
        (t for t in tokens if SENTINEL_PATTERN.fullmatch(t)),
        key=lambda t: -int(SENTINEL_PATTERN.fullmatch(t).group(1)),
    )
    first = [t for t in reference if t in tokens]
    rest = [t for t in tokens if t not in first and t not in sentinels]
    return first + rest + sentinels
