"""benchmarks/bench_ppo.py: a --tiny run end to end (plmkit's update timed and split; with the trl 1.12
virtualenv, trl's too after the checks). Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tiny import ROOT, SRC

TRL_PYTHON = os.environ.get("PLMKIT_TRL_PPO_PYTHON", "/tmp/venv-trl-ppo/bin/python")


def run_tiny(tmp_path, trl_python: str) -> dict:
    scratch = tmp_path / "tmp"  # the benchmark's temporary folder goes here, and must be gone after
    scratch.mkdir()
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    command = [
        sys.executable, str(ROOT / "benchmarks" / "bench_ppo.py"), "--tiny", "--out", str(tmp_path),
        "--trl-python", trl_python,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not list(scratch.glob("bench-ppo-*"))  # (torch may leave its own inductor cache there)
    (line,) = [json.loads(x) for x in done.stdout.splitlines()]  # stdout: the JSON line only
    (path,) = tmp_path.glob("ppo-*.json")
    written = json.loads(path.read_text())
    assert written["machine"]["cpu"]["model"] and written["rounds"]
    return line


def check_plmkit_side(row: dict) -> None:
    assert row["status"] == "ok"
    assert row["response_length_sampled"] == row["setup"]["response_length"]  # no EOS stop: equal work
    parts = row["split"]["plmkit"]
    assert 0 < parts["generation_seconds"] <= parts["experience_seconds"]
    assert parts["learning_seconds"] > 0 and row["seconds_per_update"]["plmkit"] > 0
    assert row["limits"]["plmkit"]["learning_gflops"] > 0


@pytest.mark.slow  # builds a tokenizer and four models, and starts trl's stack in its own process
def test_tiny_run_without_trl_times_plmkit_alone(tmp_path):
    row = run_tiny(tmp_path, str(tmp_path / "no-such-python"))
    check_plmkit_side(row)
    assert "not timed" in row["trl"] and "speedup" not in row


@pytest.mark.slow
def test_tiny_run_checks_then_times_both_updates(tmp_path):
    if not os.path.isfile(TRL_PYTHON):
        pytest.skip(f"no trl 1.12 virtualenv at {TRL_PYTHON} (set PLMKIT_TRL_PPO_PYTHON; see bench_ppo.py)")
    row = run_tiny(tmp_path, TRL_PYTHON)
    check_plmkit_side(row)
    assert row["checks"]["passed"]
    assert row["checks"]["policy_logprobs_max_abs_difference"] <= 1e-4
    assert row["checks"]["scores_max_abs_difference"] <= 1e-4
    assert row["versions_trl_side"]["trl"].startswith("1.12")
    assert row["speedup"]["median"] > 0 and row["split"]["trl"]["learning_seconds"] > 0
