"""`plm evaluate --task icl` (with --shots and its PNG) and `--task cot` on a tiny causal LM: the prompting
paradigms run through the same evaluation command as the fine-tuning tasks; their errors are one line."""

from __future__ import annotations

import json

from finetune_helpers import classification_files, save_base, write_jsonl

from train_helpers import run_cli

ICL = [
    "data.columns={text: sentence, label: label}",
    "task.options.label_words={'0': bad, '1': good}",
]


def test_icl_accuracy_vs_shots(tmp_path, capsys):
    base = save_base(tmp_path / "gpt", "causal", max_positions=256)
    train, dev = classification_files(tmp_path, n_dev=12)
    argv = ["evaluate", base, "--task", "icl", "--data", dev, f"task.options.train={train}", *ICL]
    code, out, err = run_cli([*argv, "--shots", "0,1,2", "--out", tmp_path / "icl"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "icl" / "metrics.json").read_text())
    assert set(metrics["by_shots"]) == {"0", "1", "2"}
    assert all(0 <= m["accuracy"] <= 1 for m in metrics["by_shots"].values())
    assert (tmp_path / "icl" / "accuracy_vs_shots.png").stat().st_size > 0
    assert len((tmp_path / "icl" / "predictions.jsonl").read_text().splitlines()) == 12
    # more shots than the train split holds: one error line, nothing written
    code, _, err = run_cli([*argv, "--shots", "999", "--out", tmp_path / "too-many"], capsys)
    assert code == 2 and err.startswith("error:") and "999" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "too-many").exists()


def test_cot_zero_shot(tmp_path, capsys):
    base = save_base(tmp_path / "gpt", "causal", max_positions=256)
    rows = [
        {
            "question": f"Tom has {i} apples and buys 2. How many?",
            "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}",
        }
        for i in range(4)
    ]
    data = write_jsonl(tmp_path / "gsm.jsonl", rows)
    options = [
        "task.options.mode=zero_shot",
        "task.options.max_new_tokens=6",
        "task.options.answer_max_new_tokens=4",
    ]
    code, out, err = run_cli(
        ["evaluate", base, "--task", "cot", "--data", data, *options, "--out", tmp_path / "cot"], capsys
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "cot" / "metrics.json").read_text())
    assert {"accuracy_strict", "accuracy_flexible"} <= set(metrics)


def test_prompting_tasks_do_not_train(tmp_path, capsys):
    base = save_base(tmp_path / "gpt", "causal", max_positions=256)
    train, dev = classification_files(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n")
    code, _, err = run_cli(
        [
            "finetune",
            recipe,
            f"init_from={base}",
            f"data.train={train}",
            "task.name=icl",
            f"out_dir={tmp_path}/runs",
        ],
        capsys,
    )
    assert code == 2 and "plm evaluate" in err and len(err.strip().splitlines()) == 1


PET = [
    "task.name=pet",
    "task.options.patterns=['{text} it was {mask} .']",
    "task.options.verbalizer={'0': [no], '1': [is]}",
]


def test_pet_trains_and_evaluates_zero_shot(tmp_path, capsys):
    """plm finetune with task pet trains the masked LM through the pattern; plm evaluate --task pet scores
    a masked LM zero-shot with the same options."""
    from finetune_helpers import tiny_finetune

    base = save_base(tmp_path / "bert")
    train, dev = classification_files(tmp_path)
    columns = "data.columns={text: sentence, label: label}"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: pet\n")
    argv = ["finetune", recipe, f"init_from={base}", f"data.train={train}", f"data.dev={dev}", columns]
    code, out, err = run_cli([*argv, *PET, *tiny_finetune(tmp_path, 150)], capsys)
    assert code == 0, err
    trained = json.loads(out.strip().splitlines()[-1])["dev"]["accuracy"]
    assert trained >= 0.8  # the sentiment word decides the label
    zero = ["evaluate", base, "--task", "pet", "--data", dev, columns, *PET[1:], "--out", tmp_path / "zero"]
    code, out, err = run_cli(zero, capsys)
    assert code == 0, err
    assert "accuracy" in json.loads((tmp_path / "zero" / "metrics.json").read_text())
    # a pattern without a mask slot: one error line
    code, _, err = run_cli(
        [*zero[:-2], "task.options.patterns=['{text} it was .']", "--out", tmp_path / "bad"], capsys
    )
    assert code == 2 and "mask" in err and len(err.strip().splitlines()) == 1
