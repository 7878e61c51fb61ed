"""Pipeline parallelism (`distributed.pipeline_parallel: P`, plmkit.train.distributed.pipeline) computes what
one process computes, on gloo CPU ranks, to 1e-5 per step:

- the engine's train_step through 2 stages of a tiny 4-block LLaMA under GPipe and under 1F1B (4
  micro-batches, a right-padded row; SGD, once with a clip that bites, once without: AdamW or a biting clip
  alone would hide a gradient wrong by a uniform factor), and with gradient checkpointing;
- 4 ranks: 2 stages x 2 tensor-parallel ranks (LLaMA, 1F1B) and 2 stages x 2 FSDP2 data-parallel groups
  (GPT-2-like, GPipe);
- the pre-training recipe with 2 stages (its losses, validation loss, sharded checkpoint); the checkpoint
  resumes on one process (the stages' shards and the flat optimizer state found by name) with the same next
  losses, and `plm convert --from-sharded` makes the one-process model of it.

Bad settings fail in one `error:` line, exit 2, before any file is written. The multi-process runs happen
once per module: one spawn of 2 ranks (both schedules and the recipe), one of 4."""

from __future__ import annotations

import json

import pytest
import torch

import dist_helpers as dh
import pp_workers as pw
import train_helpers as h
from plmkit.errors import ConfigError
from plmkit.model import ModelConfig, build_model
from plmkit.model.stages import check_pipeline_parallel, cut_stage, stage_layers
from plmkit.train.distributed.base import Strategy

LLAMA_RECIPE = h.ROOT / "recipes" / "llama-clm.yaml"
STEPS = [1, 2, 3, 4]
ENGINE_STEPS = 3
CLIP = 0.05  # below every step's gradient norm
TWO_RANK_CASES = [  # (name, arch, pipeline_parallel, tensor_parallel, schedule, clip, checkpointing)
    ("gpipe", pw.LLAMA, 2, 1, "gpipe", None, False),
    ("1f1b", pw.LLAMA, 2, 1, "1f1b", CLIP, False),
    ("1f1b-checkpointed", pw.LLAMA, 2, 1, "1f1b", None, True),  # blocks recomputed in the backward
]
FOUR_RANK_CASES = [
    ("pp2-tp2", pw.LLAMA, 2, 2, "1f1b", CLIP, False),
    ("pp2-dp2", pw.GPT2, 2, 1, "gpipe", None, False),
]
PP2 = ["distributed.strategy=fsdp", "distributed.pipeline_parallel=2"]

dist_available = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="needs gloo"
)


def architecture(root) -> list[str]:
    """The LLaMA recipe's tiny model with 4 blocks (2 per stage) and GQA."""
    return [f"tokenizer.path={root / 'tok'}", "model.n_layer=4", "model.n_head=4", "model.n_kv_head=2"]


def recipe_overrides(root, out: str, *extra: str) -> list[str]:
    """Batch 8 x accumulation 2: the global batch of every run here."""
    return [*dh.overrides(root, out, LLAMA_RECIPE, batch=8, accumulation=2), *architecture(root), *extra]


