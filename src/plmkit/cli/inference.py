"""`plm generate` and `plm eval`: use a saved model.

Every number an option takes has a declared range (plmkit.config.Range) and fails in the words of a recipe
key: `plm eval CKPT --data F --batch-size 0` -> `error: --batch-size=0 is out of range: must be >= 1`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from plmkit.config.fields import Range, not_one_of
from plmkit.data.formats import FORMATS
from plmkit.evaluate.options import BATCH_SIZE, BLOCK_SIZE, MAX_BATCHES, SEED

# `plm generate`'s numbers; the one "off" value of each is its default
MAX_NEW_TOKENS = Range(ge=1)
TEMPERATURE = Range(gt=0, off="1.0", means="the model's distribution")
TOP_K = Range(ge=0, off="0", means="all tokens")
TOP_P = Range(gt=0, le=1, off="1.0", means="no nucleus cut")
NUM_BEAMS = Range(ge=1, off="1", means="no beam search")
REPETITION_PENALTY = Range(gt=0, off="1.0", means="no penalty")
DECODE_DTYPES = ("fp32", "bf16", "int8")  # plmkit.generation.weights.DecodeDtype (no torch import here)


def choice(name: str, choices: tuple[str, ...]):
    """An argparse `type=` for a closed set, worded like a recipe's Literal keys (one `error:` line)."""

    def parse(text: str) -> str:
        if text not in choices:
            raise not_one_of(text, choices, name)
        return text

    return parse


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate text from a saved model",
        description="Continue PROMPT with a model saved by plmkit (greedy by default; --sample to sample). "
        "A last line on stderr says why the text ended: [stopped at end-of-text after N tokens], "
        "[stopped at a stop string after N tokens] or [stopped at max_new_tokens=N].",
    )
    p.add_argument(
        "--model", required=True, metavar="DIR", help="plmkit checkpoint or Hugging Face model folder"
    )
    p.add_argument("--prompt", required=True, metavar="TEXT", help="text to continue")
    p.add_argument(
        "--max-new-tokens",
        type=MAX_NEW_TOKENS.option(int, "--max-new-tokens"),
        default=32,
        metavar="N",
        help="default: 32",
    )
    p.add_argument(
        "--temperature",
        type=TEMPERATURE.option(float, "--temperature"),
        default=1.0,
        metavar="T",
        help="sampling: logits / T (default: 1.0)",
    )
    p.add_argument(
        "--top-k",
        type=TOP_K.option(int, "--top-k"),
        default=0,
        metavar="K",
        help="sample from the K best (0: all)",
    )
    p.add_argument(
        "--top-p",
        type=TOP_P.option(float, "--top-p"),
        default=1.0,
        metavar="P",
        help="nucleus sampling, in (0, 1] (1.0: off)",
    )
    p.add_argument(
        "--num-beams",
        type=NUM_BEAMS.option(int, "--num-beams"),
        default=1,
        metavar="N",
        help="beam search width (1: off)",
    )
    p.add_argument(
        "--repetition-penalty",
        type=REPETITION_PENALTY.option(float, "--repetition-penalty"),
        default=1.0,
        metavar="X",
        help="1.0: off",
    )
    p.add_argument("--sample", action="store_true", help="sample instead of greedy/beam decoding")
    p.add_argument(
        "--seed", type=SEED.option(int, "--seed"), default=None, metavar="N", help="random seed for sampling"
    )
    p.add_argument(
        "--stop", action="append", default=[], metavar="STR", help="stop when this text appears (repeatable)"
    )
    p.add_argument("--stream", action="store_true", help="print text as it is generated")
    p.add_argument(
        "--dtype",
        type=choice("--dtype", DECODE_DTYPES),
        default="fp32",
        metavar="DTYPE",
        help="weights of the decode steps: fp32 (the model's own) | bf16 | int8 (weight-only); default: fp32",
    )
    p.set_defaults(run=_run_generate)


def _run_generate(args: argparse.Namespace) -> int:
    from plmkit.io import load

    model, tokenizer = load(args.model)  # CheckpointError when DIR is missing or not a checkpoint
    from plmkit.generation import generate, stream

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
        dtype=args.dtype,
    )
    if args.stream:
        pieces = stream(model, tokenizer, args.prompt, **options)  # validates options before printing
        print(args.prompt, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
        finish = pieces.finish
    else:
        text, finish = generate(model, tokenizer, args.prompt, return_finish=True, **options)
        print(args.prompt + text)
    sys.stdout.flush()
    print(finish, file=sys.stderr)  # why it ended, apart from the text a script reads from stdout
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="loss and perplexity of a checkpoint on a text file",
        description="Stream FILE through the checkpoint's objective and report loss/perplexity. FILE is "
        "read like an entry of a recipe's data.sources (--format, --text-field, --blank-line-documents, "
        "--on-error) and tokenized into the same cache (--cache-dir).",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="plmkit checkpoint or Hugging Face folder")
    p.add_argument(
        "--data", required=True, metavar="FILE", help="text file, folder or glob (.txt, .jsonl, ...)"
    )
    p.add_argument(
        "--format",
        type=choice("--format", FORMATS),
        default=None,
        metavar="FMT",
        help=f"{' | '.join(FORMATS)} (default: from each file's suffix)",
    )
    p.add_argument(
        "--text-field", default="text", metavar="KEY", help="JSON key / CSV column with the text (text)"
    )
    p.add_argument(
        "--blank-line-documents",
        action="store_true",
        help=".txt: a document per blank-line-separated paragraph (default: per line)",
    )
    p.add_argument(
        "--on-error",
        type=choice("--on-error", ("raise", "skip")),
        default="raise",
        metavar="WHAT",
        help="malformed records: raise (default) | skip (and count them)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="tokenized-store cache (default: $PLMKIT_CACHE, else .cache/plmkit here)",
    )
    p.add_argument("--objective", default=None, help="default: clm / mlm / prefix_lm / t5_span by family")
    p.add_argument(
        "--block-size",
        type=BLOCK_SIZE.option(int, "--block-size"),
        default=None,
        metavar="N",
        help="tokens per block (default: the model's max_positions, at most 512)",
    )
    p.add_argument(
        "--batch-size", type=BATCH_SIZE.option(int, "--batch-size"), default=8, metavar="N", help="default: 8"
    )
    p.add_argument(
        "--max-batches",
        type=MAX_BATCHES.option(int, "--max-batches"),
        default=None,
        metavar="N",
        help="evaluate at most N batches (default: all)",
    )
    p.add_argument(
        "--seed",
        type=SEED.option(int, "--seed"),
        default=0,
        metavar="N",
        help="seed of the objective's masking (default: 0)",
    )
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    import json

    from plmkit.data import SourceSpec
    from plmkit.evaluate import evaluate_loss
    from plmkit.io import load

    source = SourceSpec(
        path=args.data,
        text_field=args.text_field,
        format=args.format,
        on_error=args.on_error,
        blank_line_documents=args.blank_line_documents,
    )
    model, tokenizer = load(args.checkpoint)
    options: dict[str, Any] = dict(batch_size=args.batch_size, max_batches=args.max_batches, seed=args.seed)
    result = evaluate_loss(
        model, tokenizer, source, args.objective, args.block_size, cache_dir=args.cache_dir, **options
    )
    print(json.dumps({"checkpoint": args.checkpoint, "data": args.data, **result}))
    return 0
