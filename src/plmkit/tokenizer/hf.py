"""Hugging Face tokenizer folders -> plmkit Tokenizer, and back.

Read, in this order: `tokenizer.json` (the `tokenizers` format itself); legacy `vocab.txt`
(BERT WordPiece); legacy `vocab.json` + `merges.txt` (GPT-2/RoBERTa byte-level BPE);
`spiece.model` (SentencePiece, when the `sentencepiece` package is installed). Special tokens come
from `tokenizer_config.json` and `special_tokens_map.json`; the chat template from `chat_template.jinja`
(newer transformers versions write it there) or else tokenizer_config.json's "chat_template" (a string, or a
list of {name, template} whose "default" one is used).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from plmkit.errors import CheckpointError
from plmkit.tokenizer.base import Tokenizer
from plmkit.tokenizer.special import ROLES, SpecialTokens

HF_KEYS = {role: f"{role}_token" for role in ROLES}  # bos -> bos_token, ...
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    return data if isinstance(data, dict) else {}


def _token_text(value: Any) -> str | None:
    """tokenizer_config values are a string or an AddedToken dict {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


# The roles transformers' tokenizer classes assume when tokenizer_config.json does not name them.
DEFAULT_ROLES: dict[str, dict[str, str]] = {
    "gpt2": {"bos": "<|endoftext|>", "eos": "<|endoftext|>", "unk": "<|endoftext|>"},
    "bert": {"unk": "[UNK]", "sep": "[SEP]", "pad": "[PAD]", "cls": "[CLS]", "mask": "[MASK]"},
    "roberta": {
        "bos": "<s>",
        "eos": "</s>",
        "sep": "</s>",
        "cls": "<s>",
        "unk": "<unk>",
        "pad": "<pad>",
        "mask": "<mask>",
    },
    "t5": {"eos": "</s>", "unk": "<unk>", "pad": "<pad>"},
    "llama": {"bos": "<s>", "eos": "</s>", "unk": "<unk>"},
}
DEFAULT_ROLES["bart"] = DEFAULT_ROLES["roberta"]


def special_tokens_from_config(directory: Path, vocab: dict[str, int], model_type: str = "") -> SpecialTokens:
    """Roles named in special_tokens_map.json / tokenizer_config.json, else the model type's defaults;
    a role whose token is not in the vocabulary is left unset."""
    merged = {
        **_read_json(directory / "special_tokens_map.json"),
        **_read_json(directory / "tokenizer_config.json"),
    }
    defaults = DEFAULT_ROLES.get(model_type, {})
    roles = {}
    for role, key in HF_KEYS.items():
        token = _token_text(merged.get(key)) if key in merged else defaults.get(role)
        if token is not None and token in vocab:
            roles[role] = token
    return SpecialTokens(**roles)


def chat_template_from_folder(directory: Path) -> str | None:
    """The folder's chat template (Jinja source), or None when it has none."""
    jinja_file = directory / CHAT_TEMPLATE_FILE
    if jinja_file.is_file():
        try:
            return jinja_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise CheckpointError(f"{jinja_file} is not UTF-8 text: {e}") from e
    value = _read_json(directory / "tokenizer_config.json").get("chat_template")
    if isinstance(value, list):  # several named templates: the default one is the chat template
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    if value is not None and not isinstance(value, str):
        raise CheckpointError(
            f"{directory / 'tokenizer_config.json'}: chat_template must be a Jinja string or a list of "
            "{name, template}; fix or remove it"
        )
    return value


def _wordpiece(directory: Path, config: dict[str, Any]) -> BackendTokenizer:
    vocab_file = directory / "vocab.txt"
    lines = vocab_file.read_text(encoding="utf-8").split("\n")
    vocab = {token: i for i, token in enumerate(t.rstrip("\r") for t in lines if t.rstrip("\r") or t == "")}
    vocab = {t: i for t, i in vocab.items() if t}
    unk = _token_text(config.get("unk_token")) or "[UNK]"
    backend = BackendTokenizer(models.WordPiece(vocab, unk_token=unk, max_input_chars_per_word=100))
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=config.get("tokenize_chinese_chars", True),
        strip_accents=config.get("strip_accents"),
        lowercase=config.get("do_lower_case", True),
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    cls, sep = (
        _token_text(config.get("cls_token")) or "[CLS]",
        _token_text(config.get("sep_token")) or "[SEP]",
    )
    if cls in vocab and sep in vocab:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{cls} $A {sep}",
            pair=f"{cls} $A {sep} $B:1 {sep}:1",
            special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
        )
    return backend


