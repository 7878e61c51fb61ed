"""benchmarks/bench_serve.py end to end, shrunk (--tiny, 4 clients, 8 tokens, one round): two `plm serve`
children answer, the greedy checks and both configurations are measured, the result file is written. The
speed-up itself is the benchmark's business (a tiny model on a shared machine proves nothing about it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tiny import ROOT, SRC

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


@pytest.mark.slow
def test_bench_serve_tiny(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--tiny", "--clients", "4", "--new-tokens", "8",
        "--rounds", "1", "--out", str(tmp_path),
    ]  # fmt: skip
    out = subprocess.run(
        command, capture_output=True, text=True, env=env, check=True, cwd=ROOT, timeout=600
    ).stdout
    result = json.loads(out)
    assert result["greedy"]["identical_alone_vs_under_load"]
    (row,) = result["rounds"]
    for key in ("sequential", "batched"):
        assert row[key]["tokens"] == 4 * 8 and row[key]["tokens_per_s"] > 0
        assert 0 < row[key]["ttft_p50_s"] <= row[key]["latency_p50_s"]
    assert result["reference_plmkit_generate_batch_1"]["tokens"] == 4 * 8
    (written,) = tmp_path.glob("serve-tiny-*.json")
    assert json.loads(written.read_text())["summary"]["throughput_ratio"]["median"] > 0
