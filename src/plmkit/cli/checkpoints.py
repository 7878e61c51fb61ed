"""`plm info`, `plm convert`, `plm merge-lora`, `plm quantize` and `plm export-peft`: look at and transform
checkpoint folders (the work is in plmkit.summary, plmkit.convert and plmkit.train.distributed.consolidate).

Every --out follows plmkit.files.check_output_folder (checked before any work): never an input, no existing
checkpoint or non-empty folder without --overwrite; written atomically, so a failure leaves nothing."""

from __future__ import annotations

import argparse
from typing import Any

from plmkit.config.fields import Range
from plmkit.errors import ConfigError

OVERWRITE_HELP = "replace an existing checkpoint or non-empty folder at --out (never an input)"


def _add_out(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--out", required=True, metavar="DIR", help=f"{help} (a new folder)")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)


def _n_parameters(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="show a preset's or checkpoint's architecture and size",
        description="Print the family, sizes and exact parameter count of a preset or "
        "a checkpoint directory.",
    )
    p.add_argument("target", metavar="TARGET", help="preset name (e.g. gpt2) or checkpoint directory")
    p.set_defaults(run=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from plmkit.summary import summarize

    summary = summarize(args.target)
    print(f"{summary.target} ({summary.source})")
    for key, value in summary.architecture.items():
        print(f"{key}: {value}")
    print(f"parameters: {summary.n_parameters:,}")
    if summary.peft is not None:
        print(f"peft: {summary.peft}")
    if summary.quantization is not None:
        print(f"quantization: {summary.quantization}")
    return 0


def add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert checkpoints to and from the Hugging Face format",
        description="--from-hf DIR: a Hugging Face model folder (config.json + weights + "
        "tokenizer files) becomes a plmkit checkpoint. --to-hf CKPT: a plmkit "
        "checkpoint becomes a folder that transformers' from_pretrained loads. "
        "--from-sharded CKPT: a training checkpoint of an FSDP or DeepSpeed run "
        "(weights in shards) becomes a single-file plmkit checkpoint.",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="DIR", help="Hugging Face model folder to import")
    source.add_argument("--to-hf", metavar="CKPT", help="plmkit checkpoint folder to export")
    source.add_argument(
        "--from-sharded",
        metavar="CKPT",
        help="FSDP (dcp/) or DeepSpeed (deepspeed/) training checkpoint to gather",
    )
    _add_out(p, "output folder")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    if args.from_sharded:
        from plmkit.files import output_folder
        from plmkit.train.distributed.consolidate import consolidate_checkpoint

        source = args.from_sharded
        with output_folder(args.out, [source], args.overwrite, "--out") as tmp:
            _, model = consolidate_checkpoint(source, tmp)
    elif args.from_hf:
        from plmkit.convert import import_hf

        source, model = args.from_hf, import_hf(args.from_hf, args.out, overwrite=args.overwrite)
    else:
        from plmkit.convert import export_hf

        source, model = args.to_hf, export_hf(args.to_hf, args.out, overwrite=args.overwrite)
    print(f"converted {source} -> {args.out} ({type(model).__name__}, {_n_parameters(model):,} parameters)")
    return 0


def add_merge_lora(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge-lora",
        help="fold a LoRA adapter into its base model's weights",
        description="Load the base checkpoint, apply the LoRA adapter saved by "
        "plmkit.peft.save_adapter, merge it into the weights (W += s·BA) and "
        "write a plain plmkit checkpoint that needs no PEFT code to run. "
        "A checkpoint of a LoRA run (plm pretrain with peft: {method: lora}) "
        "holds base and adapter: give it as --base alone.",
    )
    p.add_argument(
        "--base",
        required=True,
        metavar="CKPT",
        help="base model: plmkit checkpoint or Hugging Face model folder",
    )
    p.add_argument(
        "--adapter",
        default=None,
        metavar="DIR",
        help="adapter folder (adapter_config.json); default: the adapter inside --base",
    )
    _add_out(p, "output checkpoint folder")
    p.add_argument(
        "--max-logits-error",
        type=Range(ge=0).option(float, "--max-logits-error"),
        default=None,
        metavar="X",
        help="quantized base: refuse when requantizing changes the logits by more than X",
    )
    p.set_defaults(run=_run_merge_lora)


def _run_merge_lora(args: argparse.Namespace) -> int:
    import warnings

    from plmkit.convert import merge_adapter

    with warnings.catch_warnings():  # a quantized base's merge report is printed below instead
        warnings.simplefilter("ignore")
        model = merge_adapter(
            args.base,
            args.out,
            args.adapter,
            max_logits_error=args.max_logits_error,
            overwrite=args.overwrite,
        )
    if getattr(model, "merge_report", None) is not None:  # a quantized base was requantized
        print(model.merge_report)
    adapter = args.adapter or args.base
    print(
        f"merged {adapter} into {args.base} -> {args.out} ({type(model).__name__}, "
        f"{_n_parameters(model):,} parameters)"
    )
    return 0


def add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quantize",
        help="quantize a checkpoint's weights to int8 or 4-bit NF4",
        description="Load CKPT, quantize the Linear layers of its transformer blocks (and its "
        "embeddings and LM head as int8 rows), and save a plmkit checkpoint that "
        "`plm generate` and `plm eval` use as it is. Prints the sizes on disk.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="plmkit checkpoint or Hugging Face model folder")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--int8",
        dest="mode",
        action="store_const",
        const="int8",
        help="weight-only int8, one scale per output channel",
    )
    mode.add_argument(
        "--int8-dynamic",
        dest="mode",
        action="store_const",
        const="int8-dynamic",
        help="int8 weights and int8 activations per token (int8 x int8 matmuls)",
    )
    mode.add_argument(
        "--nf4",
        dest="mode",
        action="store_const",
        const="nf4",
        help="4-bit NormalFloat (QLoRA), blocks of 64",
    )
    mode.add_argument("--mode", dest="mode", metavar="MODE", help="int8 | int8-dynamic | nf4")
    p.add_argument(
        "--backend",
        default="torch",
        metavar="NAME",
        help="torch (default) | bitsandbytes (LLM.int8 / 4-bit kernels, CUDA)",
    )
    p.add_argument(
        "--no-embeddings", action="store_true", help="keep the embeddings and the LM head in float"
    )
    _add_out(p, "output checkpoint folder")
    p.set_defaults(run=_run_quantize, mode=None)


