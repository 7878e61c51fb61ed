"""`plm embed`: sentence embeddings of texts with a bare encoder (e.g. a sentence-transformers folder)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from plmkit.config.fields import Range

OUT_SUFFIXES = (".jsonl", ".npy")


def add_embed(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "embed",
        help="sentence embeddings of texts",
        description=(
            "Embed texts with a bare encoder: a sentence-transformers or Hugging Face BertModel folder, or "
            "a plmkit checkpoint of one. Pooling and normalisation follow the checkpoint (modules.json) "
            "unless overridden. Prints one JSON array per text, in input order."
        ),
    )
    p.add_argument("checkpoint", metavar="CKPT", help="plmkit checkpoint or Hugging Face folder")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", nargs="+", metavar="T", help="the texts to embed")
    source.add_argument("--file", metavar="F", help="a text file, one text per line")
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="L2-normalise the vectors (default: as the checkpoint says)",
    )
    p.add_argument(
        "--pooling",
        default=None,
        metavar="MODE",
        help="mean | cls | max | mean_sqrt_len | weightedmean | last (default: as the checkpoint says, else mean)",
    )
    p.add_argument(
        "--batch-size",
        type=Range(ge=1).option(int, "--batch-size"),
        default=32,
        metavar="N",
        help="default: 32",
    )
    p.add_argument("--out", metavar="FILE", help="write the vectors to FILE.jsonl or FILE.npy instead")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(run=_run_embed)


def _check_out(out: str | None, overwrite: bool) -> Path | None:
    """Checked before any work: a bad --out fails at once, not after the model ran."""
    from plmkit.errors import ConfigError

    if out is None:
        return None
    path = Path(out)
    if path.suffix not in OUT_SUFFIXES:
        raise ConfigError(f"--out {out}: unknown format {path.suffix!r}; use a .jsonl or .npy file name")
    if path.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name ending in .jsonl or .npy")
    if path.exists() and not overwrite:
        raise ConfigError(
            f"--out {out} already exists; add --overwrite to replace it, or choose another name"
        )
    if not path.parent.is_dir():
        raise ConfigError(f"--out {out}: folder {path.parent} does not exist; create it first")
    return path


def _read_texts(args: argparse.Namespace) -> list[str]:
    from plmkit.errors import DataError

    if args.text is not None:
        return list(args.text)
    path = Path(args.file)
    if not path.is_file():
        raise DataError(f"--file {args.file} does not exist")
    try:
        texts = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"--file {args.file} is not UTF-8 text: {e}") from e
    if not texts:
        raise DataError(f"--file {args.file} is empty; give one text per line")
    return texts


def _run_embed(args: argparse.Namespace) -> int:
    from plmkit.errors import CheckpointError, ConfigError
    from plmkit.io import load
    from plmkit.model.heads import embed_texts

    out = _check_out(args.out, args.overwrite)
    if out is not None and args.file is not None and Path(args.file).resolve() == out.resolve():
        raise ConfigError(
            f"--out {args.out} is the input --file: choose another file (--overwrite does not apply)"
        )
    texts = _read_texts(args)
    model, tokenizer = load(args.checkpoint)
    if tokenizer is None:
        raise CheckpointError(f"{args.checkpoint} has no tokenizer; embedding texts needs one")
    vectors = embed_texts(model, tokenizer, texts, args.pooling, args.normalize, args.batch_size)
    if out is None:
        for row in vectors.tolist():
            print(json.dumps(row))
        return 0
    _write(out, vectors)
    print(f"{len(texts)} vectors of size {vectors.shape[1]} -> {out}", file=sys.stderr)
    return 0


def _write(path: Path, vectors) -> None:
    """Atomically (plmkit.files.atomic_file), so a crash never leaves half a file."""
    from plmkit.files import atomic_file

    with atomic_file(path) as f:
        if path.suffix == ".npy":
            import numpy as np

            np.save(f, vectors.numpy())
        else:
            f.writelines((json.dumps(row) + "\n").encode() for row in vectors.tolist())
