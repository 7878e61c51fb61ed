"""`plm generate` and `plm eval`: use a saved model."""

from __future__ import annotations

import argparse


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a saved model",
        description=("Continue PROMPT with a model saved by plmkit (greedy by default; --sample to sample)."),
    )
    p.add_argument(
        "--model", required=True, metavar="DIR", help="plmkit checkpoint or Hugging Face model folder"
    )
    p.add_argument("--prompt", required=True, metavar="TEXT", help="text to continue")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="default: 32")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T", help="default: 1.0")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="sample from the K best (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling (1.0: off)")
    p.add_argument("--num-beams", type=int, default=1, metavar="N", help="beam search width (1: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, metavar="X", help="1.0: off")
    p.add_argument("--sample", action="store_true", help="sample instead of greedy/beam decoding")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="random seed for sampling")
    p.add_argument(
        "--stop", action="append", default=[], metavar="STR", help="stop when this text appears (repeatable)"
    )
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from plmkit.io import load

    model, tokenizer = load(args.model)  # CheckpointError when DIR is missing or not a checkpoint
    from plmkit.generation import generate, stream  # plmkit.generation once the generation package lands

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


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="loss and perplexity of a checkpoint on a text file",
        description="Stream FILE through the checkpoint's objective and report loss/perplexity.",
    )
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
    result = evaluate_loss(
        model, tokenizer, args.data, args.objective, args.block_size, args.batch_size, args.max_batches
    )
    print(json.dumps({"checkpoint": args.checkpoint, "data": args.data, **result}))
    return 0