def _byte_level_bpe(directory: Path, config: dict[str, Any], model_type: str) -> BackendTokenizer:
    vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for line in (directory / "merges.txt").read_text(encoding="utf-8").split("\n"):
        if line and not line.startswith("#version"):
            a, b = line.split(" ")
            merges.append((a, b))
    backend = BackendTokenizer(models.BPE(vocab, merges))
    add_prefix_space = bool(config.get("add_prefix_space", False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    backend.decoder = decoders.ByteLevel()
    defaults = DEFAULT_ROLES.get(model_type, {})
    bos = _token_text(config.get("bos_token")) or defaults.get("bos")
    eos = _token_text(config.get("eos_token")) or defaults.get("eos")
    if model_type in ("roberta", "bart") and bos in vocab and eos in vocab:  # <s> A </s>
        backend.post_processor = processors.RobertaProcessing(
            (eos, vocab[eos]), (bos, vocab[bos]), add_prefix_space=add_prefix_space
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return backend


def _sentencepiece(directory: Path) -> BackendTokenizer:
    """A Unigram tokenizer with the pieces and scores of spiece.model (Metaspace pre-tokenizer).
    SentencePiece's own character normalisation table is approximated by NFKC."""
    try:
        import sentencepiece
    except ImportError:
        raise CheckpointError(
            f"{directory} has only spiece.model; install the optional `sentencepiece` package to read it, "
            "or add a tokenizer.json"
        ) from None
    sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "spiece.model"))
    vocab = [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]
    backend = BackendTokenizer(models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=False))
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return backend


def load_hf_tokenizer(
    directory: str | Path, required: bool = True, model_type: str | None = None
) -> Tokenizer | None:
    """The folder's tokenizer as a plmkit Tokenizer; None when it has none and `required` is False."""
    directory = Path(directory)
    config = _read_json(directory / "tokenizer_config.json")
    if model_type is None:
        model_type = _read_json(directory / "config.json").get("model_type", "")
    try:
        if (directory / "tokenizer.json").is_file():
            backend = BackendTokenizer.from_file(str(directory / "tokenizer.json"))
        elif (directory / "vocab.txt").is_file():
            backend = _wordpiece(directory, config)
            model_type = model_type or "bert"  # a bare vocab.txt is a BERT tokenizer
        elif (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
            backend = _byte_level_bpe(directory, config, model_type)
            model_type = model_type or "gpt2"  # bare vocab.json + merges.txt: GPT-2's tokenizer
        elif (directory / "spiece.model").is_file():
            backend = _sentencepiece(directory)
        elif required:
            raise CheckpointError(
                f"{directory} has no tokenizer: expected tokenizer.json, vocab.txt, vocab.json + merges.txt "
                "or spiece.model"
            )
        else:
            return None
    except CheckpointError:
        raise
    except Exception as e:  # malformed vocabulary files
        raise CheckpointError(f"{directory}: cannot read the tokenizer files: {e}") from e
    vocab = backend.get_vocab(with_added_tokens=True)
    special = special_tokens_from_config(directory, vocab, model_type)
    if not (directory / "tokenizer.json").is_file():
        # legacy files: the special tokens must be known to the backend as such, so that "[MASK]" in a
        # text stays one token and decode(skip_special_tokens=True) drops them (tokenizer.json has them)
        backend.add_special_tokens(sorted(set(special.tokens())))
    return Tokenizer(backend, special, chat_template=chat_template_from_folder(directory))


def save_hf_tokenizer(
    tokenizer: Tokenizer, directory: str | Path, model_max_length: int | None = None
) -> None:
    """tokenizer.json + a tokenizer_config.json that both transformers and plmkit read (the chat
    template, when the tokenizer has one, under its "chat_template" key)."""
    directory = Path(directory)
    tokenizer.save(directory)  # tokenizer.json and plmkit's tokenizer_config.json
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    for role, key in HF_KEYS.items():
        token = getattr(tokenizer.special_tokens, role)
        if token is not None:
            config[key] = token
    if model_max_length:
        config["model_max_length"] = model_max_length
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    stale = directory / CHAT_TEMPLATE_FILE  # it would win over the config's template when read back
    if stale.is_file():
        stale.unlink()
    special_map = {k: config[k] for k in HF_KEYS.values() if k in config}
    (directory / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2) + "\n", encoding="utf-8"
    )
