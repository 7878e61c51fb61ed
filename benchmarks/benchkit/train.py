"""Training-step rows: plmkit against transformers (peft for LoRA), fp32 and bf16 autocast, one
interleaved comparison per family so that both sides and both precisions share the same minutes.

A step = forward + loss + backward + fused AdamW step (lr 1e-4) + zero_grad. GPT-2 / LLaMA: causal
LM, labels = inputs; BERT: masked LM (15% masked); T5 / BART: labels of the input's length; LoRA: r=8,
alpha 16 on GPT-2's fused QKV (peft: c_attn). Before timing: logits within 1e-4 (fp32) and step-1
losses within 1e-5 (fp32; bf16 within 2e-3 relative, reported); a failed check leaves the family's
rows untimed. The limit: MFU = 6 N tokens/s / GEMM peak of the dtype (LoRA: 4 N, no weight
gradients), and the step's matmul bound: its own GEMMs (recorded at dispatch, replayed at their
shapes, dtypes and layouts) timed as one more variant in the same rounds. SDPA attention kernels are
not GEMMs here and are outside the bound.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchkit import models as M
from benchkit import rounds as R
from benchkit import rows

aten = torch.ops.aten
GEMMS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default}
LOSS_ATOL = {"fp32": 1e-5}
BF16_RTOL = 2e-3


def make_batch(family: str, vocab: int, batch: int, seq: int, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, vocab, (batch, seq), generator=g)
    if family == "bert":
        masked = torch.rand(ids.shape, generator=g) < 0.15
        out = {"input_ids": ids.masked_fill(masked, M.MASK_ID), "labels": ids.masked_fill(~masked, -100)}
    elif family in M.SEQ2SEQ:
        out = {"input_ids": ids, "labels": torch.randint(5, vocab, (batch, seq), generator=g)}
    else:
        out = {"input_ids": ids, "labels": ids.clone()}
    return {k: v.to(device) for k, v in out.items()}


class Step:
    """One side's training step: model, AdamW, precision; __call__() -> loss (float)."""

    def __init__(self, model, precision: str, batch: dict, device: str) -> None:
        self.model = model.to(device).train()
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)
        self.precision, self.batch, self.device = precision, batch, device

    def __call__(self) -> float:
        autocast = (
            torch.autocast(self.device, dtype=torch.bfloat16)
            if self.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            loss = self.model(**self.batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device != "cpu":
            torch.cuda.synchronize()
        return float(loss.detach())


class GemmRecorder(TorchDispatchMode):
    """Records every GEMM one step runs: (op, [(shape, dtype, transposed) or scalar], kwargs)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMMS:
            spec = [
                (tuple(a.shape), a.dtype, a.dim() >= 2 and a.stride(-2) == 1 and a.stride(-1) != 1)
                if isinstance(a, torch.Tensor)
                else a
                for a in args
            ]
            self.calls.append((func, spec, dict(kwargs or {})))
        return func(*args, **(kwargs or {}))


def gemm_replay(step: Step):
    """A callable running the GEMMs of one `step` (recorded on a copy, so the step's model is untouched)."""
    probe = copy.deepcopy(step.model)
    recorder = GemmRecorder()
    with recorder:
        Step(probe, step.precision, step.batch, step.device)()
    del probe
    cache: dict = {}

    def tensor(shape, dtype, transposed):
        key = (shape, dtype, transposed)
        if key not in cache:
            if transposed:
                t = torch.randn(*shape[:-2], shape[-1], shape[-2], device=step.device).to(dtype)
                cache[key] = t.transpose(-1, -2)
            else:
                cache[key] = torch.randn(shape, device=step.device).to(dtype)
        return cache[key]

    calls = [
        (f, [tensor(*a) if isinstance(a, tuple) else a for a in spec], kw) for f, spec, kw in recorder.calls
    ]

    def replay() -> None:
        for f, args, kw in calls:
            f(*args, **kw)
        if step.device != "cpu":
            torch.cuda.synchronize()

    return replay, len(calls)


def load_sides(family: str, folder: Path):
    """(plmkit model, reference model, N for MFU, flops per parameter and token)."""
    ours, reference = M.load_plmkit(folder), M.load_reference("gpt2" if family == "lora" else family, folder)
    n = M.model_flops_parameters(reference)
    if family != "lora":
        return ours, reference, n, 6
    import peft
    import plmkit.peft

    config = peft.LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True
    )
    reference = peft.get_peft_model(reference, config)
    ours = plmkit.peft.apply(ours, "lora", r=8, alpha=16, target="attn.qkv")
    return ours, reference, n, 4  # frozen base: forward 2N + input gradients 2N per token


def train_rows(
    family: str, shape: M.Shape, batch: int, seq: int, precisions: list[str], peaks: dict, plan: R.Plan, log,
    device: str = "cpu",
) -> list[dict]:  # fmt: skip
    label = f"train {family} {shape.label()} seq {seq} b{batch}" + ("" if device == "cpu" else f" {device}")
    names = {p: f"{label} {p}" for p in precisions}
    with tempfile.TemporaryDirectory() as tmp:
        folder = M.save_reference("gpt2" if family == "lora" else family, shape, Path(tmp))
        ours, reference, n_params, flops_per = load_sides(family, folder)
    diff = M.logits_difference("gpt2" if family == "lora" else family, ours, reference, shape.vocab)
    if diff > M.LOGITS_ATOL:
        reason = f"logits differ by {diff:.2e} > {M.LOGITS_ATOL:g}"
        return [rows.not_timed("train", n, "failed", reason) for n in names.values()]
    data = make_batch("gpt2" if family == "lora" else family, shape.vocab, batch, seq, device)
    variants, checks, replays = {}, {}, {}
    for p in precisions:  # each precision trains its own copies (their weights diverge)
        mine = Step(copy.deepcopy(ours), p, data, device)
        theirs = Step(copy.deepcopy(reference), p, data, device)
        a, b = mine(), theirs()  # step 1 from the same weights and batch
        tol = LOSS_ATOL.get(p, BF16_RTOL * abs(b))
        checks[p] = {
            "logits_max_diff": diff,
            "step1_loss_plmkit": a,
            "step1_loss_reference": b,
            "loss_diff": abs(a - b),
        }
        if not abs(a - b) <= tol:
            checks[p]["failed"] = f"step-1 loss differs by {abs(a - b):.2e} > {tol:.1e}"
            continue
        variants[f"reference_{p}"], variants[f"plmkit_{p}"] = theirs, mine
        replays[p], checks[p]["gemm_calls"] = gemm_replay(mine)
        variants[f"matmuls_{p}"] = replays[p]
    log(f"  {label}: timing {', '.join(variants)}")
    comparison = R.compare(variants, plan) if variants else {"rounds": []}
    tokens = batch * seq
    out = []
    for p, name in names.items():
        if "failed" in checks[p]:
            out.append(rows.not_timed("train", name, "failed", checks[p]["failed"], check=checks[p]))
            continue
        r = rows.timed(
            "train", name, label, comparison, f"plmkit_{p}", f"reference_{p}", "ms/step",
            reference_name="peft" if family == "lora" else "transformers",
            check=checks[p], family=family, precision=p, device=device, parameters=n_params,
        )  # fmt: skip
        bound = R.seconds(comparison["rounds"], f"matmuls_{p}")
        # fractions as medians of per-round ratios, like every ratio here (not a ratio of medians)
        fraction = R.ratio(comparison["rounds"], f"matmuls_{p}", f"plmkit_{p}")["median"]
        reference_fraction = R.ratio(comparison["rounds"], f"matmuls_{p}", f"reference_{p}")["median"]
        peak = peaks[p]
        mfu = {
            side: flops_per * n_params * tokens / (r[side] / 1000) / (peak * 1e9)
            for side in ("plmkit", "reference")
        }
        r["limit"] = {
            "name": "matmul bound",
            "bound_ms": 1000 * bound,
            "fraction": fraction,
            "reference_fraction": reference_fraction,
            "mfu": mfu["plmkit"],
            "reference_mfu": mfu["reference"],
            "peak_gflops": peak,
            "flops_per_token": f"{flops_per}N",
        }
        out.append(train_goal(r, family, p))
    if "plmkit_fp32" in variants and "plmkit_bf16" in variants:
        for r in out:
            if r.get("precision") == "bf16" and r["status"] == "ok":
                r["bf16_over_fp32"] = {
                    "plmkit": R.ratio(comparison["rounds"], "plmkit_fp32", "plmkit_bf16"),
                    "reference": R.ratio(comparison["rounds"], "reference_fp32", "reference_bf16"),
                }
    return out


def train_goal(r: dict, family: str, precision: str) -> dict:
    """>= 1.25x the reference, unless the reference already runs within 1.25x of the matmul bound
    (then 1.25x would beat the step's own matmuls): within 10% of the bound instead."""
    limit = r["limit"]
    if limit["reference_fraction"] >= 0.8:
        rows.goal(r, "within 10% of the matmul bound (reference near it)", limit["fraction"] >= 1 / 1.1)
    else:
        rows.ratio_at_least(r, 1.25, r["reference_name"])
    if family == "gpt2" and precision == "fp32":
        r["goal"] += "; MFU >= 0.80"
        r["goal_met"] = bool(r["goal_met"]) and limit["mfu"] >= 0.8
    return r
