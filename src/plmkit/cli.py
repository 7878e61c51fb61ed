"""The `plm` command line.

Each subcommand is a pair of small functions: `_add_<name>(subparsers)` declares its arguments and
`_run_<name>(args) -> int` makes one call into the library. Heavy imports (torch, the model) happen
inside the `_run_` functions so that `plm --help` answers at once. To add a subcommand, write the
pair and append `_add_<name>` to `SUBCOMMANDS`.

User errors (`PlmkitError`) print one line `error: <message>` to stderr and exit with code 2;
Ctrl-C exits with 130. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from plmkit import __version__
from plmkit.errors import ConfigError, PlmkitError, did_you_mean

# --------------------------------------------------------------------------- generate


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a saved model", description=(
        "Continue PROMPT with a model saved by plmkit (greedy by default; --sample to sample)."))
    p.add_argument("--model", required=True, metavar="DIR",
                   help="plmkit checkpoint or Hugging Face model folder")
    p.add_argument("--prompt", required=True, metavar="TEXT", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="default: 32")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="default: 1.0")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K best (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling (1.0: off)")
    p.add_argument("--num-beams", type=int, default=1, metavar="N", help="beam search width (1: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="X", help="1.0: off")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy/beam decoding")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="random seed for sampling")
    p.add_argument("--stop", action="append", default=[], metavar="STR",
                   help="stop when this text appears (repeatable)")
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from plmkit.io import load

    model, tokenizer = load(args.model)  # CheckpointError when DIR is missing or not a checkpoint
    from plmkit.generate import generate, stream
    options = dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        num_beams=args.num_beams,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    if args.stream:
        pieces = stream(model, tokenizer, args.prompt, **options)  # validates options before printing
        print(args.prompt, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
    else:
        print(args.prompt + generate(model, tokenizer, args.prompt, **options))
    return 0


# --------------------------------------------------------------------------- info


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show a preset's or checkpoint's architecture and size",
                       description="Print the family, sizes and exact parameter count of a preset or "
                                   "a checkpoint directory.")
    p.add_argument("target", metavar="TARGET", help="preset name (e.g. gpt2) or checkpoint directory")
    p.set_defaults(run=_run_info)


# Shown first, in this order, when the config has them.
_INFO_KEYS = ("family", "vocab_size", "d_model", "n_layer", "n_head", "max_positions")


def _run_info(args: argparse.Namespace) -> int:
    import torch

    from plmkit.model import build_model
    from plmkit.model.presets import PRESETS

    target = args.target
    if target in PRESETS:
        source = "preset"
        try:  # no memory for the weights: a 7B preset is counted as fast as a tiny one
            with torch.device("meta"):
                model = build_model(target)
        except Exception:  # an init that needs real values: build it for real
            model = build_model(target)
    elif Path(target).is_dir():
        from plmkit.io import load

        source = "checkpoint"
        model, _ = load(target)
    else:
        raise ConfigError(
            f'"{target}" is neither a preset name nor a checkpoint directory{did_you_mean(target, PRESETS)}'
        )
    config = model.config
    print(f"{target} ({source})")
    for key in _INFO_KEYS:
        if hasattr(config, key):
            print(f"{key}: {getattr(config, key)}")
    n_params = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    print(f"parameters: {n_params:,}")
    peft = getattr(model, "peft_config", None)
    if peft is not None:  # a checkpoint of a PEFT run
        from plmkit.peft import trainable_report

        print(f"peft: {peft.method}; {trainable_report(model)}")
    if getattr(model, "quant_config", None) is not None:
        from plmkit.quant import report

        print(f"quantization: {report(model)}")
    return 0


# --------------------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the quickstart: train a tokenizer and a small GPT on CPU, then generate",
                       description="Train a byte-level BPE tokenizer and a small GPT on the Python language "
                                   "reference shipped with CPython (about 3 minutes on 2 cores), report "
                                   "validation perplexity, save a checkpoint and a loss curve, generate samples. "
                                   "data=PATH trains on your own text; any recipe key can be overridden.")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="data=PATH, or recipe keys such as train.steps=100 out_dir=runs/mine")
    p.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from plmkit.recipes.demo import run_demo

    run_demo(args.overrides)
    return 0


# --------------------------------------------------------------------------- convert


def _add_convert(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert checkpoints to and from the Hugging Face format",
                       description="--from-hf DIR: a Hugging Face model folder (config.json + weights + "
                                   "tokenizer files) becomes a plmkit checkpoint. --to-hf CKPT: a plmkit "
                                   "checkpoint becomes a folder that transformers' from_pretrained loads. "
                                   "--from-sharded CKPT: a training checkpoint of an FSDP or DeepSpeed run "
                                   "(weights in shards) becomes a single-file plmkit checkpoint.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-hf", metavar="DIR", help="Hugging Face model folder to import")
    source.add_argument("--to-hf", metavar="CKPT", help="plmkit checkpoint folder to export")
    source.add_argument("--from-sharded", metavar="CKPT",
                        help="FSDP (dcp/) or DeepSpeed (deepspeed/) training checkpoint to gather")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(run=_run_convert)


def _run_convert(args: argparse.Namespace) -> int:
    from plmkit.io import load, save
    from plmkit.model.hf import load_hf, save_hf

    if args.from_sharded:
        from plmkit.train.distributed.consolidate import consolidate_checkpoint

        _, model = consolidate_checkpoint(args.from_sharded, args.out)
        source = args.from_sharded
    elif args.from_hf:
        model, tokenizer = load_hf(args.from_hf)
        save(model, tokenizer, args.out)
        source = args.from_hf
    else:
        model, tokenizer = load(args.to_hf)
        peft = getattr(model, "peft_config", None)
        if peft is not None:  # save_hf would write the base weights alone, silently dropping the tuning
            fix = "merge it first with plm merge-lora" if peft.method == "lora" else "Hugging Face has no place for it"
            raise ConfigError(f"{args.to_hf} carries {peft.method} (a PEFT run's checkpoint): {fix}; "
                              "plmkit.peft.export_peft writes a LoRA adapter for the peft library")
        save_hf(model, tokenizer, args.out)
        source = args.to_hf
    n_params = sum(p.numel() for p in model.parameters())
    print(f"converted {source} -> {args.out} ({type(model).__name__}, {n_params:,} parameters)")
    return 0


# --------------------------------------------------------------------------- tokenizer


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train a tokenizer",
                       description="Tokenizer tools. `plm tokenizer train --help` for training.")
    p.set_defaults(run=lambda args: _print_help(p))  # `plm tokenizer` alone: its help, exit 2
    actions = p.add_subparsers(dest="action", title="actions", metavar="ACTION")
    t = actions.add_parser("train", help="train a tokenizer on text files", description=(
        "Train a byte-level BPE (GPT-2), WordPiece (Chinese BERT: one token per CJK character) or "
        "Unigram (T5) tokenizer and write tokenizer.json + tokenizer_config.json to --out."))
    t.add_argument("--data", nargs="+", required=True, metavar="PATH",
                   help=".txt (a document per line), .jsonl (--text-field), .gz of those, folders, globs")
    t.add_argument("--kind", default=None, metavar="KIND",
                   help="bpe | wordpiece | unigram (default: the family's, else bpe)")
    t.add_argument("--vocab-size", type=int, required=True, metavar="N",
                   help="vocabulary size, special tokens included")
    t.add_argument("--out", required=True, metavar="DIR", help="output folder")
    t.add_argument("--family", default=None, metavar="NAME",
                   help="special tokens of bert | roberta | bart | gpt2 | t5 | glm | llama")
    t.add_argument("--min-frequency", type=int, default=2, metavar="N",
                   help="minimum pair frequency for a merge (bpe, wordpiece; default: 2)")
    t.add_argument("--text-field", default="text", metavar="KEY", help="JSONL field with the text")
    t.add_argument("--cased", action="store_true", help="wordpiece: keep case (default: lowercase)")
    t.add_argument("--sentinels", type=int, default=100, metavar="N", help="t5: sentinel count (100)")
    t.set_defaults(run=_run_tokenizer_train)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _run_tokenizer_train(args: argparse.Namespace) -> int:
    from plmkit.data import SourceSpec, iter_documents, resolve_files
    from plmkit.tokenizer import CONFIG_FILE, TOKENIZER_FILE, Tokenizer

    specs = [SourceSpec(path=path, text_field=args.text_field) for path in args.data]
    n_files = sum(len(resolve_files(spec)) for spec in specs)  # checked before training: a typo fails at once
    texts = (document.text for spec in specs for document in iter_documents(spec))
    tokenizer: Tokenizer = Tokenizer.train(
        texts, args.kind, vocab_size=args.vocab_size, family=args.family, min_frequency=args.min_frequency,
        lowercase=not args.cased, n_sentinels=args.sentinels)
    tokenizer.save(args.out)
    kind = args.kind or type(tokenizer.backend.model).__name__.lower()
    print(f"trained {kind} tokenizer, vocab size {tokenizer.vocab_size}, on {n_files} file(s) -> "
          f"{Path(args.out) / TOKENIZER_FILE} (+ {CONFIG_FILE})")
    return 0


# --------------------------------------------------------------------------- pretrain / eval


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train any family with any objective from a YAML recipe",
                       description="Train from RECIPE.yaml (see recipes/). Override any key with dotted "
                                   "key=value pairs, e.g. train.steps=100 model.n_layer=2 resume=true.")
    p.add_argument("recipe", metavar="RECIPE.yaml", help="recipe file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="CKPT",
                   help="continue the run from its latest checkpoint (or from CKPT)")
    p.add_argument("--nproc", default=None, metavar="N",
                   help="start N training processes on this machine under torchrun (distributed.strategy: "
                        "auto = ddp, or fsdp / deepspeed); the same as torchrun --nproc-per-node N -m plmkit "
                        "pretrain ...")
    p.set_defaults(run=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    import json

    from plmkit.config import load_config
    from plmkit.recipes.config import RecipeConfig
    from plmkit.recipes.pretrain import pretrain

    overrides = list(args.overrides)
    if args.resume is not None:
        overrides.append("resume=true" if args.resume is True else f"resume={args.resume}")
    config = load_config(RecipeConfig, args.recipe, overrides)  # a bad recipe fails before any process starts
    if args.nproc is not None:
        from plmkit.recipes.common import recipe_strategy_name
        from plmkit.train.distributed.launch import check_nproc, launch, parse_nproc
        from plmkit.train.distributed.world import World

        nproc = parse_nproc(args.nproc)
        if nproc > 1:
            check_nproc(nproc, config.train.device)
            recipe_strategy_name(config, World(0, nproc, 0, launched=True))  # e.g. strategy=single with --nproc 2
            resume = [] if args.resume is None else ["--resume"] + ([] if args.resume is True else [args.resume])
            return launch(nproc, ["pretrain", args.recipe, *args.overrides, *resume])
    result = pretrain(config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0 reports
        print(json.dumps(result))
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="loss and perplexity of a checkpoint on a text file",
                       description="Stream FILE through the checkpoint's objective and report loss/perplexity.")
    p.add_argument("checkpoint", metavar="CKPT", help="plmkit checkpoint or Hugging Face folder")
    p.add_argument("--data", required=True, metavar="FILE", help="text file (.txt, .jsonl, ...)")
    p.add_argument("--objective", default=None, help="default: clm / mlm / prefix_lm / t5_span by family")
    p.add_argument("--block-size", type=int, default=None, metavar="N")
    p.add_argument("--batch-size", type=int, default=8, metavar="N")
    p.add_argument("--max-batches", type=int, default=None, metavar="N")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from plmkit.evaluate import evaluate_loss
    from plmkit.io import load

    model, tokenizer = load(args.checkpoint)
    result = evaluate_loss(model, tokenizer, args.data, args.objective, args.block_size, args.batch_size,
                           args.max_batches)
    print(json.dumps({"checkpoint": args.checkpoint, "data": args.data, **result}))
    return 0


# --------------------------------------------------------------------------- merge-lora


def _add_merge_lora(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge-lora", help="fold a LoRA adapter into its base model's weights",
                       description="Load the base checkpoint, apply the LoRA adapter saved by "
                                   "plmkit.peft.save_adapter, merge it into the weights (W += s·BA) and "
                                   "write a plain plmkit checkpoint that needs no PEFT code to run. "
                                   "A checkpoint of a LoRA run (plm pretrain with peft: {method: lora}) "
                                   "holds base and adapter: give it as --base alone.")
    p.add_argument("--base", required=True, metavar="CKPT",
                   help="base model: plmkit checkpoint or Hugging Face model folder")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="adapter folder (adapter_config.json); default: the adapter inside --base")
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder")
    p.add_argument("--max-logits-error", type=float, default=None, metavar="X",
                   help="quantized base: refuse when requantizing changes the logits by more than X")
    p.set_defaults(run=_run_merge_lora)


def _run_merge_lora(args: argparse.Namespace) -> int:
    import warnings

    from plmkit.io import load, save
    from plmkit.peft import load_adapter, merge
    from plmkit.peft.io import read_adapter_config

    adapter = args.adapter or args.base  # a LoRA run's checkpoint holds its adapter beside the model
    if args.adapter is None and not (Path(args.base) / "adapter_config.json").is_file():
        raise ConfigError(f"{args.base} holds no adapter (no adapter_config.json): give --adapter DIR, or a "
                          "checkpoint of a LoRA run as --base")
    method = read_adapter_config(adapter)["method"]  # CheckpointError when DIR is not an adapter
    if method != "lora":
        raise ConfigError(f"{adapter} holds a {method} adapter; only LoRA adapters can be merged "
                          "into the base weights")
    model, tokenizer = load(args.base)  # a LoRA run's checkpoint loads with its LoRA already applied
    with warnings.catch_warnings():  # a quantized base's merge report is printed below instead
        warnings.simplefilter("ignore")
        model = merge(load_adapter(model, adapter), unload=True, max_logits_error=args.max_logits_error)
    if getattr(model, "merge_report", None) is not None:  # a quantized base was requantized
        print(model.merge_report)
    save(model, tokenizer, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"merged {adapter} into {args.base} -> {args.out} ({type(model).__name__}, {n_params:,} parameters)")
    return 0


# --------------------------------------------------------------------------- quantize


def _add_quantize(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quantize", help="quantize a checkpoint's weights to int8 or 4-bit NF4",
                       description="Load CKPT, quantize the Linear layers of its transformer blocks (and its "
                                   "embeddings and LM head as int8 rows), and save a plmkit checkpoint that "
                                   "`plm generate` and `plm eval` use as it is. Prints the sizes on disk.")
    p.add_argument("checkpoint", metavar="CKPT", help="plmkit checkpoint or Hugging Face model folder")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--int8", dest="mode", action="store_const", const="int8",
                      help="weight-only int8, one scale per output channel")
    mode.add_argument("--int8-dynamic", dest="mode", action="store_const", const="int8-dynamic",
                      help="int8 weights and int8 activations per token (int8 x int8 matmuls)")
    mode.add_argument("--nf4", dest="mode", action="store_const", const="nf4",
                      help="4-bit NormalFloat (QLoRA), blocks of 64")
    mode.add_argument("--mode", dest="mode", metavar="MODE", help="int8 | int8-dynamic | nf4")
    p.add_argument("--backend", default="torch", metavar="NAME",
                   help="torch (default) | bitsandbytes (LLM.int8 / 4-bit kernels, CUDA)")
    p.add_argument("--no-embeddings", action="store_true",
                   help="keep the embeddings and the LM head in float")
    p.add_argument("--out", required=True, metavar="DIR", help="output checkpoint folder")
    p.set_defaults(run=_run_quantize, mode=None)


def _run_quantize(args: argparse.Namespace) -> int:
    from plmkit.io import load, save
    from plmkit.quant import MODES, quantize, report
    from plmkit.weights import WEIGHTS_FILE

    if args.mode is None:
        raise ConfigError(f"choose a quantization mode: --int8, --int8-dynamic or --nf4 (modes: {', '.join(MODES)})")
    source, out = Path(args.checkpoint), Path(args.out)
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise ConfigError(f"--out {out} is the input checkpoint; write the quantized copy to another folder")
    model, tokenizer = load(source)
    quantize(model, args.mode, embeddings=not args.no_embeddings, backend=args.backend)
    save(model, tokenizer, out)
    before = sum(f.stat().st_size for f in source.glob("*.safetensors"))  # shards too; 0 for legacy .bin
    after = (out / WEIGHTS_FILE).stat().st_size
    print(f"quantized {source} -> {out}: {report(model)}")
    if before:
        print(f"weights on disk: {before:,} -> {after:,} bytes ({before / after:.2f}x smaller)")
    return 0


# --------------------------------------------------------------------------- main

SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_generate,
    _add_info,
    _add_demo,
    _add_convert,
    _add_tokenizer,
    _add_pretrain,
    _add_eval,
    _add_merge_lora,
    _add_quantize,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plm",
        description="plmkit: pre-train, fine-tune and align Transformer language models.",
    )
    parser.add_argument("--version", action="version", version=f"plm {__version__}")
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors: keep argparse's code (0 or 2)
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.run(args)
    except PlmkitError as exc:
        # One line whatever the message, so scripts can grep it.
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        from plmkit.train.distributed.launch import is_worker, report_worker_error

        if is_worker():  # one of torchrun's processes: one line for all of them
            report_worker_error(message)
        else:
            print(f"error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `plm generate ... | head`: the reader left; exit quietly
        # Point stdout at devnull so the interpreter's final flush doesn't fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
