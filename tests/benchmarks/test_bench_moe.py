"""benchmarks/bench_moe.py and benchmarks/moe_vs_dense.py end to end at --tiny sizes: the checks pass, the
rows and the summary are written. Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tiny import ROOT, SRC

ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def lines_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow  # builds and times three tiny Mixtral steps
def test_bench_moe_tiny(tmp_path):
    pytest.importorskip("transformers")
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_moe.py"), "--tiny", "--threads", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, env=ENV, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    lines = lines_of(out)
    setup = lines[0]
    assert setup["check"]["logits_max_diff"] <= 1e-4 and setup["check"]["router_logits_max_diff"] <= 1e-4
    assert setup["check"]["experts_implementation"]["transformers_eager"] == "eager"
    rows = [line for line in lines if line.get("section") == "train"]
    assert [r["reference_name"] for r in rows] == ["transformers", "transformers_eager"]
    assert all(r["status"] == "ok" and r["limit"]["grouped_gemm_calls"] > 0 for r in rows)
    written = list(tmp_path.glob("moe-*.json"))
    assert len(written) == 1 and json.loads(written[0].read_text())["rows"]


@pytest.mark.slow  # two tiny pre-training runs
def test_moe_vs_dense_tiny(shared_data, tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "moe_vs_dense.py"), "--tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, env=ENV, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    lines = lines_of(out)
    runs = {line["run"]: line for line in lines if "run" in line}
    assert set(runs) == {"moe", "dense"}
    # the same active parameters up to the router (E x C per block)
    router = 8 * 32
    assert runs["moe"]["active_parameters"] - runs["dense"]["active_parameters"] == router
    assert runs["moe"]["parameters"] > runs["dense"]["parameters"]
    assert runs["moe"]["tokens"] == runs["dense"]["tokens"]
    assert len(runs["moe"]["val_curve"]) == len(runs["dense"]["val_curve"]) >= 2
    assert lines[-1]["winner"] in ("moe", "dense", "tie")
    assert len(list(tmp_path.glob("moe-vs-dense-*.json"))) == 1
