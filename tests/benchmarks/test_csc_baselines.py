"""benchmarks/csc_baselines.py on the real SIGHAN-15 test set: the copy baseline scores 0 by definition,
the confusion baseline corrects some sentences and is scored by the same metric as the models."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tiny import ROOT, SRC


def test_sighan15_baselines(shared_data):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "csc_baselines.py"), "--data", str(shared_data / "sighan_csc")],
        capture_output=True, text=True, env=env, check=True,
    ).stdout  # fmt: skip
    copy, confusion = (json.loads(line) for line in out.splitlines())
    assert copy["baseline"] == "copy" and copy["sentence_correction_f1"] == 0.0
    assert copy["sentence_correction_accuracy"] == round(100 * 558 / 1100, 4)  # 542 of 1,100 have errors
    assert 0 < confusion["sentence_correction_f1"] < 50
