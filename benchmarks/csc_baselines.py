"""The two non-neural baselines of the SIGHAN-15 spelling-correction report, scored like the models:

    python benchmarks/csc_baselines.py [--data ../shared/data/sighan_csc]

- copy: the input unchanged (sentence-level correction F1 0 by definition; accuracy = the share of
  error-free sentences);
- confusion: plmkit.data.tasks.spelling.ConfusionBaseline fitted on the SIGHAN 13-15 training sentences
  (a character is replaced by its most frequent correction there when it was wrong more often than right).

Prints one JSON line per baseline with plmkit.evaluate.metrics.csc_scores (ReaLiSe / CCL2022-CLTC
sentence level, and character level).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plmkit.data.tasks.spelling import ConfusionBaseline
from plmkit.evaluate.metrics import csc_scores


def read_pairs(path: Path) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [(r["source"], r["target"]) for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "sighan_csc")
    )
    parser.add_argument("--threshold", type=float, default=0.5)
    args = parser.parse_args()
    folder = Path(args.data)
    test = read_pairs(folder / "sighan15_test.jsonl")
    sources, targets = [s for s, _ in test], [t for _, t in test]
    baseline = ConfusionBaseline.fit(read_pairs(folder / "train_sighan13-15_merged.jsonl"), args.threshold)
    for name, predictions in (("copy", sources), ("confusion", [baseline.correct(s) for s in sources])):
        scores = csc_scores(sources, predictions, targets)
        print(
            json.dumps(
                {
                    "baseline": name,
                    **{k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()},
                }
            )
        )


if __name__ == "__main__":
    main()
