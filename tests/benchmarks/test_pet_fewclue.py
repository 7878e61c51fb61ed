"""benchmarks/pet_fewclue.py end to end on the real FewCLUE EPRSTMT files, shrunk to seconds: a tiny
Chinese base stands in for the WWM checkpoint; the three settings run and the JSON is written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from finetune_helpers import save_chinese_base

from tiny import ROOT, SRC


@pytest.mark.slow
def test_zero_shot_head_and_pet(shared_data, tmp_path):
    base = save_chinese_base(
        tmp_path / "base", shared_data / "cluecorpussmall_sample" / "cluecorpussmall_sampled.txt"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "pet_fewclue.py"), "--pretrained", str(base), "--seeds", "0",
            "--steps", "2", "--threads", "1", "--out", str(tmp_path / "out"), "task.max_length=64",
            "data.test_rows=0:16", "eval.every=1",
        ],
        capture_output=True, text=True, env=env, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [line.get("setting") for line in lines[:3]] == ["zero_shot_pet", "head_finetuning", "pet"]
    (result,) = (tmp_path / "out").glob("pet-fewclue-*.json")
    data = json.loads(result.read_text())
    assert {"zero_shot_pet", "head_finetuning", "pet", "pet_beats_head_finetuning"} <= set(data)


@pytest.mark.slow
def test_distill(shared_data, tmp_path):
    """--distill: plm pet per seed (the three pattern models, then the distilled classifier), the JSON."""
    base = save_chinese_base(
        tmp_path / "base", shared_data / "cluecorpussmall_sample" / "cluecorpussmall_sampled.txt"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [
            sys.executable, str(ROOT / "benchmarks" / "pet_fewclue.py"), "--distill", "--pretrained", str(base),
            "--seeds", "0", "--steps", "2", "--distill-steps", "2", "--threads", "1", "--out", str(tmp_path / "out"),
            "task.max_length=48", "data.test_rows=0:16", "eval.every=1",
        ],
        capture_output=True, text=True, env=env, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    seeds = [json.loads(line) for line in out.splitlines() if line.startswith('{"seed"')]
    assert [line["seed"] for line in seeds] == [0]
    (result,) = (tmp_path / "out").glob("pet-fewclue-distill-*.json")
    data = json.loads(result.read_text())
    assert {"pet_pattern_0", "pet_pattern_1", "pet_pattern_2", "pet_distilled"} <= set(data)
    assert data["unlabelled_rows"] == 266 and len(data["ensembles"][0]) == 3
    assert sum(m["weight"] for m in data["ensembles"][0]) == pytest.approx(1)
