"""Per-rank bodies of the tensor-parallel tests (tests/test_dist_tensor_parallel.py), run by
`spawn(fn, world_size, tmp)`: each rank joins a gloo group (file rendezvous, no ports), runs on one
CPU thread and compares the parallel model with a single-process copy of the same weights."""

from __future__ import annotations

import copy
import os
import traceback
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

VOCAB = 64
TINY = dict(vocab_size=VOCAB, d_model=32, n_layer=2, n_head=4, d_ff=64, max_positions=64)
GPT2_LIKE = dict(TINY, activation="gelu_tanh")  # learned positions, GELU, biases, tied embeddings
LLAMA_LIKE = dict(
    TINY,
    position="rotary",
    norm="rmsnorm",
    n_kv_head=2,
    gated_mlp=True,
    activation="silu",
    attention_bias=False,
    mlp_bias=False,
    tie_embeddings=False,
)  # llama-tiny's architecture
BERT_LIKE = dict(
    TINY,
    pre_norm=False,
    embedding_norm=True,
    final_norm=False,
    type_vocab_size=2,
    lm_head_transform=True,
    lm_head_bias=True,
)  # post-norm encoder with BERT's MLM head
ATOL = 1e-5


def spawn(fn, world_size: int, tmp: Path, *args) -> None:
    """Run fn(rank, world_size, tmp, *args) on world_size processes; re-raise the first failure."""
    mp.start_processes(
        _entry, args=(fn, world_size, str(tmp), args), nprocs=world_size, join=True, start_method="spawn"
    )


def _entry(rank: int, fn, world_size: int, tmp: str, args: tuple) -> None:
    torch.set_num_threads(1)
    # FSDP2 warns that a block returns views (its k, v cache); nothing here modifies them in place
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world_size)
    try:
        fn(rank, world_size, Path(tmp), *args)
        dist.barrier()  # no rank leaves while another still talks to it
    except BaseException:
        traceback.print_exc()  # the other ranks are terminated by torch.multiprocessing
        raise
    finally:
        dist.destroy_process_group()


def close(a: torch.Tensor, b: torch.Tensor, what: str, atol: float = ATOL) -> None:
    torch.testing.assert_close(a, b, atol=atol, rtol=0, msg=lambda m: f"{what}: {m}")


def tiny(family: str, arch: dict, seed: int = 0):
    from plmkit.model import ModelConfig, SequenceClassifier, build_model

    torch.manual_seed(seed)
    if family == "classifier":
        return SequenceClassifier(
            ModelConfig(family="masked", **arch), num_labels=3, pooler_dense=True
        ).train()
    return build_model(ModelConfig(family=family, **arch)).train()  # dropout is 0: train mode is exact


