"""Sharded training checkpoints -> one plmkit checkpoint (`plm convert --from-sharded CKPT --out DIR`).

An FSDP run's checkpoints hold the weights as torch.distributed.checkpoint shards (dcp/; with tensor
parallelism the fused q|k|v and gate|up rows are in the rank-major order of the tensor-parallel size
that trainer_state.json records, and are put back in order here; with pipeline stages every stage wrote
its blocks under the whole model's names, so the shards together are the model), a DeepSpeed run's as the engine's
files (deepspeed/). Both are gathered here, in one process without a process group, into a normal
plmkit checkpoint (plmkit.json + model.safetensors + tokenizer) that `plmkit.load`, `plm generate`,
`plm eval` and `init_from` read. A checkpoint that already has model.safetensors (single, DDP) is simply
copied the same way.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

from plmkit.errors import CheckpointError
from plmkit.io import CONFIG_FILE, build_from_header, save
from plmkit.train.checkpoint import read_trainer_info
from plmkit.weights import DCP_FOLDER, DEEPSPEED_FOLDER, SHARDED_FOLDERS, WEIGHTS_FILE


def sharded_layout(checkpoint: Path) -> str:
    """ "dcp", "deepspeed" or "plain" (model.safetensors)."""
    if (checkpoint / WEIGHTS_FILE).is_file():
        return "plain"
    for layout in SHARDED_FOLDERS:
        if (checkpoint / layout).is_dir():
            return layout
    raise CheckpointError(
        f"{checkpoint} holds no model weights: neither {WEIGHTS_FILE} nor a {DCP_FOLDER}/ or {DEEPSPEED_FOLDER}/ folder "
        "of shards; give a checkpoint folder of a training run (RUN/checkpoints/step-N)"
    )


def consolidate_checkpoint(checkpoint: str | Path, out: str | Path) -> tuple[Path, torch.nn.Module]:
    """Write the model of a (sharded) training checkpoint as a single-file plmkit checkpoint at `out`;
    returns (out, the model)."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise CheckpointError(f"checkpoint folder {checkpoint} does not exist")
    if not (checkpoint / CONFIG_FILE).is_file():
        raise CheckpointError(f"{checkpoint} is not a plmkit training checkpoint: it has no {CONFIG_FILE}")
    layout = sharded_layout(checkpoint)
    if layout == "plain":
        from plmkit.io import load

        model, tokenizer = load(checkpoint)
        return save(model, tokenizer, out), model
    model = build_from_header(checkpoint / CONFIG_FILE)
    if layout == "dcp":
        from plmkit.train.distributed.dcp import load_sharded_weights, written_tensor_parallel

        info = read_trainer_info(checkpoint)  # a tensor-parallel run's fused rows are in its rank-major order
        load_sharded_weights(model, checkpoint / layout, written_tensor_parallel(info))
    else:
        load_deepspeed_weights(model, checkpoint, layout)
    from plmkit.tokenizer import TOKENIZER_FILE, Tokenizer

    tokenizer = Tokenizer.load(checkpoint) if (checkpoint / TOKENIZER_FILE).is_file() else None
    return save(model.eval(), tokenizer, out), model


def load_deepspeed_weights(model: torch.nn.Module, checkpoint: Path, tag: str) -> None:
    """The fp32 master weights of a DeepSpeed ZeRO checkpoint, gathered from every rank's partition."""
    from plmkit.train.distributed.deepspeed import import_deepspeed
    from plmkit.train.precision import resolve_device

    import_deepspeed(resolve_device("cpu"))
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(sys.stderr):  # its progress prints; stdout stays the command's answer
        state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=tag)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(
            f"{checkpoint / tag} lacks {len(missing)} of the model's tensors ({', '.join(missing[:3])})"
        )
    model.load_state_dict({k: state[k] for k in expected}, strict=True)
