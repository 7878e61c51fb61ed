"""PET's ensemble and distillation through the command path: `plm finetune` with task pet trains one model per
pattern (its auxiliary MLM on data.unlabelled), then `plm finetune` with task pet_distill weighs them by the
train accuracy of their starting model through their pattern, ensembles their label scores on the unlabelled
rows and trains a sequence classifier on the soft labels. The weights and soft labels the run records equal
a hand computation; the distilled checkpoint is a classifier that `plm evaluate --task classification`
reads; misuse is one error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import classification_files, save_base, sentiment_rows, tiny_finetune, write_tsv

from tiny import ROOT
from train_helpers import run_cli

COLUMNS = "data.columns={text: sentence, label: label}"
PATTERNS = "task.options.patterns=['{text} it was {mask} .', '{mask} , {text}']"
VERBALIZER = "task.options.verbalizer={'0': [no], '1': [is]}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny base, its data and two pattern models (patterns 0 and 1), trained once for the module."""
    from plmkit.cli import main  # capsys is function-scoped: the CLI runs directly here

    tmp = tmp_path_factory.mktemp("pet")
    base = save_base(tmp / "bert")
    train, dev = classification_files(tmp, n_train=32, n_dev=16)
    unlabelled = write_tsv(tmp / "unlabelled.tsv", ["sentence"], [(t,) for t, _ in sentiment_rows(24, 7)])
    recipe = tmp / "pet.yaml"
    recipe.write_text("name: pet\n")
    data = [
        f"init_from={base}",
        f"data.train={train}",
        f"data.dev={dev}",
        f"data.unlabelled={unlabelled}",
        COLUMNS,
    ]
    models = []
    for pattern in (0, 1):
        argv = ["finetune", recipe, *data, "task.name=pet", PATTERNS, VERBALIZER, f"task.options.pattern={pattern}",
                f"name=p{pattern}", *tiny_finetune(tmp, 12)]  # fmt: skip
        assert main([str(a) for a in argv]) == 0
        models.append(tmp / "runs" / f"p{pattern}" / "best")
    return tmp, recipe, data, models, train, unlabelled


def distill(trained, capsys, *extra):
    tmp, recipe, data, models, _, _ = trained
    argv = ["finetune", recipe, *data, "task.name=pet_distill", f"task.options.models={[str(m) for m in models]}",
            "name=distilled", "--overwrite", *tiny_finetune(tmp, 6), *extra]  # fmt: skip
    return run_cli(argv, capsys)


def read_rows(path: Path, header_label: bool = True):
    from plmkit.data.tasks import TaskDataConfig, read_split

    config = TaskDataConfig(train=str(path), columns={"text": "sentence", "label": "label"})
    required = ("text", "label") if header_label else ("text",)
    return read_split(config, "train", required, ("label",) if not header_label else ())


def test_weights_and_soft_labels_are_exact(trained, capsys):
    import plmkit
    from plmkit.prompting.patterns import Pattern, Verbalizer

    tmp, _, _, models, train, unlabelled = trained
    code, out, err = distill(trained, capsys)
    assert code == 0, err
    run = tmp / "runs" / "distilled"
    summary = json.loads((run / "metrics.json").read_text())
    ensemble = summary["pet_ensemble"]
    assert ensemble["temperature"] == 2.0 and ensemble["labels"] == ["0", "1"]
    assert [m["checkpoint"] for m in ensemble["models"]] == [str(m) for m in models]

    # by hand: the base's label log-probs at the mask through each pattern, on the labelled rows
    base, tokenizer = plmkit.load(Path(ensemble["models"][0]["init_from"]))
    train_rows, unlabelled_rows = read_rows(train).rows, read_rows(unlabelled, False).rows
    templates = ["{text} it was {mask} .", "{mask} , {text}"]
    word_ids = [tokenizer.encode(w) for w in ("no", "is")]
    assert all(len(ids) == 1 for ids in word_ids)

    def scores(model, template, rows):  # (N, 2): log-softmax at the single [MASK]
        pattern = Pattern.parse(template)
        Verbalizer({"0": ["no"], "1": ["is"]}, tokenizer, single_token=True, prefixes=(pattern.mask_prefix,))
        out = []
        for row in rows:
            ids, positions = pattern.encode(tokenizer, row.values, 32, 1, row.where)
            with torch.no_grad():
                logits = model(torch.tensor([ids])).logits[0, positions[0]].float()
            out.append(logits.log_softmax(-1)[[word_ids[0][0], word_ids[1][0]]])
        return torch.stack(out)

    gold = torch.tensor([int(r.values["label"]) for r in train_rows])
    accuracies = [float((scores(base, t, train_rows).argmax(-1) == gold).float().mean()) for t in templates]
    recorded = [m["train_accuracy_before_training"] for m in ensemble["models"]]
    assert recorded == pytest.approx(accuracies, abs=1e-12)
    weights = [a / sum(accuracies) for a in accuracies]
    assert [m["weight"] for m in ensemble["models"]] == pytest.approx(weights, abs=1e-12)

    merged = sum(
        w * scores(plmkit.load(m)[0], t, unlabelled_rows) for w, m, t in zip(weights, models, templates)
    )
    expected = torch.softmax(merged / 2.0, dim=-1)  # T = 2
    lines = [json.loads(line) for line in (run / "soft_labels.jsonl").read_text().splitlines()]
    assert len(lines) == len(unlabelled_rows) == 24
    assert [line["where"] for line in lines] == [r.where for r in unlabelled_rows]
    got = torch.tensor([[line["soft_labels"]["0"], line["soft_labels"]["1"]] for line in lines])
    assert float((got - expected).abs().max()) < 1e-6
    assert float((got.sum(-1) - 1).abs().max()) < 1e-6

    # the distilled model is a sequence classifier trained on the unlabelled rows
    result = json.loads(out.strip().splitlines()[-1])
    assert 0 <= result["dev"]["accuracy"] <= 1 and "pet_ensemble" in result
    assert "unlabelled" in (run / "recipe.json").read_text()
    evaluated = [
        "evaluate",
        run / "best",
        "--task",
        "classification",
        "--data",
        train,
        COLUMNS,
        "task.max_length=32",
    ]
    evaluated += ["--out", tmp / "ev"]
    code, _, err = run_cli(evaluated, capsys)
    assert code == 0, err


