"""`plm sft` end to end on a tiny causal LM and tiny instruction files: it learns (the dev loss per assistant
token falls), packing gives the unpacked loss, resume is exact, the checkpoint's tokenizer carries the chat
template, a pad == eos tokenizer keeps its EOS labels, and bad input fails with one error line and writes
nothing."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from finetune_helpers import save_base, write_jsonl

from tiny import ROOT
from train_helpers import COMMON, english_text, losses_by_step, read_metrics, run_cli

WORDS = "red green blue cat dog bird sun moon tree river stone cloud".split()
SHIPPED = sorted((ROOT / "recipes" / "sft").glob("*.yaml"))


def save_causal_base(folder: Path, pad_is_eos: bool = False) -> Path:
    """A tiny untrained GPT-2-layout causal LM with a byte-level BPE tokenizer (eos <|endoftext|>; pad
    <|pad|>, or the eos itself with `pad_is_eos`), saved as a plmkit checkpoint."""
    from plmkit.io import save
    from plmkit.model import ModelConfig, build_model
    from plmkit.tokenizer import Tokenizer
    from plmkit.tokenizer.special import SpecialTokens

    if (folder / "plmkit.json").is_file():
        return folder
    texts = [english_text(8_000), " ".join(WORDS * 20), "### Instruction:\n### Response:\n" * 20]
    tokenizer = Tokenizer.train(texts, kind="bpe", vocab_size=320, family="gpt2")
    if pad_is_eos:
        special = SpecialTokens(eos=tokenizer.special_tokens.eos, pad=tokenizer.special_tokens.eos)
        tokenizer = Tokenizer(tokenizer.backend, special)
    config = ModelConfig(
        family="causal", vocab_size=tokenizer.vocab_size, d_model=32, n_layer=2, n_head=2, d_ff=64,
        max_positions=256, dropout=0.0, pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(config)
    save(model, tokenizer, folder)
    return folder


def alpaca_rows(n: int, seed: int) -> list[dict]:
    """Learnable instructions: name a colour / animal / thing and get it back twice."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        word = rng.choice(WORDS)
        extra = rng.choice(["", "", f"{rng.choice(WORDS)}"])
        rows.append({"instruction": f"repeat {word}", "input": extra, "output": f"{word} {word}"})
    return rows


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("sft-bases")
    return {
        "causal": save_causal_base(folder / "gpt"),
        "pad_is_eos": save_causal_base(folder / "gpt-pad-eos", pad_is_eos=True),
        "masked": save_base(folder / "bert"),
    }


def tiny_sft(tmp: Path, steps: int) -> list[str]:
    return [
        f"out_dir={tmp / 'runs' / '{name}'}",
        f"train.steps={steps}",
        "train.batch_size=8",
        "schedule.warmup_steps=0",
        "optim.lr=3e-3",
        "eval.every=0",
        "checkpoint.every=0",
        "log.every=1",
        "data.max_length=64",
        *COMMON,
    ]


def sft(capsys, tmp: Path, base: Path, *overrides: str, steps: int = 4, flags: tuple = ()):
    recipe = tmp / "recipe.yaml"  # every setting comes from the overrides
    recipe.write_text("name: sft\n")
    return run_cli(["sft", recipe, f"init_from={base}", *tiny_sft(tmp, steps), *overrides, *flags], capsys)


def alpaca_data(tmp: Path, n_train: int = 64, n_dev: int = 16) -> list[str]:
    train = write_jsonl(tmp / "train.jsonl", alpaca_rows(n_train, 0))
    dev = write_jsonl(tmp / "dev.jsonl", alpaca_rows(n_dev, 1))
    return [f"data.train={train}", f"data.dev={dev}"]


def test_sft_learns_and_saves_the_template(bases, tmp_path, capsys):
    from plmkit.prompting.chat import BUILTIN, chat_prompt_ids
    from plmkit.tokenizer import Tokenizer

    code, out, err = sft(capsys, tmp_path, bases["causal"], *alpaca_data(tmp_path), "name=learn", steps=40)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    run = tmp_path / "runs" / "learn"
    dev = [r["dev_loss"] for r in read_metrics(run) if "dev_loss" in r]
    assert len(dev) == 2 and dev[-1] < 0.7 * dev[0]  # before training, and at the end
    assert result["dev"]["loss"] == pytest.approx(dev[-1], rel=1e-6)
    assert result["chat_template"] == "plain"  # a GPT-2 vocabulary has no ChatML tokens
    assert json.loads((run / "metrics.json").read_text())["examples"] == {"train": 64, "dev": 16}
    # the checkpoint's tokenizer carries the template it was trained with, so chat renders the same
    tokenizer = Tokenizer.load(Path(result["checkpoint"]))
    assert tokenizer.chat_template == BUILTIN["plain"].source
    prompt = chat_prompt_ids(tokenizer, [{"role": "user", "content": "repeat cat"}])
    assert tokenizer.decode(prompt) == "### Instruction:\nrepeat cat\n\n### Response:\n"


