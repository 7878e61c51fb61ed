"""In-context learning (GPT-3 style): a k-shot prompt of train rows with their label words, then the
query; the prediction is the label whose word the model finds likeliest after the prompt.

    config = IclConfig(shots=4, label_words={"0": "terrible", "1": "great"}, selection="knn")
    prompts = build_prompts(config, train.rows, ["a gorgeous film"], encoder=(minilm, minilm_tokenizer))
    scores = label_word_scores(model, tokenizer, [p.text for p in prompts], config, labels)   # (Q, L)
    task = IclTask(config, tokenizer, train); evaluate_split(task, model, dev)   # prompting/icl_task.py

A prompt is `instruction` + one `template` per demonstration ({text} and {label_word} filled) + the query
(`query_template`, {text} filled). The spaces just before {label_word} in `template` belong to the word:
the default query template is the template up to them ("Review: {text}\nSentiment:") and each label word
is scored with them (" great"), as the word follows ":" in a demonstration and as byte-level BPE
tokenizers attach a space to the word after it.

Selection of the demonstrations:
  random  one set of `shots` train rows for every query, drawn with `seed` (as Zhao et al. 2021: one
          prompt per seed, so its content-free calibration is computed once). `balanced`: shots // L rows
          per label, and one more for shots % L labels drawn at random; the picks are then shuffled
          (seeded), so that "as_selected" does not group them by label.
  knn     per query, the `shots` train rows of highest cosine similarity between sentence embeddings
          (Liu et al. 2022), most similar first; ties go to the lower row index. The train rows are
          embedded once per call.
  fixed   the first `shots` of `fixed_indices` (train row indices), in that order.
Order: "as_selected"; "random" (a seeded shuffle: one for all queries when they share their
demonstrations, one per query with knn); "similar_last" (ascending similarity to the query, so that the
most similar demonstration is nearest to it; needs embeddings whatever the selection).

Prompts are encoded as plmkit.generation encodes prompts: decoder-only models read bos (when the
tokenizer has one) + the text; seq2seq models the tokenizer's template (e.g. `... eos`). Label words
never get special tokens.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from plmkit.data.tasks import LabelVocab, Row, TaskSplit, label_name
from plmkit.errors import ConfigError, DataError, ShapeError, did_you_mean
from plmkit.generation.scoring import continuation_logprobs
from plmkit.prompting.calibration import content_free_inputs, label_probs

SELECTIONS = ("random", "knn", "fixed")
ORDERS = ("as_selected", "random", "similar_last")
DEFAULT_TEMPLATE = "Review: {text}\nSentiment: {label_word}\n\n"
_SLOT = re.compile(r"\{(text|label_word)\}")
Encoder = tuple[nn.Module, Any]  # (sentence encoder, its tokenizer): plmkit.model.heads.embed_texts
Embeddings = tuple[torch.Tensor, torch.Tensor]  # (train (N, C), queries (Q, C))


@dataclass
class IclConfig:
    shots: int = 4  # demonstrations per prompt (0: zero-shot)
    selection: str = "random"  # random | knn | fixed
    order: str = "as_selected"  # as_selected | random | similar_last
    template: str = DEFAULT_TEMPLATE  # one demonstration: {text} and {label_word}
    query_template: str | None = None  # the query: {text}; None = the template up to {label_word}
    label_words: dict[str, str] = field(default_factory=dict)  # label name -> its word (the verbalizer)
    seed: int = 0  # random selection and random order
    calibrate: bool = False  # contextual calibration (prompting/calibration.py)
    balanced: bool = False  # random selection: the same number of rows per label (module docstring)
    fixed_indices: list[int] = field(default_factory=list)  # selection=fixed: train row indices
    instruction: str = ""  # text before the demonstrations, e.g. "Classify the sentiment.\n\n"

    def __post_init__(self) -> None:
        if isinstance(self.shots, bool) or not isinstance(self.shots, int) or self.shots < 0:
            raise ConfigError(f"shots must be an integer >= 0 (0 = zero-shot), got {self.shots!r}")
        for key, value, known in (("selection", self.selection, SELECTIONS), ("order", self.order, ORDERS)):
            if value not in known:
                raise ConfigError(
                    f"{key}: unknown {key} {value!r}{did_you_mean(str(value), known)}; known: {', '.join(known)}"
                )
        for slot in ("{text}", "{label_word}"):
            if self.template.count(slot) != 1:
                raise ConfigError(
                    f"template {self.template!r} needs one {slot} slot, it has {self.template.count(slot)}; "
                    f"e.g. {DEFAULT_TEMPLATE!r}"
                )
        query = self.query_template
        if query is not None and (query.count("{text}") != 1 or "{label_word}" in query):
            raise ConfigError(
                f"query_template {query!r} needs one {{text}} slot and no {{label_word}} (the label word is "
                f"what the model predicts); e.g. {self.query!r}, or leave it unset"
            )
        if not self.label_words:
            raise ConfigError(
                "label_words is empty; map every label to its word, e.g. {'0': 'terrible', '1': 'great'}"
            )
        self.label_words = {label_name(k): v for k, v in self.label_words.items()}  # YAML's 1 -> "1"
        for name, word in self.label_words.items():
            if not isinstance(word, str) or not word.strip():
                raise ConfigError(
                    f"label_words[{name!r}] is {word!r}; give the word that names label {name!r}"
                )
        words = list(self.label_words.values())
        if len(set(words)) != len(words):
            raise ConfigError(
                f"label_words {self.label_words} gives two labels the same word; give each its own"
            )
        if self.selection == "fixed" and not self.fixed_indices:
            raise ConfigError("selection=fixed needs fixed_indices (train row indices, e.g. [0, 5, 9])")
        if self.fixed_indices and self.selection != "fixed":
            raise ConfigError(
                f"fixed_indices is set but selection is {self.selection!r}; set selection=fixed or drop them"
            )
        if self.balanced and self.selection != "random":
            raise ConfigError(f"balanced applies to selection=random, not {self.selection!r}; drop balanced")

    @property
    def word_lead(self) -> str:
        """The spaces just before {label_word} in the template: scored with the word."""
        head = self.template.split("{label_word}")[0]
        return head[len(head.rstrip(" ")) :]

    @property
    def query(self) -> str:
        """The query template: query_template, or the template up to {label_word} without word_lead."""
        if self.query_template is not None:
            return self.query_template
        head = self.template.split("{label_word}")[0]
        return head[: len(head) - len(self.word_lead)]

    def uses_embeddings(self) -> bool:
        return self.shots > 0 and (self.selection == "knn" or self.order == "similar_last")


@dataclass
class IclPrompt:
    text: str  # instruction + demonstrations + the query (no label word)
    demonstrations: list[int]  # train row indices, in prompt order


# ---- rows and labels -------------------------------------------------------------------------------
def train_rows(train: TaskSplit | Sequence[Row]) -> list[Row]:
    """The rows of a train split, each with a text and a label (DataError at the row otherwise)."""
    rows = list(train.rows if isinstance(train, TaskSplit) else train)
    for row in rows:
        for column in ("text", "label"):
            if row.values.get(column) is None:
                raise DataError(
                    f"{row.where}: no {column}; every in-context demonstration needs a text and a label"
                )
    return rows


def label_vocab(config: IclConfig, rows: Sequence[Row]) -> LabelVocab:
    """The labels of the train rows (LabelVocab order); ConfigError for a label without a word or a
    label word of no train label."""
    labels = LabelVocab.from_rows(rows, "label")
    for name in labels.names:
        if name not in config.label_words:
            raise ConfigError(
                f"label {name!r} of the train split has no label word; add label_words[{name!r}] "
                f"(label_words has {', '.join(map(repr, config.label_words))})"
            )
    for name in config.label_words:
        if name not in labels.names:
            raise ConfigError(
                f"label_words[{name!r}]: the train split has no label {name!r}{did_you_mean(name, labels.names)}; "
                f"its labels: {', '.join(labels.names)}"
            )
    return labels


def check_shots(config: IclConfig, rows: Sequence[Row], shots: int | None = None) -> None:
    shots = config.shots if shots is None else shots
    where = rows[0].where.rsplit(":", 1)[0] if rows else "the train split"
    if shots > len(rows):
        raise ConfigError(
            f"shots={shots} but the train split ({where}) has {len(rows)} rows; use at most {len(rows)} shots "
            "or a larger train split"
        )
    if config.selection == "fixed":
        if len(config.fixed_indices) < shots:
            raise ConfigError(
                f"shots={shots} but fixed_indices lists {len(config.fixed_indices)} rows; list at least {shots}"
            )
        bad = [i for i in config.fixed_indices if isinstance(i, bool) or not 0 <= int(i) < len(rows)]
        if bad:
            raise ConfigError(
                f"fixed_indices {bad} are not row indices of the train split ({where}: 0..{len(rows) - 1})"
            )


# ---- selection and order ---------------------------------------------------------------------------
def select_shared(config: IclConfig, rows: Sequence[Row]) -> list[int]:
    """The demonstrations every query shares (selection random or fixed, or none), in selection order."""
    if config.selection == "fixed" or not config.shots:  # zero-shot: nothing to draw
        return [int(i) for i in config.fixed_indices[: config.shots]]
    rng = random.Random(config.seed)
    if not config.balanced:
        return rng.sample(range(len(rows)), config.shots)
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_label.setdefault(label_name(row.values["label"]), []).append(i)
    names = sorted(by_label)
    extra = set(rng.sample(names, config.shots % len(names)))
    picks: list[int] = []
    for name in names:
        wanted = config.shots // len(names) + (name in extra)
        if wanted > len(by_label[name]):
            raise ConfigError(
                f"balanced selection of {config.shots} shots needs {wanted} rows of label {name!r} but the "
                f"train split has {len(by_label[name])}; lower shots or drop balanced"
            )
        picks += rng.sample(by_label[name], wanted)
    rng.shuffle(picks)  # not grouped by label
    return picks


def nearest(similarity: torch.Tensor, k: int) -> list[int]:
    """The k indices of highest similarity (N,), most similar first; ties: lower index first."""
    order = torch.sort(similarity, descending=True, stable=True).indices
    return order[:k].tolist()


def ordered(config: IclConfig, chosen: list[int], similarity: torch.Tensor | None, query: int) -> list[int]:
    """`chosen` in the prompt order of config.order (`query`: the query's position, seeding knn shuffles)."""
    if config.order == "as_selected" or not chosen:
        return list(chosen)
    if config.order == "random":
        out = list(chosen)
        per_query = f":{query}" if config.selection == "knn" else ""  # shared demonstrations: one order
        random.Random(f"{config.seed}:order{per_query}").shuffle(out)  # str seeds are stable across runs
        return out
    assert similarity is not None  # similar_last: uses_embeddings()
    return sorted(chosen, key=lambda i: (float(similarity[i]), -i))  # ascending: the most similar last


def similarities(
    config: IclConfig,
    rows: Sequence[Row],
    queries: Sequence[str],
    encoder: Encoder | None,
    embeddings: Embeddings | None,
) -> torch.Tensor | None:
    """(Q, N) cosine similarities of the queries to the train rows, or None when no policy needs them."""
    if not config.uses_embeddings():
        return None
    if embeddings is None:
        if encoder is None:
            raise ConfigError(
                f"selection={config.selection} order={config.order} compares sentence embeddings; give "
                "encoder=(model, tokenizer) (e.g. all-MiniLM-L6-v2) or embeddings=(train, queries)"
            )
        embeddings = embed(encoder, [str(r.values["text"]) for r in rows]), embed(encoder, list(queries))
    train_vectors, query_vectors = (torch.as_tensor(e, dtype=torch.float32) for e in embeddings)
    if train_vectors.dim() != 2 or train_vectors.shape[0] != len(rows):
        raise ShapeError(
            f"train embeddings of shape {tuple(train_vectors.shape)}; expected ({len(rows)}, C), one per train row"
        )
    if query_vectors.shape != (len(queries), train_vectors.shape[1]):
        raise ShapeError(
            f"query embeddings of shape {tuple(query_vectors.shape)}; expected ({len(queries)}, {train_vectors.shape[1]})"
        )
    return F.normalize(query_vectors, dim=-1) @ F.normalize(train_vectors, dim=-1).T


def embed(encoder: Encoder, texts: Sequence[str]) -> torch.Tensor:
    """(len(texts), C) sentence embeddings from a sentence encoder (sentence-transformers' encode)."""
    from plmkit.model.heads import embed_texts

    model, tokenizer = encoder
    return embed_texts(model, tokenizer, list(texts))


# ---- prompts -----------------------------------------------------------------------------------------
def _fill(template: str, text: str, word: str = "") -> str:
    """One pass, so that a text containing "{label_word}" stays as it is."""
    return _SLOT.sub(lambda m: text if m.group(1) == "text" else word, template)


def build_prompt(config: IclConfig, rows: Sequence[Row], query: str, demonstrations: Sequence[int]) -> str:
    """instruction + the demonstrations (train row indices, in this order) + the query."""
    parts = [config.instruction]
    for i in demonstrations:
        values = rows[i].values
        word = config.label_words.get(label_name(values["label"]))
        if word is None:
            raise ConfigError(
                f"{rows[i].where}: label {values['label']!r} has no label word; add it to label_words"
            )
        parts.append(_fill(config.template, str(values["text"]), word))
    parts.append(_fill(config.query, query))
    return "".join(parts)


def build_prompts(
    config: IclConfig,
    train: TaskSplit | Sequence[Row],
    queries: Sequence[str],
    encoder: Encoder | None = None,
    embeddings: Embeddings | None = None,
    permutation: Sequence[int] | None = None,
) -> list[IclPrompt]:
    """One k-shot prompt per query. `embeddings`: (train (N, C), queries (Q, C)) instead of an encoder;
    `permutation` (of range(shots)) reorders each prompt's demonstrations after config.order."""
    rows = train_rows(train)
    check_shots(config, rows)
    if permutation is not None and sorted(permutation) != list(range(config.shots)):
        raise ConfigError(f"permutation {list(permutation)} is not a permutation of range({config.shots})")
    similarity = similarities(config, rows, queries, encoder, embeddings)
    shared = select_shared(config, rows) if config.selection != "knn" or not config.shots else None
    prompts = []
    for q, text in enumerate(queries):
        sim = similarity[q] if similarity is not None else None
        chosen = shared if shared is not None else nearest(sim, config.shots)
        demos = ordered(config, chosen, sim, q)
        if permutation is not None:
            demos = [demos[i] for i in permutation]
        prompts.append(IclPrompt(build_prompt(config, rows, text, demos), demos))
    return prompts


# ---- scoring -----------------------------------------------------------------------------------------
def encode_prompt(tokenizer: Any, text: str, family: str) -> list[int]:
    """Prompt ids as generation encodes them: seq2seq: the tokenizer's template; else bos + text."""
    if family == "seq2seq":
        return tokenizer.encode(text, add_special_tokens=True)
    bos = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
    ids = bos + tokenizer.encode(text, add_special_tokens=False)
    if not ids and tokenizer.eos_id is not None:  # an empty prompt starts from eos, as in generation
        ids = [tokenizer.eos_id]
    return ids


def label_word_ids(config: IclConfig, tokenizer: Any, labels: LabelVocab) -> list[list[int]]:
    """The ids of each label's word with its lead (" great"), in label order."""
    return [tokenizer.encode(config.word_lead + config.label_words[name]) for name in labels.names]


def family_of(model: nn.Module) -> str:
    return getattr(getattr(model, "config", None), "family", "causal")


def scores_of_ids(
    model: nn.Module, prompts: Sequence[Sequence[int]], words: Sequence[Sequence[int]], batch_size: int = 16
) -> torch.Tensor:
    """(Q, L) mean log-prob of each label word's tokens after each prompt (continuation_logprobs)."""
    limit = model.config.max_positions
    for q, p in enumerate(prompts):
        longest = max(len(w) for w in words)
        total = len(p) if family_of(model) == "seq2seq" else len(p) + longest
        if total > limit:
            raise ConfigError(
                f"prompt {q} is {len(p)} tokens (+ {longest} for the label word) and the model reads at most "
                f"{limit} positions; use fewer shots, shorter texts or a shorter template"
            )
    pairs = [(p, w) for p in prompts for w in words]
    logprobs = continuation_logprobs(model, [p for p, _ in pairs], [w for _, w in pairs], batch_size)
    means = torch.tensor([sum(lp) / len(lp) for lp in logprobs], dtype=torch.float64)
    return means.view(len(prompts), len(words))


def label_word_scores(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    config: IclConfig,
    labels: LabelVocab,
    batch_size: int = 16,
) -> torch.Tensor:
    """(Q, L) log p(label word | prompt), the mean over the word's tokens, for every prompt and label."""
    family = family_of(model)
    ids = [encode_prompt(tokenizer, p, family) for p in prompts]
    return scores_of_ids(model, ids, label_word_ids(config, tokenizer, labels), batch_size)


def content_free_probs(
    model: nn.Module,
    tokenizer: Any,
    config: IclConfig,
    train: TaskSplit | Sequence[Row],
    demonstrations: Sequence[int],
    labels: LabelVocab | None = None,
    batch_size: int = 16,
) -> torch.Tensor:
    """(L,) p_cf: the mean over the content-free inputs (calibration.content_free_inputs) of the label
    distribution (softmax over the label words' scores), each input the query of the same k-shot prompt."""
    rows = train_rows(train)
    labels = labels or label_vocab(config, rows)
    prompts = [build_prompt(config, rows, text, demonstrations) for text in content_free_inputs(tokenizer)]
    return label_probs(label_word_scores(model, tokenizer, prompts, config, labels, batch_size)).mean(0)