def single(root, out: str, *extra: str) -> dict:
    """One process, the same global batch."""
    return dh.run_single(root, out, *architecture(root), *extra, recipe=LLAMA_RECIPE, batch=8, accumulation=2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    dh.prepare(root)
    return root


@pytest.fixture(scope="module")
def two_ranks(root):
    """One spawn of 2 ranks: the engine under both schedules, then the recipe with 2 gpipe stages."""
    overrides = recipe_overrides(root, "pp", *PP2, "distributed.pipeline_schedule=gpipe")
    pw.fork_ranks(
        pw.two_ranks, 2, root, TWO_RANK_CASES, ENGINE_STEPS, str(LLAMA_RECIPE), [str(o) for o in overrides]
    )
    return root


@pytest.fixture(scope="module")
def reference(root):
    return single(root, "single")


def engine_losses(root, name: str) -> list[float]:
    return json.loads((root / f"{name}.json").read_text(encoding="utf-8"))


def assert_engine_case(root, case) -> None:
    name, arch, _, _, _, clip, _ = case
    want = pw.train(arch, Strategy(), ENGINE_STEPS, clip)  # one process, no checkpointing
    got = engine_losses(root, name)
    assert len(got) == ENGINE_STEPS, got
    for step, (a, b) in enumerate(zip(got, want)):
        assert abs(a - b) <= dh.TOLERANCE, f"{name} step {step}: {a!r} (pipeline) vs {b!r} (one process)"


@pytest.mark.dist
@dist_available
@pytest.mark.parametrize("case", TWO_RANK_CASES, ids=[c[0] for c in TWO_RANK_CASES])
def test_two_stages_equal_one_process(two_ranks, case):
    assert_engine_case(two_ranks, case)


@pytest.mark.dist
@dist_available
def test_pipeline_x_tensor_parallel_and_x_data_parallel_on_four_ranks_equal_one_process(tmp_path):
    pw.fork_ranks(pw.engine_cases, 4, tmp_path, FOUR_RANK_CASES, ENGINE_STEPS)
    for case in FOUR_RANK_CASES:
        assert_engine_case(tmp_path, case)


@pytest.mark.dist
@dist_available
def test_pipeline_recipe_equals_one_process(two_ranks, reference):
    run_dir = two_ranks / "pp"
    dh.assert_same_losses(dh.losses(run_dir), dh.losses(two_ranks / "single"), STEPS)
    result = json.loads((two_ranks / "recipe-run.json").read_text(encoding="utf-8"))
    assert result["val_loss"] == pytest.approx(reference["val_loss"], abs=dh.TOLERANCE)
    assert result["initial_val_loss"] == pytest.approx(reference["initial_val_loss"], abs=dh.TOLERANCE)
    assert result["tokens"] == 4 * 2 * 8 * 32  # the global batch, not doubled by the second stage
    printed = result["printed"]
    assert "x 1 data-parallel group(s) of 2 pipeline stages" in printed, printed
    assert "2 pipeline stages of 2 blocks (gpipe schedule; rank 0: stage 0, blocks 0-1)" in printed, printed
    n_params = sum(p.numel() for p in build_model(_architecture(run_dir)).parameters())
    assert f"{n_params:,} parameters" in printed, printed  # the whole model's, not stage 0's
    for step in (2, 4):
        state = json.loads((dh.checkpoint(run_dir, step) / "trainer_state.json").read_text(encoding="utf-8"))
        assert state["distributed"] == {
            "strategy": "fsdp",
            "world_size": 2,
            "layout": "dcp",
            "tensor_parallel": 1,
            "pipeline_parallel": 2,
            "optimizer_state": "flat",
        }


def _architecture(run_dir) -> ModelConfig:
    header = json.loads((dh.checkpoint(run_dir, 4) / "plmkit.json").read_text(encoding="utf-8"))
    assert header["model_class"] == "CausalLM"  # the whole model's header, not a stage's
    return ModelConfig.from_dict(header["model"])


@pytest.mark.dist
@dist_available
def test_two_stage_checkpoint_resumes_on_one_process(two_ranks):
    single(two_ranks, "pp-on-1", f"resume={dh.checkpoint(two_ranks / 'pp', 2)}")
    dh.assert_same_losses(dh.losses(two_ranks / "pp-on-1"), dh.losses(two_ranks / "pp"), [3, 4])


@pytest.mark.dist
@dist_available
def test_two_stage_checkpoint_converts_to_the_one_process_model(two_ranks, reference, capsys):
    import plmkit

    out = two_ranks / "pp-converted"
    code, _, err = h.run_cli(
        ["convert", "--from-sharded", dh.checkpoint(two_ranks / "pp", 4), "--out", out], capsys
    )
    assert code == 0, err
    (model, tokenizer), (plain, _) = plmkit.load(out), plmkit.load(dh.checkpoint(two_ranks / "single", 4))
    ids = torch.tensor([tokenizer.encode("The for statement is used to iterate over the elements")])
    with torch.no_grad():
        assert (plain(ids).logits - model(ids).logits).abs().max().item() <= 1e-4


# ---- bad settings: one line, exit 2, nothing written -------------------------------------------------
@pytest.mark.parametrize(
    "extra, nproc, needles",
    [
        (["model.n_layer=3", *PP2], 2, ["distributed.pipeline_parallel=2 does not divide model.n_layer=3"]),
        ([*PP2], 3, ["distributed.pipeline_parallel=2 does not divide the 3 process(es)", "--nproc 2"]),
        (
            [*PP2, "distributed.tensor_parallel=2"],
            2,
            [
                "distributed.pipeline_parallel=2 x distributed.tensor_parallel=2 (4 ranks per model)",
                "--nproc 4",
            ],
        ),
        (
            ["distributed.strategy=ddp", "distributed.pipeline_parallel=2"],
            2,
            ["needs distributed.strategy=fsdp"],
        ),
        ([*PP2], None, ["does not divide the 1 process(es)"]),
        ([*PP2, "train.accumulation=1"], 2, ["pipeline_schedule=1f1b needs at least as many micro-batches"]),
        ([*PP2, "model.tie_embeddings=true"], 2, ["set model.tie_embeddings=false"]),
        ([*PP2, "peft={method: lora, r: 2}"], 2, ["with peft.method='lora'"]),
        ([*PP2, "model.n_experts=4", "model.top_k=2"], 2, ["with model.n_experts=4", "pipeline_parallel=1"]),
    ],
)
def test_bad_pipeline_settings_fail_before_anything_starts(root, capsys, extra, nproc, needles):
    launch = ["--nproc", str(nproc)] if nproc else []
    code, _, err = h.run_cli(
        ["pretrain", LLAMA_RECIPE, *recipe_overrides(root, "bad", *extra), *launch], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (root / "bad").exists()


# ---- the stages themselves (one process) --------------------------------------------------------
def test_the_stages_compute_the_whole_models_loss_and_keep_its_parameter_names():
    model = pw.tiny(pw.LLAMA)
    batch = pw.micro_batches(0)[0]
    whole = model(**batch)
    stages = [cut_stage(pw.tiny(pw.LLAMA), s, 2) for s in range(2)]
    hidden = stages[0](batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    loss_sum, targets = stages[1](hidden, attention_mask=batch["attention_mask"], labels=batch["labels"])
    torch.testing.assert_close(loss_sum, whole.loss_sum, atol=1e-6, rtol=0)
    assert int(targets) == int(whole.targets)
    names = [set(dict(s.named_parameters())) for s in stages]
    assert names[0] | names[1] == set(dict(model.named_parameters())) and not names[0] & names[1]
    assert "transformer.blocks.2.attn.qkv.weight" in names[1] and "lm_head.decoder.weight" in names[1]
    assert [stage_layers(4, s, 2) for s in range(2)] == [range(0, 2), range(2, 4)]


@pytest.mark.parametrize(
    "fields, stages, message",
    [
        (
            {"n_layer": 4},
            3,
            "does not divide model.n_layer=4 (each stage holds the same number of blocks); "
            "choose a pipeline size in [1, 2, 4]",
        ),
        ({"tie_embeddings": True}, 2, "set model.tie_embeddings=false"),
        ({"family": "seq2seq"}, 2, "model.family=seq2seq has two stacks"),
    ],
)
def test_models_the_pipeline_cannot_cut_are_refused(fields, stages, message):
    config = ModelConfig(**{**pw.LLAMA, "family": "causal", **fields})
    with pytest.raises(
        ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        check_pipeline_parallel(config, stages)


def test_the_ranks_of_a_pipeline_share_their_rows():
    from plmkit.train.distributed.pipeline import PipelineStrategy
    from plmkit.train.distributed.world import World

    ranks = [PipelineStrategy(World(r, 8, r, True), pipeline_parallel=2, tensor_parallel=2) for r in range(8)]
    assert [(s.data_rank, s.stage, s.data_parallel_size) for s in ranks] == [
        (0, 0, 2),
        (0, 0, 2),
        (0, 1, 2),
        (0, 1, 2),
        (1, 0, 2),
        (1, 0, 2),
        (1, 1, 2),
        (1, 1, 2),
    ]  # rank = (d * P + p) * T + t
