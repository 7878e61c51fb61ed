"""`plm chat CKPT`: a conversation with a saved model in the terminal, or line by line from a pipe."""

from __future__ import annotations

import argparse
import sys

from plmkit.cli.inference import DECODE_DTYPES, MAX_NEW_TOKENS, TOP_K, TOP_P, choice
from plmkit.evaluate.options import SEED
from plmkit.serve.chat import CHAT_TEMPERATURE


def add_chat(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a saved model in the terminal",
        description="Chat with CKPT (a plmkit or Hugging Face folder) through its chat template; the answer "
        "streams as it is written and ends at the template's end-of-turn token. The history stays within "
        "the context window: the oldest turns leave first (the system message stays), with a notice. "
        "Commands: /reset, /system TEXT, /temp X, /help, /quit. Ctrl-C stops an answer; twice in a row at "
        "the prompt quits. From a pipe, each input line gets one answer line: printf 'hi\\nbye\\n' | plm chat "
        "CKPT.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="plmkit checkpoint or Hugging Face model folder")
    p.add_argument(
        "--chat-template",
        default=None,
        metavar="NAME|FILE",
        help="chatml | qwen | llama3 | plain, or a Jinja file (default: the checkpoint's own)",
    )
    p.add_argument("--system", default=None, metavar="TEXT", help="system message (default: none)")
    p.add_argument(
        "--max-new-tokens",
        type=MAX_NEW_TOKENS.option(int, "--max-new-tokens"),
        default=None,
        metavar="N",
        help="longest answer (default: half the context window, at most 512)",
    )
    p.add_argument(
        "--temperature",
        type=CHAT_TEMPERATURE.option(float, "--temperature"),
        default=0.7,
        metavar="T",
        help="sampling temperature, 0 for greedy (default: 0.7)",
    )
    p.add_argument(
        "--top-p",
        type=TOP_P.option(float, "--top-p"),
        default=1.0,
        metavar="P",
        help="nucleus sampling, in (0, 1] (1.0: off)",
    )
    p.add_argument(
        "--top-k",
        type=TOP_K.option(int, "--top-k"),
        default=0,
        metavar="K",
        help="sample from the K best (0: all)",
    )
    p.add_argument(
        "--seed",
        type=SEED.option(int, "--seed"),
        default=None,
        metavar="N",
        help="random seed: the same inputs give the same answers",
    )
    p.add_argument(
        "--dtype",
        type=choice("--dtype", DECODE_DTYPES),
        default="fp32",
        metavar="DTYPE",
        help="weights of the decode steps: fp32 | bf16 | int8 (default: fp32)",
    )
    p.set_defaults(run=_run_chat)


def _run_chat(args: argparse.Namespace) -> int:
    from plmkit.io import load
    from plmkit.serve.chat import ChatSession, chat_loop, checkpoint_chat_template

    model, tokenizer = load(args.checkpoint)  # CheckpointError when CKPT is missing or not a model
    template = checkpoint_chat_template(args.checkpoint, tokenizer, args.chat_template)
    session = ChatSession(
        model,
        tokenizer,
        template,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        dtype=args.dtype,
        system=args.system,
    )
    return chat_loop(session, interactive=sys.stdin.isatty())