def _run_quantize(args: argparse.Namespace) -> int:
    from plmkit.convert import quantize_checkpoint
    from plmkit.quant import MODES, report

    if args.mode is None:
        raise ConfigError(
            f"choose a quantization mode: --int8, --int8-dynamic or --nf4 (modes: {', '.join(MODES)})"
        )
    result = quantize_checkpoint(
        args.checkpoint,
        args.out,
        args.mode,
        embeddings=not args.no_embeddings,
        backend=args.backend,
        overwrite=args.overwrite,
    )
    print(f"quantized {args.checkpoint} -> {args.out}: {report(result.model)}")
    if result.bytes_before:
        print(
            f"weights on disk: {result.bytes_before:,} -> {result.bytes_after:,} bytes "
            f"({result.bytes_before / result.bytes_after:.2f}x smaller)"
        )
    return 0


def add_export_peft(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export-peft",
        help="export a LoRA run's adapter for the peft library",
        description="Write the LoRA adapter of CKPT (a checkpoint of a LoRA run) in the peft library's "
        "format (adapter_config.json + adapter_model.safetensors) to --out, and with --base-out its base "
        "model in transformers' format: peft.PeftModel.from_pretrained("
        "AutoModelForCausalLM.from_pretrained(BASE_OUT), OUT) then gives the run's model.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="checkpoint folder of a LoRA run")
    _add_out(p, "adapter folder")
    p.add_argument(
        "--base-out",
        default=None,
        metavar="DIR",
        help="also write the base model (transformers' format) there, recorded as the adapter's base",
    )
    p.set_defaults(run=_run_export_peft)


def _run_export_peft(args: argparse.Namespace) -> int:
    from plmkit.convert import export_peft_checkpoint

    model = export_peft_checkpoint(args.checkpoint, args.out, args.base_out, overwrite=args.overwrite)
    base = f" and base model -> {args.base_out}" if args.base_out else ""
    print(f"exported the LoRA adapter of {args.checkpoint} -> {args.out}{base} ({type(model).__name__})")
    return 0
