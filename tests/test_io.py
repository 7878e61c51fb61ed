"""plmkit checkpoint folders: exact round trips, tied weights, atomic writes, clear errors."""

from __future__ import annotations

import json
import re
from functools import partial

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import plmkit.io as plmio
import plmkit.weights
from plmkit.errors import CheckpointError
from plmkit.model import ModelConfig
from plmkit.model.registry import register_model_class
from plmkit.tokenizer import Tokenizer
from plmkit.weights import dedupe_shared, load_weights_into
from tiny import tiny_model

VOCAB = 300
TINY = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=32)
FAMILIES = ["causal", "masked", "prefix", "seq2seq"]


tiny = partial(tiny_model, **TINY)  # tiny(family, seed=0, **overrides)


def logits(model: torch.nn.Module) -> torch.Tensor:
    """Logits on a fixed batch, calling each family the way the contract says."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    family = model.config.family
    with torch.no_grad():
        if family == "seq2seq":
            return model(input_ids=ids, attention_mask=mask, decoder_input_ids=ids[:, :5]).logits
        if family == "prefix":
            return model(ids, attention_mask=mask, prefix_lengths=torch.tensor([3, 4])).logits
        return model(ids, attention_mask=mask).logits


def shifted_copy(model: torch.nn.Module) -> None:
    """Move every weight away from its initial value, so a load that silently skips a tensor shows."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))


def tied_pairs(model: torch.nn.Module) -> dict[str, str]:
    return dedupe_shared(model.state_dict())[1]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    corpus = ["hello world", "今天天气真好", "plmkit saves checkpoints"] * 5
    return Tokenizer.train_bpe(corpus, vocab_size=VOCAB)


# ---- round trips -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_gives_identical_logits(family, tmp_path):
    model = tiny(family)
    shifted_copy(model)
    plmio.save(model, None, tmp_path / "ckpt")
    torch.manual_seed(123)  # the fresh model inside load starts from other random weights
    loaded, tok = plmio.load(tmp_path / "ckpt")
    assert tok is None
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert not loaded.training
    assert torch.equal(logits(loaded), logits(model))
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert name == name_b and torch.equal(a, b), name


def test_compiled_model_saves_under_its_own_names(tmp_path):
    model = tiny()
    plmio.save(torch.compile(model), None, tmp_path)
    loaded, _ = plmio.load(tmp_path)
    assert type(loaded) is type(model)
    assert torch.equal(logits(loaded), logits(model))


def test_header_contents(tmp_path):
    model = tiny()
    plmio.save(model, None, tmp_path)
    header = json.loads((tmp_path / "plmkit.json").read_text())
    assert header["format"] == "plmkit"
    assert isinstance(header["version"], str) and header["version"]
    assert header["model_class"] == type(model).__name__
    assert header["model"] == model.config.to_dict()


def test_tokenizer_travels_with_the_checkpoint(tokenizer, tmp_path):
    plmio.save(tiny(), tokenizer, tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "tokenizer.json").is_file()
    _, loaded = plmio.load(tmp_path / "ckpt")
    assert loaded.special_tokens == tokenizer.special_tokens
    assert loaded.encode("今天天气真好 hello") == tokenizer.encode("今天天气真好 hello")


def test_bf16_checkpoint_loads_as_bf16(tmp_path):
    model = tiny().to(torch.bfloat16)
    plmio.save(model, None, tmp_path)
    loaded, _ = plmio.load(tmp_path)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


# ---- tied weights ----------------------------------------------------------------------------------
def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    model = tiny(tie_embeddings=True)
    pairs = tied_pairs(model)
    assert pairs, "a tied causal LM should share its embedding with the LM head"
    plmio.save(model, None, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["tied"]) == pairs
        assert not set(pairs) & set(f.keys())  # aliases are not written twice
    loaded, _ = plmio.load(tmp_path)
    state = loaded.state_dict()
    for alias, source in pairs.items():
        assert state[alias].data_ptr() == state[source].data_ptr(), alias
    assert tied_pairs(loaded) == pairs
    assert torch.equal(logits(loaded), logits(model))


def test_untied_weights_stay_separate(tmp_path):
    model = tiny(tie_embeddings=False)
    assert tied_pairs(model) == {}
    plmio.save(model, None, tmp_path)
    loaded, _ = plmio.load(tmp_path)
    assert tied_pairs(loaded) == {}
    assert torch.equal(logits(loaded), logits(model))


# ---- atomic writes ---------------------------------------------------------------------------------
def leftovers(parent) -> list[str]:
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def failing_save_file(*args, **kwargs):
    raise OSError("No space left on device (simulated)")


def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    first = tiny(seed=0)
    plmio.save(first, None, tmp_path / "ckpt")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()}
    monkeypatch.setattr(plmkit.weights, "save_file", failing_save_file)
    with pytest.raises(OSError, match="simulated"):
        plmio.save(tiny(seed=1), None, tmp_path / "ckpt")
    assert {p.name: p.read_bytes() for p in (tmp_path / "ckpt").iterdir()} == before
    assert leftovers(tmp_path) == []
    monkeypatch.undo()
    loaded, _ = plmio.load(tmp_path / "ckpt")
    assert torch.equal(logits(loaded), logits(first))