def test_equal_weights(trained, capsys):
    tmp = trained[0]
    code, _, err = distill(trained, capsys, "task.options.weights=equal", "task.options.temperature=1.0")
    assert code == 0, err
    ensemble = json.loads((tmp / "runs" / "distilled" / "metrics.json").read_text())["pet_ensemble"]
    assert [m["weight"] for m in ensemble["models"]] == [0.5, 0.5] and ensemble["temperature"] == 1.0


def test_misuse_is_one_error_line(trained, capsys):
    tmp, recipe, data, models, train, _ = trained
    without_unlabelled = [d for d in data if not d.startswith("data.unlabelled")]
    cases = [
        (["task.name=pet_distill", f"task.options.models=[{models[0]}]", *without_unlabelled], "data.unlabelled"),
        (["task.name=pet_distill", "task.options.models=[]", *data], "models"),
        (["task.name=pet_distill", f"task.options.models=[{tmp / 'nowhere'}]", *data], "does not exist"),
        (["task.name=pet_distill", f"task.options.models=[{tmp / 'bert'}]", *data], "trainer_state"),
        (["task.name=classification", *data], "data.unlabelled"),
        (["task.name=pet_distill", f"task.options.models=[{models[0]}]", "task.options.temperature=0", *data], "temperature"),
    ]  # fmt: skip
    for overrides, words in cases:
        argv = ["finetune", recipe, *overrides, "name=bad", *tiny_finetune(tmp, 2)]
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and err.startswith("error:") and words in err, err
        assert len(err.strip().splitlines()) == 1, err
        assert not (tmp / "runs" / "bad").exists()
    code, _, err = run_cli(["evaluate", models[0], "--task", "pet_distill", "--data", train, COLUMNS], capsys)
    assert code == 2 and "--task classification" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_plm_pet_runs_the_chain_and_resumes(trained, capsys):
    """`plm pet`: a task-pet run per pattern, then the distillation over them; pet.json sums up; --resume
    skips the finished runs; a second start into the folder is refused, --overwrite moves it aside."""
    tmp, recipe, data, _, _, _ = trained
    chain = tmp / "chain.yaml"
    chain.write_text(
        "name: chain\nrepetitions: 1\ndistill: {temperature: 2.0, finetune: {train: {steps: 3}}}\n"
    )
    argv = ["pet", chain, *data, "task.name=pet", PATTERNS, VERBALIZER, *tiny_finetune(tmp, 4)]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    run = tmp / "runs" / "chain"
    summary = json.loads((run / "pet.json").read_text())
    assert json.loads(out.strip().splitlines()[-1]) == summary
    assert set(summary["patterns"]) == {"pattern-0-seed-0", "pattern-1-seed-0"}
    assert summary["distilled"]["step"] == 3 and "accuracy" in summary["distilled"]["dev"]
    models = [m["checkpoint"] for m in summary["pet_ensemble"]["models"]]
    assert models == [str(run / "pattern-0-seed-0" / "best"), str(run / "pattern-1-seed-0" / "best")]
    distilled = json.loads((run / "distilled" / "recipe.json").read_text())
    assert distilled["task"]["name"] == "pet_distill" and distilled["train"]["steps"] == 3
    pattern_run = json.loads((run / "pattern-1-seed-0" / "recipe.json").read_text())
    assert pattern_run["task"]["options"]["pattern"] == 1 and pattern_run["train"]["steps"] == 4

    stamp = (run / "pattern-0-seed-0" / "metrics.json").stat().st_mtime_ns
    (run / "distilled" / "metrics.json").unlink()  # as if the distillation had been cut short
    code, out, err = run_cli([*argv, "--resume"], capsys)
    assert code == 0, err
    assert (run / "pattern-0-seed-0" / "metrics.json").stat().st_mtime_ns == stamp  # skipped
    assert json.loads((run / "pet.json").read_text())["patterns"] == summary["patterns"]

    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--resume" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli([*argv, "task.options.pattern=0"], capsys)
    assert code == 2 and "task.options.pattern" in err
    code, _, err = run_cli([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert len(list((tmp / "runs").glob("chain.old-*"))) == 1


def test_the_pet_recipe_file_is_valid():
    """recipes/pet/fewclue-eprstmt.yaml reads and validates (the chain's runs and the distillation's keys)."""
    from plmkit.config import load_config
    from plmkit.recipes.pet import PetRecipeConfig, distill_run, pattern_runs, validate

    config = load_config(PetRecipeConfig, ROOT / "recipes" / "pet" / "fewclue-eprstmt.yaml", [])
    validate(config)
    runs = pattern_runs(config)
    assert [r.task.options["pattern"] for r in runs] == [0, 1, 2] and runs[0].run_dir.endswith(
        "pattern-0-seed-0"
    )
    final = distill_run(config, ["a", "b", "c"])
    assert final.task.name == "pet_distill" and final.train.steps == 150 and final.optim.lr == 2e-4
