"""benchmarks/bench_align.py: a --tiny run end to end (checks before timing, both rows timed, the JSON
written). Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tiny import ROOT, SRC


@pytest.mark.slow  # trl and transformers' Trainer stack take seconds to import
def test_tiny_run_checks_then_times_both_steps(tmp_path):
    pytest.importorskip("trl")
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_align.py"), "--tiny", "--out", str(tmp_path)]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # stdout: JSON lines only
    assert [line["section"] for line in lines] == ["reward", "dpo"]
    (path,) = tmp_path.glob("align-*.json")
    result = json.loads(path.read_text())
    reward, dpo = result["rows"]
    assert reward["check"]["passed"] and reward["check"]["scores_max_diff"] <= 1e-4
    assert reward["check"]["step1_loss_diff"] <= 1e-4
    assert dpo["check"]["step1_loss_plmkit"] == pytest.approx(0.6931472, abs=1e-6)
    assert dpo["check"]["step2_loss_diff"] <= 1e-4 and dpo["check"]["logits_max_diff"] <= 1e-4
    for row in (reward, dpo):
        assert row["status"] == "ok" and row["ratio"]["median"] > 0 and row["limit"]["peak_gflops"] > 0
        assert set(row["rounds"][0]["blocks"]) == {"trl", "plmkit"}
    assert result["versions"]["trl"] and result["machine"]["cpu"]["model"]
