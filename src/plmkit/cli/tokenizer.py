"""`plm tokenizer train`: train a tokenizer on text files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from plmkit.config.fields import Range


def add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenizer",
        help="train a tokenizer",
        description="Tokenizer tools. `plm tokenizer train --help` for training.",
    )
    p.set_defaults(run=lambda args: _print_help(p))  # `plm tokenizer` alone: its help, exit 2
    actions = p.add_subparsers(dest="action", title="actions", metavar="ACTION")
    t = actions.add_parser(
        "train",
        help="train a tokenizer on text files",
        description=(
            "Train a byte-level BPE (GPT-2), WordPiece (Chinese BERT: one token per CJK character) or "
            "Unigram (T5) tokenizer and write tokenizer.json + tokenizer_config.json to --out."
        ),
    )
    t.add_argument(
        "--data",
        nargs="+",
        required=True,
        metavar="PATH",
        help=".txt (a document per line), .jsonl (--text-field), .gz of those, folders, globs",
    )
    t.add_argument(
        "--kind",
        default=None,
        metavar="KIND",
        help="bpe | wordpiece | unigram (default: the family's, else bpe)",
    )
    t.add_argument(
        "--vocab-size",
        type=Range(ge=1).option(int, "--vocab-size"),
        required=True,
        metavar="N",
        help="vocabulary size, special tokens included",
    )
    t.add_argument("--out", required=True, metavar="DIR", help="output folder (a new folder)")
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing tokenizer or non-empty folder at --out (never one holding --data)",
    )
    t.add_argument(
        "--family",
        default=None,
        metavar="NAME",
        help="special tokens of bert | roberta | bart | gpt2 | t5 | glm | llama",
    )
    t.add_argument(
        "--min-frequency",
        type=Range(ge=1).option(int, "--min-frequency"),
        default=2,
        metavar="N",
        help="minimum pair frequency for a merge (bpe, wordpiece; default: 2)",
    )
    t.add_argument("--text-field", default="text", metavar="KEY", help="JSONL field with the text")
    t.add_argument("--cased", action="store_true", help="wordpiece: keep case (default: lowercase)")
    t.add_argument(
        "--sentinels",
        type=Range(ge=0).option(int, "--sentinels"),
        default=100,
        metavar="N",
        help="t5: sentinel count (100)",
    )
    t.set_defaults(run=_run_tokenizer_train)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _run_tokenizer_train(args: argparse.Namespace) -> int:
    from plmkit.data import SourceSpec, iter_documents, resolve_files
    from plmkit.files import check_output_folder, output_folder
    from plmkit.tokenizer import CONFIG_FILE, TOKENIZER_FILE, Tokenizer

    specs = [SourceSpec(path=path, text_field=args.text_field) for path in args.data]
    files = [
        file for spec in specs for file in resolve_files(spec)
    ]  # checked before training: a typo fails at once
    inputs = [*(path for path in args.data if Path(path).exists()), *files]  # a folder of --data too
    check_output_folder(args.out, inputs, args.overwrite, "--out")  # before the (long) training
    texts = (document.text for spec in specs for document in iter_documents(spec))
    tokenizer: Tokenizer = Tokenizer.train(
        texts,
        args.kind,
        vocab_size=args.vocab_size,
        family=args.family,
        min_frequency=args.min_frequency,
        lowercase=not args.cased,
        n_sentinels=args.sentinels,
    )
    with output_folder(args.out, inputs, args.overwrite, "--out") as tmp:
        tokenizer.save(tmp)
    kind = args.kind or type(tokenizer.backend.model).__name__.lower()
    print(
        f"trained {kind} tokenizer, vocab size {tokenizer.vocab_size}, on {len(files)} file(s) -> "
        f"{Path(args.out) / TOKENIZER_FILE} (+ {CONFIG_FILE})"
    )
    return 0
