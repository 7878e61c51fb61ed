"""Every number of a recipe and of the `plm` commands has a declared range, checked before anything is
written, worded `KEY=VALUE is out of range: must be ...`, and documented in docs/recipe-reference.md."""

from __future__ import annotations

import argparse

import pytest

import train_helpers as h
from plmkit.cli import build_parser
from plmkit.cli.reference import tables
from plmkit.config.fields import Range
from plmkit.errors import ConfigError
from plmkit.recipes.reference import recipe_rows

GPT = h.ROOT / "recipes" / "gpt-clm.yaml"
REFERENCE = h.ROOT / "docs" / "recipe-reference.md"


def test_every_numeric_recipe_key_declares_a_range():
    rows = list(recipe_rows())
    assert {"train.clip_grad", "optim.lr", "model.n_head", "data.sources[].weight", "peft.lora: r"} <= {
        key for key, *_ in rows
    }
    assert [key for key, _, _, ranges in rows if not ranges] == []


def _actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        else:
            yield action


def test_every_numeric_option_is_a_range():
    actions = list(_actions(build_parser()))
    assert [a.option_strings for a in actions if a.type in (int, float)] == []
    assert sum(hasattr(a.type, "range") for a in actions) >= 15


def test_the_reference_doc_holds_the_generated_tables():
    text = REFERENCE.read_text(encoding="utf-8")
    for (start, end), table in tables().items():
        assert start in text and end in text, start
        written = text.split(start, 1)[1].split(end, 1)[0].strip("\n") + "\n"
        assert written == table, (
            "docs/recipe-reference.md is stale: run python -m plmkit.cli.reference docs/recipe-reference.md"
        )


def test_off_spellings_are_worded_once():
    assert Range(gt=0, off="null", means="no clipping").describe() == "> 0, or null for no clipping"
    assert Range(ge=0, off="0", means="no warmup").describe() == ">= 0 (0: no warmup)"
    assert Range(ge=0, lt=1).bounds() == ">= 0 and < 1"
    with pytest.raises(ConfigError, match=r"^x=-1 is out of range: must be > 0, or null for no clipping$"):
        Range(gt=0, off="null", means="no clipping").check(-1, "x")
    for bad in (float("nan"), float("inf"), -float("inf")):
        assert not Range().contains(bad)  # even an unbounded range


@pytest.mark.parametrize(
    "override, line",
    [
        ("train.clip_grad=-1", "train.clip_grad=-1 is out of range: must be > 0, or null for no clipping"),
        ("train.clip_grad=0", "train.clip_grad=0 is out of range: must be > 0, or null for no clipping"),
        ("train.accumulation=0", "train.accumulation=0 is out of range: must be >= 1"),
        ("log.every=0", "log.every=0 is out of range: must be >= 1"),
        ("optim.lr=-1", "optim.lr=-1 is out of range: must be > 0"),
        ("optim.lr=.nan", "optim.lr=nan is out of range: must be > 0"),
        ("optim.betas=[0.9, 1.5]", "optim.betas[1]=1.5 is out of range: must be >= 0 and < 1"),
        (
            "data.validation_fraction=1.5",
            "data.validation_fraction=1.5 is out of range: must be >= 0 and < 1 (0: no validation)",
        ),
        ("data.sources=[{path: x.txt, weight: 0}]", "data.sources[0].weight=0 is out of range: must be > 0"),
        ("model.dropout=1", "model.dropout=1 is out of range: must be >= 0 and < 1 (0: no dropout)"),
        ("model.n_head=0", "model.n_head=0 is out of range: must be >= 1"),
        ("checkpoint.keep_last=-1", "checkpoint.keep_last=-1 is out of range: must be >= 0 (0: keep every checkpoint)"),
        ("objective.options={mlm_probability: 2}", "objective.options.mlm_probability=2 is out of range"),
    ],
)  # fmt: skip
def test_the_issue_cases_fail_with_one_line_and_no_run_folder(tmp_path, capsys, override, line):
    runs = tmp_path / "runs"
    objective = ["objective.name=mlm", "model.preset=bert-tiny"] if "mlm_" in override else []
    code, out, err = h.run_cli(["pretrain", GPT, *objective, override, f"out_dir={runs}/{{name}}"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith(f"error: {line}"), err
    assert not runs.exists()  # rejected before the run folder (or anything else) is written


def test_clip_grad_null_is_off_and_reaches_the_run(tmp_path):
    from plmkit.config import load_config
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.validate import validate

    config = load_config(RecipeConfig, GPT, ["train.clip_grad=null"])
    validate(config)
    assert config.train.clip_grad is None
