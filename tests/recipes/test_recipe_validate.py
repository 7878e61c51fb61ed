"""The whole recipe is checked before any file is written or tokenizer trained (plmkit.recipes.validate),
and every mistake is worded the same way: the dotted key and the closest valid choice."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from plmkit.config import load_config, to_dict
from plmkit.data.objectives.electra import ElectraObjective
from plmkit.errors import ConfigError
from plmkit.recipes.common import recipe_architecture
from plmkit.recipes.config import RecipeConfig
from plmkit.recipes.validate import validate
from tiny import ROOT

GPT = ROOT / "recipes" / "gpt-clm.yaml"


def recipe(*overrides: str, path: Path = GPT) -> RecipeConfig:
    return load_config(RecipeConfig, path, list(overrides))


def plm(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    paths = [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    return subprocess.run(
        [sys.executable, "-m", "plmkit", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=120
    )


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.n_layers=2", 'unknown config key "model.n_layers" (did you mean "model.n_layer"?)'),
        (
            "schedule.kind=cosin",
            'schedule.kind="cosin" is not one of linear, cosine, constant, wsd (did you mean "cosine"?)',
        ),
    ],
)
def test_cli_fails_before_writing_anything(tmp_path, override, message):
    result = plm(tmp_path, "pretrain", str(GPT), override, "out_dir=runs/{name}")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []  # no run folder, no tokenizer, no cache


def test_every_shipped_recipe_validates():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        config = recipe(path=path)
        if config.init_from:  # its checkpoint is written by another recipe
            config.init_from = None
            config.model.preset = "gpt2-tiny"
        validate(config)


def test_typed_sections_reject_values_outside_their_choices_and_ranges():
    with pytest.raises(
        ConfigError,
        match=r'train.precision="bf61" is not one of auto, fp32, bf16, fp16 '
        r'\(did you mean "bf16"\?\)',
    ):
        recipe("train.precision=bf61")
    with pytest.raises(ConfigError, match=r'distributed.strategy="fsdb" .*did you mean "fsdp"'):
        recipe("distributed.strategy=fsdb")
    with pytest.raises(ConfigError, match=r'quantize.mode="nf5" is not one of int8, int8-dynamic, nf4'):
        recipe("quantize.mode=nf5")
    with pytest.raises(ConfigError, match=r'model.activation="swish" is not one of'):
        recipe("model.activation=swish")
    with pytest.raises(ConfigError, match=r"train.batch_size=0 is out of range: must be >= 1"):
        recipe("train.batch_size=0")
    with pytest.raises(ConfigError, match=r'objective.name="clmm" .*did you mean "clm"'):
        recipe("objective.name=clmm")


def test_model_section_keeps_only_the_keys_given():
    config = recipe("model.n_kv_head=null")
    assert to_dict(config)["model"] == {
        "preset": "gpt2-tiny",
        "n_layer": 6,
        "d_model": 384,
        "n_head": 6,
        "d_ff": 1536,
        "dropout": 0.0,
        "n_kv_head": None,
    }
    architecture = recipe_architecture(config)
    assert (architecture.n_layer, architecture.family, architecture.n_kv_head) == (6, "causal", None)
    assert load_config(RecipeConfig, None, []).model.overrides() == {}


def test_objective_options_are_checked_against_the_objective():
    with pytest.raises(
        ConfigError,
        match=r'^unknown config key "objective.options.mlm_probabilty" '
        r'\(did you mean "objective.options.mlm_probability"\?\)$',
    ):
        validate(recipe("objective.name=mlm", "model.family=masked", "objective.options.mlm_probabilty=0.2"))
    with pytest.raises(ConfigError, match=r'"objective.options.seed"'):  # the recipe's seed is the seed
        validate(recipe("objective.options.seed=3"))
    with pytest.raises(ConfigError, match=r'config key "objective.options.mlm_probability" must be float'):
        validate(
            recipe("objective.name=mlm", "model.family=masked", "objective.options.mlm_probability=high")
        )
    with pytest.raises(
        ConfigError, match=r"^objective.options.mlm_probability=1.5 is out of range: must be > 0 and <= 1"
    ):
        validate(recipe("objective.name=mlm", "model.family=masked", "objective.options.mlm_probability=1.5"))
    with pytest.raises(
        ConfigError, match=r"^objective.options.noise_density=0 is out of range: must be > 0 and < 1"
    ):
        validate(
            recipe("objective.name=t5_span", "model.family=seq2seq", "objective.options.noise_density=0")
        )
    validate(recipe("objective.name=mlm", "model.family=masked", "objective.options.mlm_probability=0.3"))


def test_electra_declares_its_model_and_its_options():
    electra = ("objective.name=electra", "model.family=masked")
    validate(recipe(*electra, "objective.options.model={generator_layers: 1, disc_weight: 20}"))
    with pytest.raises(
        ConfigError,
        match=r'"objective.options.model.generator_layer" '
        r'\(did you mean "objective.options.model.generator_layers"\?\)',
    ):
        validate(recipe(*electra, "objective.options.model={generator_layer: 1}"))
    with pytest.raises(
        ConfigError, match=r"objective.options.model.temperature=0 is out of range: must be > 0"
    ):
        validate(recipe(*electra, "objective.options.model={temperature: 0}"))
    with pytest.raises(ConfigError, match=r'unknown config key "objective.options.model"'):
        validate(recipe("objective.options.model={generator_layers: 1}"))  # clm builds a plain model
    assert ElectraObjective.family == "masked" and ElectraObjective.model_options is not None


def test_model_family_and_architecture_are_checked_before_building():
    with pytest.raises(ConfigError, match="objective 'mlm' trains masked models but model.family='causal'"):
        validate(recipe("objective.name=mlm"))
    with pytest.raises(ConfigError, match="not divisible by model.n_head=5"):
        validate(recipe("model.n_head=5"))


@pytest.mark.parametrize(
    "peft, message",
    [
        ("{method: lora, rr: 2}", r'unknown config key "peft.rr" \(did you mean "peft.r"\?\)'),
        (
            "{method: lorra}",
            r'peft.method="lorra" is not one of lora, adapter, bitfit, prompt, prefix '
            r'\(did you mean "lora"\?\)',
        ),
        ("{r: 8}", r'missing required config key "peft.method"'),
        ("{method: lora, r: 0}", r"^peft.r=0 is out of range: must be >= 1$"),
        (
            "{method: lora, dropout: 1}",
            r"^peft.dropout=1 is out of range: must be >= 0 and < 1 \(0: no dropout\)$",
        ),
        ("{method: bitfit, r: 2}", r'unknown config key "peft.r"'),
        ("{method: prefix, n_token: 4}", r'"peft.n_token" \(did you mean "peft.n_tokens"\?\)'),
        ("{method: adapter, train_head: maybe}", r'config key "peft.train_head" must be bool'),
    ],
)
def test_peft_section_is_checked_against_the_method_options(peft, message):
    with pytest.raises(ConfigError, match=message):
        validate(recipe(f"peft={peft}"))


def test_valid_peft_sections_pass():
    for peft in (
        "{method: lora, r: 4, target: all-linear}",
        "{method: prompt, n_tokens: 4}",
        "{method: bitfit, train_head: true}",
        "{method: adapter, kind: pfeiffer}",
    ):
        validate(recipe(f"peft={peft}"))
