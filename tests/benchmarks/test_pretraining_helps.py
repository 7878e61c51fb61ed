"""benchmarks/pretraining_helps.py end to end on the real ChnSentiCorp data, shrunk to seconds: a tiny base
stands in for the WWM checkpoint; both runs train, the JSON and the PNG are written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from finetune_helpers import save_base

from tiny import ROOT, SRC


def test_pretrained_vs_random_init(shared_data, tmp_path):
    base = save_base(tmp_path / "base")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "pretraining_helps.py"), "--pretrained", str(base),
            "--steps", "2", "--threads", "1", "--out", str(tmp_path / "out"), "task.max_length=32",
            "eval.every=1", "data.train_rows=0:64", "data.dev_rows=0:32", "data.test_rows=0:32",
        ],
        capture_output=True, text=True, env=env, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    runs = {line["run"]: line for line in lines if "run" in line}
    assert set(runs) == {"pretrained", "random_init"}
    assert all(len(r["curve"]) == 2 and "accuracy" in r["dev"] for r in runs.values())
    assert lines[-1]["winner"] in ("pretrained", "random_init", "tie")
    assert len(list((tmp_path / "out").glob("pretraining-helps-*.json"))) == 1
