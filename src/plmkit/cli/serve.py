"""`plm serve CKPT`: an OpenAI-compatible server with continuous batching (plmkit.serve)."""

from __future__ import annotations

import argparse

from plmkit.cli.inference import DECODE_DTYPES, choice
from plmkit.serve.settings import LIMIT, MAX_BATCH, MAX_BODY_BYTES, MAX_QUEUE, PORT, ServeSettings

DEFAULTS = ServeSettings()


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server for a checkpoint (needs the serve extra)",
        description="Serve CKPT (a plmkit or Hugging Face causal LM folder) behind the OpenAI API: "
        "/v1/completions and /v1/chat/completions (streaming with stream: true), /v1/models, /health, "
        "/metrics, /tokenize, /detokenize, /tokenizer_info, and a chat page at /. Concurrent requests are "
        "decoded together (continuous batching). Listens on 127.0.0.1 only unless --host says otherwise.",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="plmkit checkpoint or Hugging Face model folder")
    p.add_argument("--host", default=DEFAULTS.host, help=f"address to listen on (default: {DEFAULTS.host})")
    p.add_argument(
        "--port",
        type=PORT.option(int, "--port"),
        default=DEFAULTS.port,
        metavar="N",
        help=f"default: {DEFAULTS.port} (0: a free port, printed at start)",
    )
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help="require `Authorization: Bearer KEY` on /v1 and the tokenizer routes (default: none)",
    )
    p.add_argument(
        "--served-model-name",
        default=None,
        metavar="NAME",
        help="the model name clients send (default: the folder's name)",
    )
    p.add_argument(
        "--chat-template",
        default=None,
        metavar="NAME|FILE",
        help="chat template instead of the checkpoint's: chatml | qwen | llama3 | plain or a Jinja file",
    )
    p.add_argument(
        "--max-batch",
        type=MAX_BATCH.option(int, "--max-batch"),
        default=DEFAULTS.max_batch,
        metavar="N",
        help=f"sequences decoded together (default: {DEFAULTS.max_batch})",
    )
    p.add_argument(
        "--max-queue",
        type=MAX_QUEUE.option(int, "--max-queue"),
        default=DEFAULTS.max_queue,
        metavar="N",
        help=f"prompts waiting for a slot before requests get 429 (default: {DEFAULTS.max_queue})",
    )
    p.add_argument(
        "--max-model-len",
        type=LIMIT.option(int, "--max-model-len"),
        default=None,
        metavar="N",
        help="context window: prompt + new tokens (default: the model's max_positions)",
    )
    p.add_argument(
        "--max-tokens",
        type=LIMIT.option(int, "--max-tokens"),
        default=DEFAULTS.max_tokens,
        metavar="N",
        help=f"the largest max_tokens a request may ask (default: {DEFAULTS.max_tokens})",
    )
    p.add_argument(
        "--max-prompt-tokens",
        type=LIMIT.option(int, "--max-prompt-tokens"),
        default=None,
        metavar="N",
        help="the longest prompt accepted (default: the context window)",
    )
    p.add_argument(
        "--max-n",
        type=LIMIT.option(int, "--max-n"),
        default=DEFAULTS.max_n,
        metavar="N",
        help=f"choices per prompt, n (default: {DEFAULTS.max_n}, at most --max-batch)",
    )
    p.add_argument(
        "--max-prompts",
        type=LIMIT.option(int, "--max-prompts"),
        default=DEFAULTS.max_prompts,
        metavar="N",
        help=f"prompts in one /v1/completions request (default: {DEFAULTS.max_prompts})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=MAX_BODY_BYTES.option(int, "--max-body-bytes"),
        default=DEFAULTS.max_body_bytes,
        metavar="N",
        help=f"larger request bodies get 413 (default: {DEFAULTS.max_body_bytes})",
    )
    p.add_argument(
        "--dtype",
        type=choice("--dtype", DECODE_DTYPES),
        default="fp32",
        metavar="DTYPE",
        help="weights of the decode steps: fp32 (the model's own) | bf16 | int8 (weight-only); default: fp32",
    )
    p.add_argument(
        "--threads",
        type=LIMIT.option(int, "--threads"),
        default=None,
        metavar="N",
        help="torch threads of the decoding thread (default: torch's)",
    )
    p.add_argument(
        "--log-level",
        type=choice("--log-level", ("critical", "error", "warning", "info", "debug")),
        default="warning",
        metavar="LEVEL",
        help="uvicorn's log level: info logs each request (default: warning)",
    )
    p.set_defaults(run=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from plmkit.serve.server import check_extra, serve

    check_extra()  # before torch loads: the missing extra is the first thing said
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    settings = ServeSettings(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        max_body_bytes=args.max_body_bytes,
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        max_n=args.max_n,
        max_prompts=args.max_prompts,
    )
    serve(
        args.checkpoint,
        settings,
        name=args.served_model_name,
        chat_template=args.chat_template,
        max_len=args.max_model_len,
        dtype=args.dtype,
        log_level=args.log_level,
    )
    return 0