def test_failed_first_save_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(plmkit.weights, "save_file", failing_save_file)
    with pytest.raises(OSError):
        plmio.save(tiny(), None, tmp_path / "ckpt")
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_checkpoint(tokenizer, tmp_path):
    plmio.save(tiny(seed=0), tokenizer, tmp_path / "ckpt")
    second = tiny(seed=1)
    plmio.save(second, None, tmp_path / "ckpt")  # the old tokenizer must not survive either
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["model.safetensors", "plmkit.json"]
    assert leftovers(tmp_path) == []
    loaded, tok = plmio.load(tmp_path / "ckpt")
    assert tok is None
    assert torch.equal(logits(loaded), logits(second))


def test_refuses_to_overwrite_a_folder_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="refusing to overwrite"):
        plmio.save(tiny(), None, tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "precious"


# ---- errors ----------------------------------------------------------------------------------------
def test_folder_that_is_no_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"neither plmkit.json \(plmkit\) nor config.json"):
        plmio.load(tmp_path)
    (tmp_path / "config.json").write_text("{}")  # looks like a Hugging Face folder, but has no model_type
    with pytest.raises(CheckpointError, match="model_type"):
        plmio.load(tmp_path)
    with pytest.raises(CheckpointError, match="does not exist"):
        plmio.load(tmp_path / "nowhere")


def test_corrupt_header(tmp_path):
    plmio.save(tiny(), None, tmp_path)
    (tmp_path / "plmkit.json").write_text('{"format": "plmkit", ')
    with pytest.raises(CheckpointError, match="plmkit.json"):
        plmio.load(tmp_path)


def test_missing_weights_name_the_file(tmp_path):
    plmio.save(tiny(), None, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        plmio.load(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.99, 10])
def test_truncated_weights_name_the_file(tmp_path, keep):
    plmio.save(tiny(), None, tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        plmio.load(tmp_path)


def test_wrong_shape_names_the_tensor(tmp_path):
    plmio.save(tiny(), None, tmp_path)
    header = json.loads((tmp_path / "plmkit.json").read_text())
    header["model"]["d_ff"] = 48  # the checkpoint now claims another MLP width than its tensors have
    (tmp_path / "plmkit.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError) as err:
        plmio.load(tmp_path)
    pattern = r"tensor (\S+) has shape \[([\d, ]*)\], but the model expects \[([\d, ]*)\]"
    match = re.search(pattern, str(err.value))
    assert match, str(err.value)
    name, found, expected = match.groups()
    assert "48" in expected.split(", ") and "64" in found.split(", ")
    assert name in tiny(d_ff=48).state_dict()


def test_missing_and_unexpected_tensors_are_listed(tmp_path):
    model = tiny()
    plmio.save(model, None, tmp_path)
    path = tmp_path / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(path))
    dropped = sorted(tensors)[-1]
    del tensors[dropped]
    tensors["head.not_a_weight"] = torch.zeros(2)
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError) as err:
        plmio.load(tmp_path)
    message = str(err.value)
    assert "model.safetensors" in message and dropped in message and "head.not_a_weight" in message


def test_unknown_model_class(tmp_path):
    plmio.save(tiny(), None, tmp_path)
    header = json.loads((tmp_path / "plmkit.json").read_text())
    header["model_class"] = "CausalLLM"
    (tmp_path / "plmkit.json").write_text(json.dumps(header))
    with pytest.raises(CheckpointError, match='unknown model_class "CausalLLM".*did you mean "CausalLM"'):
        plmio.load(tmp_path)


def test_weights_of_another_family_are_rejected(tmp_path):
    plmio.save(tiny("seq2seq"), None, tmp_path)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_weights_into(tiny("causal"), tmp_path / "model.safetensors")


def test_registered_model_class_round_trips(tmp_path):
    @register_model_class
    class ScaledCausalLM(type(tiny())):  # stands in for a task-head model added later
        pass

    torch.manual_seed(0)
    model = ScaledCausalLM(ModelConfig(family="causal", **TINY)).eval()
    plmio.save(model, None, tmp_path)
    loaded, _ = plmio.load(tmp_path)
    assert type(loaded) is ScaledCausalLM
    assert torch.equal(logits(loaded), logits(model))


HEAD_KWARGS = {
    "SequenceClassifier": {
        "num_labels": 3,
        "pooling": "mean",
        "pooler_dense": True,
        "labels": ["a", "b", "c"],
    },
    "TokenClassifier": {"num_labels": 4, "labels": ["O", "B-PER", "I-PER", "B-LOC"]},
    "SpanQA": {},
    "RewardModel": {},
}


@pytest.mark.parametrize("head", sorted(HEAD_KWARGS))
def test_task_head_round_trips_with_its_arguments(head, tmp_path):
    from plmkit.model.registry import MODEL_CLASSES

    kwargs = HEAD_KWARGS[head]
    torch.manual_seed(0)
    model = MODEL_CLASSES[head](ModelConfig(family="masked", **TINY), **kwargs).eval()
    plmio.save(model, None, tmp_path)
    assert json.loads((tmp_path / "plmkit.json").read_text())["model_kwargs"] == kwargs
    loaded, _ = plmio.load(tmp_path)
    assert type(loaded) is type(model)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, out_loaded = model(ids), loaded(ids)
    for key in ("logits", "start_logits", "scores"):
        if getattr(out, key, None) is not None:
            assert torch.equal(getattr(out, key), getattr(out_loaded, key)), key
