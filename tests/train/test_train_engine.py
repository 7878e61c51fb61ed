"""The training engine on its own: a job's loss over two named models (two optimizers, a frozen third
model), checkpointed and resumed exactly; a loss without `count` gives the same step as one with it."""

from __future__ import annotations

import torch

from plmkit.model import ModelConfig, build_model
from plmkit.train.checkpoint import load_training_state
from plmkit.train.distributed.base import Strategy
from plmkit.train.loop import train_step
from plmkit.train.precision import Precision
from plmkit.train.state import TrainState

VOCAB = 61


def tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig(
        family="causal",
        vocab_size=VOCAB,
        d_model=16,
        n_layer=1,
        n_head=2,
        d_ff=32,
        max_positions=32,
        dropout=0.0,
        attention_dropout=0.0,
    )
    return build_model(config)


def batches(step: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(step)
    ids = torch.randint(1, VOCAB, (2, 3, 12), generator=g)  # 2 micro-batches of 3 rows
    return [{"input_ids": x, "labels": x} for x in ids]


def two_model_loss(models, batch):
    """The actor's and the critic's token losses; the frozen reference only shifts the actor's."""
    actor, critic = models["actor"](**batch), models["critic"](**batch)
    with torch.no_grad():
        reference = models["reference"](**batch).loss_sum
    return actor.loss_sum + critic.loss_sum + 0.0 * reference, actor.targets


def job(seed: int = 0, optimizer=torch.optim.AdamW) -> TrainState:
    models = {"actor": tiny(seed), "critic": tiny(seed + 1), "reference": tiny(seed + 2)}
    optimizers = {name: optimizer(models[name].parameters(), lr=1e-2) for name in ("actor", "critic")}
    schedulers = {name: torch.optim.lr_scheduler.StepLR(opt, 1, 0.9) for name, opt in optimizers.items()}
    return TrainState(models, optimizers, schedulers)


def step(state: TrainState, n: int, loss_fn=two_model_loss) -> float:
    return train_step(
        state.models,
        state.optimizers,
        state.schedulers,
        loss_fn,
        batches(n),
        Strategy(),
        Precision("fp32", torch.device("cpu")),
        max_norm=1.0,
    )


def test_two_models_train_checkpoint_and_resume_exactly(tmp_path):
    strategy = Strategy()
    state = job()
    losses = [step(state, n) for n in range(2)]
    path = strategy.save(tmp_path, 2, state, None, {"tokens": 0}, keep_last=2)
    later = [step(state, n) for n in range(2, 4)]
    assert all(torch.isfinite(torch.tensor(losses + later)))

    assert (path / "model.safetensors").is_file() and (
        path / "models" / "critic" / "model.safetensors"
    ).is_file()
    assert not (path / "models" / "reference").exists()  # frozen: rebuilt by the job, never written
    saved, info = load_training_state(path)
    assert set(saved["optimizers"]) == {"actor", "critic"} and set(saved["schedulers"]) == {"actor", "critic"}

    resumed = job(seed=10)  # other initial weights: the checkpoint must replace them
    resumed.models["reference"] = job().models["reference"]  # the frozen model as the job builds it
    strategy.load(path, resumed, saved, info)
    assert [step(resumed, n) for n in range(2, 4)] == later
    for name in ("actor", "critic"):
        for a, b in zip(state.models[name].parameters(), resumed.models[name].parameters()):
            assert torch.equal(a, b)


class CountedLoss:
    """The same loss with `count`: the loop weights exactly up front instead of rescaling afterwards."""

    def count(self, batch):
        return int((batch["labels"][:, 1:] != -100).sum())

    def __call__(self, models, batch):
        return two_model_loss(models, batch)


def test_a_loss_without_count_steps_like_one_with_count():
    plain, counted = (
        job(optimizer=torch.optim.SGD),
        job(optimizer=torch.optim.SGD),
    )  # SGD: the updates show the gradients
    for n in range(3):
        a, b = step(plain, n), step(counted, n, CountedLoss())
        assert abs(a - b) < 1e-6
    for name in ("actor", "critic"):
        for p, q in zip(plain.models[name].parameters(), counted.models[name].parameters()):
            assert torch.allclose(p, q, atol=1e-5)
