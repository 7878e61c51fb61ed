"""The benchmark harness (benchmarks/run.py, benchmarks/benchkit): contention shares, rounds and ratios,
the table writer, and one tiny end-to-end run. Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tiny import ROOT, SRC

sys.path.insert(0, str(ROOT / "benchmarks"))

from benchkit import contention, limits, report  # noqa: E402
from benchkit import rounds as R  # noqa: E402

STAT = "cpu  {user} 0 {system} {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\nintr 1\n"


def test_parse_proc_stat_reads_the_aggregate_line():
    busy, steal = contention.parse_proc_stat(STAT.format(user=100, system=50, idle=900, steal=7))
    assert (busy, steal) == (150, 7)
    with pytest.raises(ValueError):
        contention.parse_proc_stat("cpu0 1 2 3 4\n")


def test_shares_subtract_own_time_and_divide_by_capacity():
    # 2 cores, 1 s: capacity 2 CPU-seconds = 200 ticks at HZ 100
    before = contention.Sample(busy_ticks=1000, steal_ticks=10, own_seconds=5.0, wall=100.0)
    quiet = contention.Sample(busy_ticks=1000 + 110, steal_ticks=12, own_seconds=5.0 + 1.0, wall=101.0)
    s = contention.shares(before, quiet, cores=2, hz=100)
    assert s == {"others_share": 0.05, "steal_share": 0.01, "quiet": True}  # (1.1 - 1.0) / 2
    busy = contention.Sample(busy_ticks=1000 + 160, steal_ticks=12, own_seconds=6.0, wall=101.0)
    assert contention.shares(before, busy, cores=2, hz=100)["others_share"] == 0.3
    assert not contention.shares(before, busy, cores=2, hz=100)["quiet"]
    stolen = contention.Sample(busy_ticks=1100, steal_ticks=10 + 40, own_seconds=6.0, wall=101.0)
    s = contention.shares(before, stolen, cores=2, hz=100)
    assert s["steal_share"] == 0.2 and not s["quiet"]
    # more own time than the machine's busy time (tick rounding) is no negative share
    assert contention.shares(before, contention.Sample(1050, 10, 7.0, 101.0), 2, 100)["others_share"] == 0.0
    # a few ticks over a short block cannot exceed the whole machine
    assert contention.shares(before, contention.Sample(5000, 10, 5.0, 100.01), 2, 100)["others_share"] == 1.0
    # without /proc/stat every block counts as quiet, with unknown shares
    none = contention.Sample(None, None, 0.0, 0.0)
    assert contention.shares(none, contention.Sample(None, None, 1.0, 1.0), 2)["others_share"] is None


def _round(ref: float, ours: float, quiet: bool = True) -> dict:
    return {"quiet": quiet, "blocks": {"ref": {"seconds": ref}, "ours": {"seconds": ours}}}


def test_ratio_is_the_median_of_per_round_ratios_over_quiet_rounds():
    rounds = [_round(2.0, 1.0), _round(3.0, 1.0), _round(9.0, 1.0, quiet=False), _round(4.0, 1.0)]
    r = R.ratio(rounds, "ref", "ours")
    assert (r["median"], r["min"], r["max"]) == (3.0, 2.0, 4.0)
    assert (r["quiet_rounds"], r["rounds"], r["over"]) == (3, 4, "quiet rounds")
    assert R.seconds(rounds, "ref") == 3.0
    # the median of ratios, not the ratio of medians
    assert R.ratio([_round(1, 1), _round(4, 1), _round(4, 4)], "ref", "ours")["median"] == 1.0
    # no quiet round: every round, and said so
    noisy = R.ratio([_round(2.0, 1.0, False), _round(4.0, 1.0, False)], "ref", "ours")
    assert noisy["median"] == 3.0 and noisy["quiet_rounds"] == 0 and noisy["over"].startswith("all rounds")
    assert R.ratio([], "ref", "ours")["median"] is None


def test_compare_warms_up_rotates_the_order_and_keeps_every_round():
    calls: list[str] = []
    variants = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    plan = R.Plan(warmup=2, rounds=4, max_rounds=4, block_s=0.0, wait_s=0)
    out = R.compare(variants, plan)
    assert calls[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up first
    assert [r["order"] for r in out["rounds"]] == [list("abc"), list("bca"), list("cab"), list("abc")]
    assert calls[6:] == list("abcbcacababc")  # one call per block at block_s 0
    for r in out["rounds"]:
        assert set(r["blocks"]) == {"a", "b", "c"}
        assert all(
            {"seconds", "others_share", "steal_share", "quiet"} <= set(b) for b in r["blocks"].values()
        )
        assert r["quiet"] == all(b["quiet"] for b in r["blocks"].values())


def test_cpu_info_and_slug():
    text = "processor : 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz\nflags\t\t: fpu avx512f amx_tile amx_bf16\n"
    info = limits.cpu_info(text)
    assert info == {
        "model": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz",
        "avx512": True,
        "avx512_bf16": False,
        "amx": True,
        "amx_bf16": True,
    }
    assert limits.slug(info["model"]) == "intel-xeon-platinum-8480"
    assert limits.slug("AMD EPYC 7B13 64-Core Processor") == "amd-epyc-7b13-64-core"


def _result(rows: list[dict]) -> dict:
    return {
        "machine": {
            "cpu": {
                "model": "Test CPU",
                "avx512": True,
                "avx512_bf16": False,
                "amx": False,
                "amx_bf16": False,
            },
            "date": "2026-12-06T12:00:00+00:00",
            "threads": 2,
            "cores": 2,
            "torch": "2.13",
            "transformers": "5.25",
            "peft": "0.21",
            "load_average": [0.1, 0.2, 0.3],
        },
        "options": {"quick": True},
        "limits": {
            "gemm_n": 1024,
            "gemm_gflops": {"fp32": 100.0, "bf16": 200.0},
            "read_gb_s": 30.0,
            "matvec_gb_s": {"fp32": {"out_in_F.linear": 7.0, "in_out_x@W": 13.0}},
        },
        "rows": rows,
    }


def test_table_has_one_line_per_row_with_figures_ratio_limit_and_quiet_rounds(tmp_path):
    ratio = {"median": 2.5, "min": 2.0, "max": 3.0, "quiet_rounds": 4, "rounds": 6}
    rows = [
        {
            "section": "decode", "name": "decode gpt2 b1 fp32", "status": "ok", "plmkit": 4.0, "reference": 10.0,
            "unit": "ms/token", "reference_name": "transformers fp32", "ratio": ratio,
            "limit": {"name": "read bandwidth", "fraction": 0.42, "bound_ms_per_step": 1.7},
            "goal": ">= 2x transformers fp32", "goal_met": True,
        },
        {"section": "decode", "name": "decode gpt2 b1 bf16", "status": "not available", "reason": "no dtype"},
        {
            "section": "train", "name": "train gpt2 fp32", "status": "ok", "plmkit": 900.0, "reference": 1000.0,
            "unit": "ms/step", "reference_name": "transformers", "ratio": {**ratio, "median": 1.11, "quiet_rounds": 0},
            "limit": {"name": "matmul bound", "fraction": 0.7, "reference_fraction": 0.63, "mfu": 0.61, "reference_mfu": 0.55},
            "goal": ">= 1.25x transformers", "goal_met": False,
        },
    ]  # fmt: skip
    text = report.table(_result(rows))
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(lines) == 2 + len(rows)  # header, rule, one per row
    assert (
        "| decode gpt2 b1 fp32 | 4 ms/token | 10 ms/token (transformers fp32) | 2.50× [2.00–3.00] |" in text
    )
    assert "0.42 of read bandwidth" in text and "4/6 |" in text and ">= 2x transformers fp32: met" in text
    assert "| decode gpt2 b1 bf16 | not available: no dtype |" in text
    assert "matmuls 0.70 of step (reference 0.63); MFU 0.61 vs 0.55" in text
    assert "**not met**" in text and "0/6 (none quiet: all rounds used)" in text
    assert "Test CPU" in text and "avx512" in text and "GEMM 1024³ fp32 100.0" in text

    # written next to, never over, an earlier result of the same day
    first = report.write(_result(rows), tmp_path, "test-cpu")
    second = report.write(_result(rows), tmp_path, "test-cpu")
    assert first["json"].name.startswith("test-cpu-") and first["json"] != second["json"]
    assert second["json"].stem.endswith("-2")
    assert json.loads(first["json"].read_text())["rows"][0]["name"] == "decode gpt2 b1 fp32"
    assert "png" not in first  # no scaling data, no plot


def test_plot_writes_a_png(tmp_path):
    points = [
        {"seq": s, "width": w, "step_ms": s * w / 100, "peak_growth_mb": s / 10}
        for s, w in [(128, 64), (256, 64), (128, 128)]
    ]
    scaling = {
        "points": points,
        "width_for_seq": 64,
        "seq_for_width": 128,
        "layers": 2,
        "vocab": 100,
        "batch": 1,
    }
    path = tmp_path / "x.png"
    assert report.plot(scaling, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_tiny_run_end_to_end_checks_before_timing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--tiny", "--only", "decode-gpt2"]
        + ["--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (json_path,) = tmp_path.glob("*.json")
    result = json.loads(json_path.read_text())
    assert result["machine"]["torch"] == torch.__version__
    rows = {r["name"]: r for r in result["rows"]}
    fp32 = rows["decode gpt2 2x64 b1 fp32"]
    assert fp32["status"] == "ok" and fp32["check"]["greedy_identical"]
    assert fp32["check"]["logits_max_diff"] <= 1e-4
    assert fp32["ratio"]["rounds"] >= 1 and 0 < fp32["limit"]["fraction"]
    assert {r["status"] for r in rows.values()} <= {"ok", "not available"}
    assert len(rows) == 6  # b1 and b8, three dtypes each
    assert json_path.with_suffix(".md").read_text().count("| decode gpt2 2x64") == 6


def test_time_to_first_token_rows_fp32_and_bf16_against_transformers_fp32(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--tiny", "--only", "ttft"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=180
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (json_path,) = tmp_path.glob("*.json")
    rows = {r["name"]: r for r in json.loads(json_path.read_text())["rows"]}
    for family in ("gpt2", "llama", "t5"):
        fp32, bf16 = (rows[f"time to first token {family} 2x64 prompt 64 {d}"] for d in ("fp32", "bf16"))
        assert fp32["status"] == bf16["status"] == "ok" and fp32["check"] == {"first_token_identical": True}
        assert isinstance(bf16["check"]["first_token_equals_fp32_reference"], bool)
        assert fp32["reference"] > 0 and bf16["plmkit"] > 0 and bf16["goal"] == ">= 1.3x transformers fp32"
    assert len(rows) == 6


@pytest.mark.slow
def test_bart_training_rows_check_parity_and_precisions_restrict_the_run(tmp_path):
    """BART is timed like T5 (same weights, logits and step-1 loss checked); --precisions fp32 leaves out
    the bf16 rows and the bf16 GEMM peak (emulated, minutes long, on CPUs without native bf16)."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "run.py"),
        "--quick",
        "--tiny",
        "--only",
        "train-bart",
    ]
    done = subprocess.run(
        [*command, "--precisions", "fp32", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (json_path,) = tmp_path.glob("*.json")
    result = json.loads(json_path.read_text())
    assert list(result["limits"]["gemm_gflops"]) == ["fp32"] and result["options"]["precisions"] == ["fp32"]
    (row,) = result["rows"]
    assert row["name"] == "train bart 2x64 seq 32 b2 fp32" and row["status"] == "ok"
    assert row["check"]["logits_max_diff"] <= 1e-4 and row["check"]["loss_diff"] <= 1e-5


def test_decode_rows_check_before_timing_and_use_the_engines_own_split(monkeypatch):
    """A tiny GPT-2 decoded by both sides: greedy ids identical to transformers, and when the output
    carries prefill_seconds / decode_seconds, the row's limit uses the decode time per token."""
    from dataclasses import dataclass

    from benchkit import decode
    from benchkit import models as M

    import plmkit

    real = plmkit.generate_ids

    @dataclass
    class Timed:  # fixed timings in place of the engine's measured ones
        ids: torch.Tensor
        prefill_seconds: float = 0.1
        decode_seconds: float = 0.3

    monkeypatch.setattr(plmkit, "generate_ids", lambda *a, **k: Timed(real(*a, **k).ids))
    plan = R.Plan(warmup=1, rounds=1, max_rounds=1, block_s=0.0, wait_s=0)
    shape = M.Shape(layers=1, d_model=32, heads=2, vocab=101, positions=64)
    rows = decode.decode_rows("gpt2", shape, [1], ["fp32", "bf16"], 4, plan, lambda m: None)
    fp32, bf16 = rows
    assert fp32["status"] == "ok" and fp32["check"]["greedy_identical"]
    assert fp32["decode_ms_per_token"] == pytest.approx(100.0)  # 0.3 s over the 3 tokens after the first
    assert fp32["prefill_ms"] == pytest.approx(100.0)
    assert fp32["limit"]["measured_ms_per_step"] == pytest.approx(100.0)
    assert bf16["status"] == "ok" and 0.0 <= bf16["check"]["greedy_agreement_vs_fp32"] <= 1.0


def test_a_second_result_of_the_same_day_gets_a_new_name(tmp_path):
    first = report.result_path(tmp_path, "cot-scratchpad")
    assert first.name.startswith("cot-scratchpad-") and first.suffix == ".json"
    first.write_text("{}")
    second = report.result_path(tmp_path, "cot-scratchpad")
    assert second != first and second.stem == first.stem + "-2"
    second.write_text("{}")
    assert report.result_path(tmp_path, "cot-scratchpad").stem == first.stem + "-3"