def test_packed_first_step_equals_unpacked(bases, tmp_path, capsys):
    """The same six conversations in one step: six padded rows, or one packed block with per-document
    positions and a block-diagonal mask, give the same loss per assistant token."""
    train = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(6, 2))  # 228 tokens
    data = [f"data.train={train}", "data.max_length=256", "train.steps=1", "train.batch_size=6"]
    code, _, err = sft(capsys, tmp_path, bases["causal"], *data, "name=rows")
    assert code == 0, err
    code, out, err = sft(
        capsys, tmp_path, bases["causal"], *data, "name=packed", "pack=true", "train.batch_size=1"
    )
    assert code == 0, err
    assert "1 packed blocks of 256 tokens" in out
    rows, packed = losses_by_step(tmp_path / "runs" / "rows"), losses_by_step(tmp_path / "runs" / "packed")
    assert abs(rows[1] - packed[1]) < 1e-5


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(sorted((run / "checkpoints").glob("step-*"))[-1] / "model.safetensors")


def test_resume_equals_uninterrupted(bases, tmp_path, capsys):
    data = [
        *alpaca_data(tmp_path),
        "eval.every=3",
        "checkpoint.every=3",
        "checkpoint.keep_last=0",
        "pack=true",
    ]
    for name in ("whole", "split"):
        code, _, err = sft(capsys, tmp_path, bases["causal"], *data, f"name={name}", steps=6)
        assert code == 0, err
    whole, split = tmp_path / "runs" / "whole", tmp_path / "runs" / "split"
    shutil.rmtree(split / "checkpoints" / "step-00000006")
    code, _, err = sft(
        capsys, tmp_path, bases["causal"], *data, "name=split", steps=6,
        flags=(f"--resume={split / 'checkpoints' / 'step-00000003'}",),
    )  # fmt: skip
    assert code == 0, err
    assert losses_by_step(whole) == losses_by_step(split)
    expected, resumed = final_weights(whole), final_weights(split)
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    dev = [[r["dev_loss"] for r in read_metrics(run) if "dev_loss" in r] for run in (whole, split)]
    assert dev[0] == dev[1] and len(dev[0]) == 3  # steps 0, 3 and 6


def test_pad_equal_to_eos_keeps_the_eos_labels(bases, tmp_path):
    """Padding by position: with pad id == eos id, each answer's EOS is still a target, the padding is not."""
    from plmkit.config import load_config
    from plmkit.recipes.sft import SftLoss
    from plmkit.recipes.sft_config import SftConfig
    from plmkit.recipes.sft_inputs import collate, pad_id, read_sft_split, sft_template, sft_tokenizer

    train = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(6, 3))
    config = load_config(SftConfig, None, [f"init_from={bases['pad_is_eos']}", f"data.train={train}"])
    tokenizer = sft_tokenizer(config)
    assert tokenizer.pad_id == tokenizer.eos_id
    split = read_sft_split(config, "train", tokenizer, sft_template(config, tokenizer))
    batch = collate(config, split.examples, pad_id(tokenizer))
    for row, example in zip(batch["labels"], split.examples):
        n = len(example["input_ids"])
        assert row[n - 1] == tokenizer.eos_id  # the answer's end, trained
        assert (row[n:] == -100).all()  # the padding (also eos ids), not trained
    assert SftLoss().count(batch) == sum(sum(1 for x in e["labels"][1:] if x != -100) for e in split.examples)