def padded_batch(family: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, VOCAB, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # the second row is right padded
    batch = {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}
    if family == "prefix":
        batch["prefix_lengths"] = torch.tensor([5, 3])
    if family == "classifier":
        batch["labels"] = torch.tensor([0, 2])
    return batch


# ---- tensor parallel on 2 ranks ----------------------------------------------------------------
def tensor_parallel_matches_single_process(rank: int, world: int, tmp: Path) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from plmkit.errors import CheckpointError, ConfigError
    from plmkit.generation import generate_ids
    from plmkit.io import load, save
    from plmkit.train.distributed.tensor_parallel import (
        apply_tensor_parallel,
        full_state_dict,
        save_tensor_parallel_checkpoint,
        unshard,
    )

    mesh = init_device_mesh("cpu", (world,), mesh_dim_names=("tp",))
    cases = [
        ("causal", "gpt2", GPT2_LIKE),
        ("causal", "llama", LLAMA_LIKE),
        ("prefix", "gpt2", GPT2_LIKE),
        ("masked", "bert", BERT_LIKE),
        ("classifier", "bert", BERT_LIKE),
    ]
    for family, name, arch in cases:
        where = f"{family}/{name}"
        reference = tiny(family, arch)
        original = {k: v.clone() for k, v in reference.state_dict().items()}
        model = apply_tensor_parallel(copy.deepcopy(reference), mesh)
        assert model.transformer.blocks[0].attn.n_head == arch["n_head"] // world

        # forward and backward of a padded batch: logits, loss, every parameter's gradient
        batch = padded_batch(family)
        with torch.no_grad():  # and without a mask (the causal family's SDPA fast path)
            close(model(batch["input_ids"]).logits, reference(batch["input_ids"]).logits, f"{where} unpadded")
        expected, got = reference(**batch), model(**batch)
        close(got.logits, expected.logits, f"{where} logits")
        close(got.loss, expected.loss, f"{where} loss")
        expected.loss.backward()
        got.loss.backward()
        grads = dict(model.named_parameters())
        for pname, p in reference.named_parameters():
            close(unshard(model, pname, grads[pname].grad), p.grad, f"{where} grad of {pname}")
        if name == "llama":  # gradient checkpointing recomputes the parallel blocks: the same gradients
            model.zero_grad(set_to_none=True)
            model.set_gradient_checkpointing(True)
            model(**batch).loss.backward()
            model.set_gradient_checkpointing(False)
            for pname, p in reference.named_parameters():
                close(
                    unshard(model, pname, grads[pname].grad), p.grad, f"{where} checkpointed grad of {pname}"
                )

        if family in ("causal", "prefix"):  # greedy generation with the KV cache (left-padded prompts)
            prompt = batch["input_ids"][:, :6]
            prompt_mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
            ids = generate_ids(model, prompt, prompt_mask, max_new_tokens=6, eos_token_id=[])
            ref_ids = generate_ids(reference, prompt, prompt_mask, max_new_tokens=6, eos_token_id=[])
            assert torch.equal(ids, ref_ids), f"{where} generation: {ids.tolist()} != {ref_ids.tolist()}"

        # the full state dict is the ordinary layout; a checkpoint from it is a normal plmkit checkpoint
        state = full_state_dict(model)
        assert full_state_dict(model, rank0_only=True).keys() == (original.keys() if rank == 0 else set())
        assert state.keys() == original.keys()
        for key in original:
            assert torch.equal(state[key], original[key]), f"{where} full_state_dict[{key}] differs"
        try:  # plmkit.io.save on the sharded model itself would write fragments: refused, with the way out
            save(model, None, tmp / f"direct-{rank}")
        except CheckpointError as e:
            assert "save_tensor_parallel_checkpoint" in str(e), str(e)
        else:
            raise AssertionError("plmkit.io.save wrote a tensor-parallel model's shards")
        folder = save_tensor_parallel_checkpoint(model, None, tmp / f"ckpt-{family}-{name}")
        if rank == 0:
            loaded, _ = load(folder)
            assert type(loaded) is type(reference)
            for key, value in loaded.state_dict().items():
                assert torch.equal(value, original[key]), f"{where} checkpoint tensor {key} differs"
            if arch.get("tie_embeddings", True) and hasattr(loaded, "lm_head"):
                assert loaded.lm_head.decoder.weight is loaded.transformer.embed.tokens.weight
        else:
            assert folder is None

        # one optimizer step on the sharded parameters gives the single-process update
        for m in (reference, model):
            torch.optim.SGD(m.parameters(), lr=0.5).step()
        updated = full_state_dict(model)
        for key, value in reference.state_dict().items():
            close(updated[key], value, f"{where} updated {key}")

    # a tp size that cannot split the kv heads: a clear error before anything is sharded
    mqa = tiny("causal", dict(LLAMA_LIKE, n_kv_head=1))
    try:
        apply_tensor_parallel(mqa, mesh)
    except ConfigError as e:
        assert "model.n_kv_head=1 is not divisible by the tensor-parallel size 2" in str(e), str(e)
    else:
        raise AssertionError("n_kv_head=1 on 2 ranks was accepted")
    assert (
        not hasattr(mqa, "tensor_parallel")
        and type(mqa.transformer.blocks[0].attn.qkv.weight) is torch.nn.Parameter
    )

    # dropout with ranks seeded differently would let the replicated activations drift apart: refused
    torch.manual_seed(100 + rank)
    try:
        apply_tensor_parallel(tiny("causal", dict(GPT2_LIKE, dropout=0.1), seed=100 + rank), mesh)
    except ConfigError as e:
        assert "needs the same torch RNG state on every rank" in str(e), str(e)
    else:
        raise AssertionError("dropout with differently seeded ranks was accepted")
    apply_tensor_parallel(tiny("causal", dict(GPT2_LIKE, dropout=0.1), seed=7), mesh)  # same seed: fine


# ---- TP x FSDP2 on 4 ranks (2 x 2) -------------------------------------------------------------
def fsdp_tensor_parallel_matches_single_process(rank: int, world: int, tmp: Path, steps: int) -> None:
    from torch.distributed.device_mesh import init_device_mesh

    from plmkit.io import load
    from plmkit.train.distributed.fsdp import clip_grad_norm
    from plmkit.train.distributed.tensor_parallel import (
        apply_fsdp_tensor_parallel,
        full_state_dict,
        save_tensor_parallel_checkpoint,
    )

    mesh = init_device_mesh("cpu", (2, world // 2), mesh_dim_names=("dp", "tp"))
    dp_rank = mesh["dp"].get_local_rank()
    reference = tiny("causal", LLAMA_LIKE)
    model = apply_fsdp_tensor_parallel(copy.deepcopy(reference), mesh)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.2, momentum=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    g = torch.Generator().manual_seed(2)
    for step in range(steps):
        ids = torch.randint(3, VOCAB, (4, 10), generator=g)  # the global batch; each dp group gets 2 rows
        ref_loss = reference(ids, labels=ids).loss
        ref_loss.backward()
        # clipping on the parameters of two meshes ((dp, tp) projections, dp-only rest): the same norm and
        # (checked through the SGD updates, which a wrong scale would change) the same clipped gradients;
        # 0.5 is below every step's norm (about 1.4)
        ref_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
        ref_opt.step()
        ref_opt.zero_grad()
        local = ids[2 * dp_rank : 2 * dp_rank + 2]
        loss = model(local, labels=local).loss
        loss.backward()  # FSDP2 averages the gradients over dp: the same token count per group = global mean
        close(
            clip_grad_norm(model.parameters(), 0.5, torch.device("cpu")),
            ref_norm,
            f"2d grad norm at step {step}",
        )
        opt.step()
        opt.zero_grad()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        close(global_loss / world, ref_loss.detach(), f"2d loss at step {step}")
    updated = full_state_dict(model)
    for key, value in reference.state_dict().items():
        close(updated[key], value, f"2d weight {key} after {steps} steps")
    folder = save_tensor_parallel_checkpoint(model, None, tmp / "ckpt-2d")
    if rank == 0:  # a normal plmkit checkpoint of the trained weights
        loaded, _ = load(folder)
        assert type(loaded) is type(reference)
        for key, value in reference.state_dict().items():
            close(loaded.state_dict()[key], value, f"2d checkpoint {key}")
