"""Decoding rows: plmkit's generate_ids (fp32 / bf16 / int8 decode weights) against transformers'
fp32 generate(), greedy, EOS off, the same prompts and weights.

Before timing: logits within 1e-4 (fp32) and plmkit fp32's greedy ids identical to transformers'; a
failed check makes the rows "failed", untimed. bf16 / int8 report their greedy agreement with fp32
(the share of equal tokens). The engine's own prefill/decode split (decode_seconds) gives the limit
fraction; the ratio always compares whole calls, as transformers is timed.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from benchkit import models as M
from benchkit import rounds as R
from benchkit import rows

BYTES = {"fp32": 4, "bf16": 2, "int8": 1}  # nominal weight bytes per parameter (int8 scales ignored)
GOAL = {("fp32", 1): 2.0, ("fp32", 8): 1.5, ("bf16", 1): 2.5, ("bf16", 8): 2.5, ("int8", 1): 4.0}


class Sides:
    """The two generate calls on one pair of models; plmkit's remembers decode_seconds when given."""

    def __init__(self, family: str, ours, reference) -> None:
        import transformers

        self.family, self.ours, self.reference = family, ours.eval(), reference.eval()
        start = ours.config.decoder_start_id if family == "t5" else None
        reference.generation_config = transformers.GenerationConfig(
            pad_token_id=0, decoder_start_token_id=start, eos_token_id=None
        )
        self.split: dict[tuple[str, str], list[float]] = {}

    def transformers(self, ids: torch.Tensor, new: int) -> torch.Tensor:
        with torch.inference_mode():
            out = self.reference.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                num_beams=1,
                max_new_tokens=new,
            )
        return out[:, 1:] if self.family == "t5" else out[:, ids.shape[1] :]

    def plmkit(self, ids: torch.Tensor, new: int, dtype: str) -> torch.Tensor:
        from plmkit import generate_ids
        from plmkit.generation import GenerationConfig

        config = GenerationConfig(max_new_tokens=new, eos_token_id=[], dtype=dtype)
        with torch.inference_mode():
            out = generate_ids(
                self.ours, ids, attention_mask=torch.ones_like(ids), config=config, return_output=True
            )
        for field in ("prefill_seconds", "decode_seconds"):  # the engine's own split, when it reports one
            seconds = getattr(out, field, None)
            if seconds is not None:
                self.split.setdefault((dtype, field), []).append(float(seconds))
        return getattr(out, "ids", out)


