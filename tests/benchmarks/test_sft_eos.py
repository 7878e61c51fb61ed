"""benchmarks/sft_eos.py end to end on the real alpaca_bilingual rows, shrunk to seconds (--tiny): the base is
pre-trained, every arm is fine-tuned and answers before and after, the JSON lines and the result file are
written. The EOS figures themselves are the benchmark's business (a tiny run learns too little to assert them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tiny import ROOT, SRC


def test_sft_eos_tiny(shared_data, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sft_eos.py"), "--tiny", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    rows = [line for line in lines if "arm" in line]
    arms = ["pad!=eos", "pad==eos", "pad==eos-masked-by-id"]
    assert [(r["arm"], r["stage"]) for r in rows] == [(a, s) for a in arms for s in ("before", "after")]
    assert all(r["answers"] == 6 and 0.0 <= r["eos_rate"] <= 1.0 for r in rows)
    pad_eos = {r["arm"]: r["pad_id"] == r["eos_id"] for r in rows}
    assert pad_eos == {"pad!=eos": False, "pad==eos": True, "pad==eos-masked-by-id": True}
    summary = lines[-1]
    assert set(summary["met"]) == {"pad!=eos", "pad==eos"} and summary["wall_seconds"] > 0
    (written,) = tmp_path.glob("sft-eos-tiny-zh-*.json")
    record = json.loads(written.read_text(encoding="utf-8"))
    assert record["results"]["pad!=eos"]["dev_loss"] > 0 and "pretrain" in record["phases_seconds"]
    assert len(record["results"]["pad==eos"]["after"]["samples"]) == 3