def test_sharegpt_rows_and_skipped_rows(bases, tmp_path, capsys):
    """List-valued columns (sharegpt's conversations) are read as they are; with data.on_error=skip a bad
    conversation is counted, not fatal."""
    good = {"conversations": [{"from": "human", "value": "repeat sun"}, {"from": "gpt", "value": "sun sun"}]}
    bad = {"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]}
    train = write_jsonl(tmp_path / "chat.jsonl", [good, bad, good, good])
    code, out, err = sft(
        capsys, tmp_path, bases["causal"], f"data.train={train}", "data.format=sharegpt",
        "data.on_error=skip", "name=chat", steps=2,
    )  # fmt: skip
    assert code == 0, err
    skipped = json.loads(out.strip().splitlines()[-1])["skipped"]["train"]
    assert skipped["counts"] == {"row that is not a usable conversation": 1}
    assert skipped["first"]["row that is not a usable conversation"] == [f"{train}:2"]


# ---- bad input: one error line, exit 2, no run folder ------------------------------------------------------
def bad_run(capsys, tmp: Path, base: Path, *overrides: str) -> str:
    code, _, err = sft(capsys, tmp, base, *overrides, "name=bad")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert not (tmp / "runs" / "bad").exists()
    return lines[0]


def openai_file(tmp: Path, messages: list[dict]) -> Path:
    ok = {
        "messages": [{"role": "user", "content": "repeat sun"}, {"role": "assistant", "content": "sun sun"}]
    }
    return write_jsonl(tmp / "chat.jsonl", [ok, {"messages": messages}])


def test_unknown_role(bases, tmp_path, capsys):
    train = openai_file(tmp_path, [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}])
    err = bad_run(capsys, tmp_path, bases["causal"], f"data.train={train}", "data.format=openai")
    assert "chat.jsonl:2" in err and '"robot"' in err and "data.on_error=skip" in err


def test_two_assistant_turns_in_a_row(bases, tmp_path, capsys):
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}]
    train = openai_file(tmp_path, [*turns, {"role": "assistant", "content": "b"}])
    err = bad_run(capsys, tmp_path, bases["causal"], f"data.train={train}", "data.format=openai")
    assert "chat.jsonl:2" in err and "both assistant turns" in err


def test_template_that_masks_nothing(bases, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(4, 0))
    template = "{% for m in messages %}{{ m['role'] }}: ...\\n{% endfor %}"  # never writes the answers
    err = bad_run(capsys, tmp_path, bases["causal"], f"data.train={train}", f"chat_template={template}")
    assert "train.jsonl:1" in err and "nothing can be masked" in err


def test_builtin_template_without_its_tokens(bases, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(4, 0))
    err = bad_run(capsys, tmp_path, bases["causal"], f"data.train={train}", "chat_template=chatml")
    assert "<|im_start|>" in err and "chat_template=plain" in err


def test_non_causal_base(bases, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(4, 0))
    err = bad_run(capsys, tmp_path, bases["masked"], f"data.train={train}")
    assert "MaskedLM" in err and "causal LM" in err


def test_missing_instruction_column(bases, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": "x", "output": "y"}])
    err = bad_run(capsys, tmp_path, bases["causal"], f"data.train={train}")
    assert "train.jsonl:1" in err and "'instruction'" in err and "data.columns.instruction" in err


def test_random_init_from_a_preset(bases, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(8, 0))
    preset = [
        "init_from=null", f"tokenizer.path={bases['causal']}", "model.preset=gpt2-tiny", "model.n_layer=1",
        "model.d_model=32", "model.n_head=2", "model.d_ff=64", f"data.train={train}",
    ]  # fmt: skip
    code, out, err = sft(capsys, tmp_path, bases["causal"], *preset, "name=scratch", steps=2)
    assert code == 0, err
    assert "CausalLM, " in out and json.loads(out.strip().splitlines()[-1])["step"] == 2
    err = bad_run(capsys, tmp_path, bases["causal"], *preset, "model.preset=bert-tiny")
    assert "model.preset=bert-tiny builds a masked model" in err


def test_max_length_beyond_the_positions(bases, tmp_path, capsys):
    train = write_jsonl(tmp_path / "train.jsonl", alpaca_rows(4, 0))
    err = bad_run(capsys, tmp_path, bases["causal"], f"data.train={train}", "data.max_length=1000")
    assert "data.max_length=1000" in err and "max_positions=256" in err


@pytest.mark.parametrize("recipe", SHIPPED, ids=[r.stem for r in SHIPPED])
def test_shipped_recipes_read_and_validate(recipe):
    from plmkit.config import load_config
    from plmkit.recipes.sft import validate
    from plmkit.recipes.sft_config import SftConfig

    config = load_config(SftConfig, recipe)
    validate(config)
    assert config.init_from and config.data.train and config.data.dev