def prompts(batch: int, length: int, vocab: int) -> torch.Tensor:
    return torch.randint(5, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


def decode_rows(
    family: str, shape: M.Shape, batches: list[int], dtypes: list[str], new: int, plan: R.Plan, log
) -> list[dict]:
    label = f"decode {family} {shape.label()}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = M.save_reference(family, shape, Path(tmp))
        ours, reference = M.load_plmkit(folder), M.load_reference(family, folder)
    diff = M.logits_difference(family, ours, reference, shape.vocab)
    out: list[dict] = []
    sides = Sides(family, ours, reference)
    for batch in batches:
        names = [f"{label} b{batch} {d}" for d in dtypes]
        if diff > M.LOGITS_ATOL:
            reason = f"logits differ by {diff:.2e} > {M.LOGITS_ATOL:g}"
            out += [rows.not_timed("decode", n, "failed", reason) for n in names]
            continue
        ids = prompts(batch, 16, shape.vocab)
        expected = sides.transformers(ids, new)
        variants: dict[str, Callable[[], object]] = {
            "transformers": lambda ids=ids: sides.transformers(ids, new)
        }
        checks: dict[str, dict] = {}
        fp32_ids = None
        for d in dtypes:
            try:
                got = sides.plmkit(ids, new, d)
            except Exception as e:  # a decode path that raises is a failed row, not a crashed run
                checks[d] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:300]}
                continue
            if d == "fp32":
                fp32_ids = got
                if not torch.equal(got, expected):
                    same = float((got == expected).float().mean())
                    checks[d] = {
                        "status": "failed",
                        "reason": f"greedy ids differ from transformers ({same:.1%} equal)",
                    }
                    continue
                checks[d] = {"greedy_identical": True}
            else:
                base = fp32_ids if fp32_ids is not None else expected
                checks[d] = {"greedy_agreement_vs_fp32": float((got == base).float().mean())}
            variants[f"plmkit_{d}"] = lambda ids=ids, d=d: sides.plmkit(ids, new, d)
        log(f"  {label} b{batch}: timing {', '.join(variants)}")
        comparison = R.compare(variants, plan) if len(variants) > 1 else {"rounds": []}
        cid = f"{label} b{batch}"
        for d, name in zip(dtypes, names, strict=True):
            check = checks[d]
            if "status" in check:
                out.append(rows.not_timed("decode", name, check["status"], check["reason"]))
                continue
            r = rows.timed(
                "decode", name, cid, comparison, f"plmkit_{d}", "transformers", "ms/token", per_call=new,
                reference_name="transformers fp32", check={"logits_max_diff": diff, **check},
                family=family, batch=batch, dtype=d, new_tokens=new,
            )  # fmt: skip
            step_ms = r["plmkit"]
            if sides.split.get((d, "decode_seconds")):  # the first token comes from the prefill
                step_ms = 1000 * statistics.median(sides.split[(d, "decode_seconds")]) / max(1, new - 1)
                r["decode_ms_per_token"] = step_ms
            if sides.split.get((d, "prefill_seconds")):
                r["prefill_ms"] = 1000 * statistics.median(sides.split[(d, "prefill_seconds")])
            weight_bytes = M.decode_weight_bytes(reference, BYTES[d])
            r["limit"] = {
                "name": "read bandwidth",
                "weight_bytes_per_step": weight_bytes,
                "bound_ms_per_step": None,  # filled by the runner, which measured the bandwidth
                "measured_ms_per_step": step_ms,
            }
            target = GOAL.get((d, batch))
            out.append(rows.ratio_at_least(r, target, "transformers fp32") if target else r)
    return out


def ttft_rows(family: str, shape: M.Shape, prompt: int, plan: R.Plan, log) -> list[dict]:
    """Time to first token: a max_new_tokens=1 call on a `prompt`-token prompt, batch 1, against
    transformers fp32; plmkit with fp32 weights (first token identical, else untimed) and with bf16 decode
    weights (a bf16 prefill where the device's bf16 matmuls are fast: weights.prefill_autocast; whether its
    first token equals transformers' fp32 one is reported, not required)."""
    name = f"time to first token {family} {shape.label()} prompt {prompt}"
    with tempfile.TemporaryDirectory() as tmp:
        folder = M.save_reference(family, shape, Path(tmp))
        ours, reference = M.load_plmkit(folder), M.load_reference(family, folder)
    diff = M.logits_difference(family, ours, reference, shape.vocab)
    if diff > M.LOGITS_ATOL:
        return [
            rows.not_timed("ttft", f"{name} {d}", "failed", f"logits differ by {diff:.2e}")
            for d in ("fp32", "bf16")
        ]
    sides = Sides(family, ours, reference)
    ids = prompts(1, prompt, shape.vocab)
    first = sides.transformers(ids, 1)
    if not torch.equal(sides.plmkit(ids, 1, "fp32"), first):
        return [
            rows.not_timed("ttft", f"{name} {d}", "failed", "first token differs from transformers")
            for d in ("fp32", "bf16")
        ]
    bf16_same = torch.equal(sides.plmkit(ids, 1, "bf16"), first)
    log(f"  {name}: timing")
    comparison = R.compare(
        {
            "transformers": lambda: sides.transformers(ids, 1),
            "plmkit_fp32": lambda: sides.plmkit(ids, 1, "fp32"),
            "plmkit_bf16": lambda: sides.plmkit(ids, 1, "bf16"),
        },
        plan,
    )
    out = []
    for d, check in (
        ("fp32", {"first_token_identical": True}),
        ("bf16", {"first_token_equals_fp32_reference": bf16_same}),
    ):
        r = rows.timed(
            "ttft", f"{name} {d}", name, comparison, f"plmkit_{d}", "transformers", "ms", check=check
        )
        r["reference_name"] = "transformers fp32"
        out.append(rows.ratio_at_least(r, 1.3, "transformers fp32"))
    return out
