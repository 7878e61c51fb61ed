"""Generation never changes the model: threads decoding from one model at once (and a training forward
beside them) get exactly what they get alone, and the model's tensors, attributes and mode are as before."""

from __future__ import annotations

import threading

import pytest
import torch

import plmkit.peft
from plmkit.generation import generate_ids
from plmkit.model import ModelConfig, build_model
from plmkit.model.dropout import dropout_off

SMALL = dict(
    vocab_size=64,
    d_model=32,
    n_layer=2,
    n_head=4,
    d_ff=64,
    max_positions=64,
    initializer_range=0.3,
    dropout=0.2,
    attention_dropout=0.2,
)  # dropout on: generation must switch it off by itself
PROMPTS = [[5, 17, 3, 40, 22], [9, 1, 33]]
# (prompt, options): greedy and seeded sampling, different prompts per thread
JOBS = [
    (PROMPTS[0], dict(max_new_tokens=12)),
    (PROMPTS[1], dict(max_new_tokens=12)),
    (PROMPTS[0], dict(max_new_tokens=12, do_sample=True, seed=1, top_k=20)),
    (PROMPTS[1], dict(max_new_tokens=12, do_sample=True, seed=2, top_p=0.9, temperature=0.8)),
]


def tiny(family: str = "causal", peft: str | None = None):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family=family, **SMALL))
    if peft == "prompt":
        model = plmkit.peft.apply(model, "prompt", n_tokens=3)
    return model.train()  # a model in the middle of training


def snapshot(model: torch.nn.Module) -> dict:
    """Everything generation could change: every module's mode and plain attributes (hooks included),
    and every tensor's values and storage."""
    modules = {
        name: (
            m.training,
            {k: repr(v) for k, v in vars(m).items() if k not in ("_parameters", "_buffers", "_modules")},
        )
        for name, m in model.named_modules()
    }
    tensors = {name: (t.detach().clone(), t.data_ptr(), t._version) for name, t in model.state_dict().items()}
    return {"modules": modules, "tensors": tensors, "grad": [p.grad for p in model.parameters()]}


def assert_unchanged(before: dict, after: dict) -> None:
    assert before["modules"] == after["modules"]
    assert before["tensors"].keys() == after["tensors"].keys()
    for name, (value, ptr, version) in before["tensors"].items():
        now, now_ptr, now_version = after["tensors"][name]
        assert torch.equal(value, now) and ptr == now_ptr and version == now_version, name
    assert all(g is None for g in after["grad"])


def run_in_threads(targets: list) -> list:
    """Start every target at the same moment (a barrier), re-raise the first failure."""
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait()
            results[i] = targets[i]()
        except BaseException as error:  # noqa: BLE001 (reported in the main thread)
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(targets))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("family, peft", [("causal", None), ("causal", "prompt"), ("seq2seq", None)])
def test_two_threads_generating_at_once_equal_single_threaded(family, peft):
    model = tiny(family, peft)
    alone = [generate_ids(model, torch.tensor([prompt]), **options).tolist() for prompt, options in JOBS]
    before = snapshot(model)

    def worker(jobs: list, repeats: int = 4):
        return lambda: [
            [generate_ids(model, torch.tensor([p]), **o).tolist() for p, o in jobs] for _ in range(repeats)
        ]

    # thread A: greedy on prompt 0 then sampling; thread B: greedy on prompt 1 then sampling
    first, second = run_in_threads([worker([JOBS[0], JOBS[2]]), worker([JOBS[1], JOBS[3]])])
    for outputs in first:
        assert outputs == [alone[0], alone[2]]
    for outputs in second:
        assert outputs == [alone[1], alone[3]]
    assert model.training
    assert_unchanged(before, snapshot(model))


def test_training_forward_beside_generation_keeps_its_dropout():
    """A training step running while another thread generates still drops out: generation's
    dropout switch is private to its own thread, and the model's training flag never flips."""
    model = tiny()
    ids = torch.tensor([PROMPTS[0]])
    with dropout_off():
        clean = model(ids).logits
    alone = generate_ids(model, ids, max_new_tokens=12).tolist()

    def train_forward():
        outs = []
        for _ in range(8):
            with torch.no_grad():
                outs.append(model(ids).logits)
        return outs

    def generating():
        return [generate_ids(model, ids, max_new_tokens=12).tolist() for _ in range(4)]

    noisy, generated = run_in_threads([train_forward, generating])
    assert all(not torch.allclose(out, clean) for out in noisy)
    assert all(out == alone for out in generated)
    assert model.training
