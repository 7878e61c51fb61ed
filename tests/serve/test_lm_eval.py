"""lm-evaluation-harness against `plm serve`: `lm-eval run --model local-completions` with
`tokenizer_backend=remote` and `num_concurrent=4`, offline, on SST-2 dev rows as a local JSONL
`multiple_choice` task. Its accuracy, and each row's choice, equal plmkit's own `plm evaluate --task icl`
(zero-shot, the same prompt "Review: {text}\\nSentiment:" and label words " negative" / " positive"): the
server's `echo` + `logprobs` give the log-likelihoods plmkit's scoring computes. A `generate_until` task
runs through the same server."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import run_cli

pytest.importorskip("fastapi")
pytest.importorskip("lm_eval")
pytest.importorskip("tenacity", reason="lm-eval's API models (local-completions) need lm-eval[api]: tenacity")

ROWS = 40  # SST-2 dev rows scored
# YAML double quotes: "\n" is a newline; {data} is filled in by the test
MULTIPLE_CHOICE = r"""task: sst2_plmkit
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "Review: {{sentence}}\nSentiment:"
doc_to_target: label
doc_to_choice: ["negative", "positive"]
metric_list:
  - metric: acc
"""
GENERATE = r"""task: sst2_plmkit_generate
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: generate_until
doc_to_text: "Review: {{sentence}}\nSentiment:"
doc_to_target: "{{['negative', 'positive'][label]}}"
generation_kwargs:
  until: ["\n"]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


def sst2_rows(path: Path, n: int) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [{"sentence": r["sentence"].strip(), "label": int(r["label"])} for r in rows[:n]]


def save_sst2_lm(folder: Path, train: list[dict]) -> Path:
    """A tiny random GPT (seed 0) with a byte-level BPE trained on SST-2 sentences; " negative" and
    " positive" are single tokens, so that lm-eval's summed log-likelihood and plmkit's mean per token
    pick the same label."""
    import torch

    from plmkit.io import save
    from plmkit.model import ModelConfig, build_model
    from plmkit.tokenizer import Tokenizer
    from plmkit.tokenizer.special import SpecialTokens

    texts = [r["sentence"] for r in train] + ["Review: x\nSentiment: negative\nSentiment: positive\n"] * 50
    special = SpecialTokens(eos="<|endoftext|>", pad="<|pad|>")
    tokenizer = Tokenizer.train(texts, kind="bpe", vocab_size=1000, special_tokens=special)
    for word in (" negative", " positive"):
        assert len(tokenizer.encode(word)) == 1
    config = ModelConfig(
        family="causal", vocab_size=tokenizer.vocab_size, d_model=48, n_layer=2, n_head=2, d_ff=96,
        max_positions=512, dropout=0.0, pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(config)
    save(model, tokenizer, folder)
    return folder


@pytest.mark.slow
def test_lm_eval_accuracy_equals_plmkit_scoring(shared_data, tmp_path, capsys):
    from plmkit.serve.app import build_app
    from plmkit.serve.batcher import Batcher
    from plmkit.serve.served import load_served
    from plmkit.serve.server import ServerThread
    from plmkit.serve.settings import ServeSettings

    dev = sst2_rows(shared_data / "sst2" / "dev.tsv", ROWS)
    train = sst2_rows(shared_data / "sst2" / "train_first10k.tsv", 3000)
    data = tmp_path / "dev.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in dev), encoding="utf-8")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train[:20]), encoding="utf-8")
    model = save_sst2_lm(tmp_path / "sst2-lm", train)
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "sst2_plmkit.yaml").write_text(MULTIPLE_CHOICE.replace("{data}", str(data)), encoding="utf-8")
    (tasks / "sst2_plmkit_generate.yaml").write_text(GENERATE.replace("{data}", str(data)), encoding="utf-8")

    # plmkit's own scoring: in-context learning, zero-shot, the same prompt and label words
    columns = "data.columns={text: sentence, label: label}"
    words = "task.options.label_words={'0': negative, '1': positive}"
    argv = ["evaluate", model, "--task", "icl", "--data", data, columns, words, "task.options.shots=0"]
    code, _, err = run_cli(
        [*argv, f"task.options.train={tmp_path / 'train.jsonl'}", "--out", tmp_path / "icl"], capsys
    )
    assert code == 0, err
    plmkit_accuracy = json.loads((tmp_path / "icl" / "metrics.json").read_text())["accuracy"]
    predictions = [
        json.loads(line) for line in (tmp_path / "icl" / "predictions.jsonl").read_text().splitlines()
    ]
    plmkit_choices = [int(p["prediction"]) for p in predictions]
    plmkit_margins = [math.log(p["probs"]["1"] / p["probs"]["0"]) for p in predictions]  # ll(pos) - ll(neg)

    served = load_served(model)
    settings = ServeSettings(max_batch=8)
    batcher = Batcher(served, settings.max_batch, settings.max_queue)
    try:
        with ServerThread(build_app(served, batcher, settings)) as server:
            model_args = (
                f"model={served.name},base_url={server.url}/v1/completions,tokenizer_backend=remote,"
                "num_concurrent=4,max_retries=1,max_length=512,timeout=120"
            )
            env = {
                **os.environ,
                "HF_DATASETS_OFFLINE": "1",
                "HF_HUB_OFFLINE": "1",
                "HF_HOME": str(tmp_path / "hf"),
                "OMP_NUM_THREADS": "1",
            }
            command = [
                sys.executable, "-m", "lm_eval", "run", "--model", "local-completions", "--model_args", model_args,
                "--tasks", "sst2_plmkit", "sst2_plmkit_generate", "--include_path", str(tasks),
                "--output_path", str(tmp_path / "lm-eval"), "--log_samples",
            ]  # fmt: skip
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, done.stderr[-4000:]
            steps, rows = batcher.steps, batcher.batch_rows
    finally:
        batcher.close()
    results_file = next((tmp_path / "lm-eval").rglob("results_*.json"))
    results = json.loads(results_file.read_text())["results"]
    samples = next((tmp_path / "lm-eval").rglob("samples_sst2_plmkit_2*.jsonl"))
    by_doc = sorted(
        (json.loads(line) for line in samples.read_text().splitlines()), key=lambda s: s["doc_id"]
    )
    loglikelihoods = [[float(r[0]) for r in s["filtered_resps"]] for s in by_doc]  # (negative, positive)
    assert [int(ll[1] > ll[0]) for ll in loglikelihoods] == plmkit_choices
    assert [ll[1] - ll[0] for ll in loglikelihoods] == pytest.approx(plmkit_margins, abs=1e-4)
    assert results["sst2_plmkit"]["acc,none"] == pytest.approx(plmkit_accuracy, abs=1e-12)
    assert "exact_match,none" in results["sst2_plmkit_generate"]  # generate_until ran (a random model: 0)
    generated = next((tmp_path / "lm-eval").rglob("samples_sst2_plmkit_generate_*.jsonl"))
    assert len(generated.read_text().splitlines()) == ROWS
    assert rows > steps  # num_concurrent=4: the requests were batched
