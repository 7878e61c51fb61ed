"""A recipe that continues from another run's checkpoint (lora-clm from gpt-clm) says so when that checkpoint
is missing: which run writes it and how to make it, before any run folder is written."""

from __future__ import annotations

import train_helpers as h

LORA = h.ROOT / "recipes" / "lora-clm.yaml"


def test_a_missing_base_names_the_recipe_that_writes_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # as in a clone: recipes/ here, no runs/ yet
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "gpt-clm.yaml").symlink_to(h.ROOT / "recipes" / "gpt-clm.yaml")
    code, _, err = h.run_cli(["pretrain", LORA], capsys)
    assert code == 2
    assert err.strip() == (
        "error: init_from runs/gpt-clm/checkpoints/step-00002000 does not exist: lora-clm continues from "
        "gpt-clm's checkpoint; run plm pretrain recipes/gpt-clm.yaml first or set init_from= to a plmkit "
        "or Hugging Face model folder"
    )
    assert not (tmp_path / "runs").exists()  # checked before anything is written

    (tmp_path / "runs" / "gpt-clm" / "checkpoints" / "step-00000500").mkdir(parents=True)  # a shorter run
    code, _, err = h.run_cli(["pretrain", LORA], capsys)
    assert code == 2 and err.strip().endswith(
        "lora-clm continues from gpt-clm's checkpoint; runs/gpt-clm/checkpoints has step-00000500: "
        "set init_from= to one of them or finish that run"
    )
    assert not (tmp_path / "runs" / "lora-clm").exists()


def test_a_missing_base_elsewhere_is_named_as_init_from(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = h.run_cli(["pretrain", LORA, "init_from=models/base"], capsys)
    assert code == 2 and err.strip() == (
        "error: init_from models/base does not exist: lora-clm continues from that model; set init_from= "
        "to a plmkit checkpoint or a Hugging Face model folder"
    )
    other = tmp_path / "elsewhere" / "checkpoints" / "step-00000010"
    code, _, err = h.run_cli(["pretrain", LORA, f"init_from={other}"], capsys)
    assert code == 2 and err.strip() == (
        f"error: init_from {other} does not exist: lora-clm continues from a checkpoint of the run in "
        f"{other.parent.parent}; train that run first or set init_from= to a plmkit or Hugging Face model folder"
    )
    assert "tokenizer" not in err  # not mistaken for a tokenizer path
