"""The tokenized store: every document tokenized once, kept on disk as one flat memory-mapped array.

    store = TokenStore.build([SourceSpec("wiki/")], tokenizer)   # tokenizes, or reuses the cache
    store.tokens            # np.memmap (num_tokens,) uint16 (vocab <= 65536) or uint32
    store.offsets           # int64 (num_documents + 1,): document i is tokens[offsets[i]:offsets[i+1]]
    store.document(3)       # the ids of document 3 (ending with eos when built with add_eos=True)

A store lives in `<cache_dir>/<name>-<key>/` as `tokens.bin`, `offsets.bin` (raw arrays) and
`header.json` (counts, dtype, per-source counts, what was skipped, SHA-256 of both arrays). The key
hashes everything the tokens depend on: each file's path, size and modification time, the tokenizer
(its full tokenizer.json), the settings and FORMAT_VERSION. So a second build with the same inputs
reads the cache without tokenizing, and touching any input builds a new store. A store is written
into a temporary folder and renamed into place, so a killed build never leaves a half store behind;
a store that is truncated or garbled anyway fails the size/checksum check and is rebuilt.

Tokenization runs `encode_batch` on chunks of documents; the Rust backend spreads each chunk over all
cores (measured on 2 cores: as fast as a 2-process pool, without its start-up and copying, so there
is no process pool). Set RAYON_NUM_THREADS to limit the threads.

Distributed training: build on rank 0 first and the other ranks after a barrier (they hit the cache).
Ranks building at once all tokenize, but the rename keeps the result correct.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from plmkit.data.progress import Progress
from plmkit.data.sources import SkipReport, SourceSpec, iter_documents, resolve_files
from plmkit.errors import ConfigError, DataError

FORMAT_VERSION = 1  # bump when the bytes of a store change meaning: old caches are then ignored
TOKENS_FILE, OFFSETS_FILE, HEADER_FILE = "tokens.bin", "offsets.bin", "header.json"
CHUNK_DOCUMENTS = 4096  # documents per encode_batch call (big enough to keep every core busy)
CHUNK_CHARS = 16_000_000  # ... or fewer, when documents are long (bounds memory)


def default_cache_dir() -> Path:
    """$PLMKIT_CACHE, else `.cache/plmkit` under the working directory (the project)."""
    return Path(os.environ.get("PLMKIT_CACHE") or Path.cwd() / ".cache" / "plmkit")


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class TokenStore:
    """A tokenized corpus on disk: `tokens` (memmap), `offsets`, per-source counts. Read-only."""

    def __init__(self, directory: Path, header: dict[str, Any], tokens: np.ndarray, offsets: np.ndarray):
        self.directory, self.header = directory, header
        self.tokens, self.offsets = tokens, offsets

    # ---- reading ----------------------------------------------------------------------------------
    num_tokens = property(lambda self: int(self.header["num_tokens"]))
    num_documents = property(lambda self: int(self.header["num_documents"]))
    add_eos = property(lambda self: bool(self.header["add_eos"]))  # each document ends with eos_id
    eos_id = property(lambda self: self.header["eos_id"])
    vocab_size = property(lambda self: int(self.header["vocab_size"]))
    sources = property(lambda self: self.header["sources"])  # [{path, files, num_documents, num_tokens}]
    skipped = property(lambda self: SkipReport.from_dict(self.header["skipped"]))

    def __len__(self) -> int:
        return self.num_documents

    def document(self, i: int) -> np.ndarray:
        """The token ids of document i (a view into the memmap; copy before modifying)."""
        if not -self.num_documents <= i < self.num_documents:
            raise IndexError(f"document {i} out of range: the store has {self.num_documents}")
        i %= self.num_documents
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def document_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __repr__(self) -> str:
        return (
            f"TokenStore({self.directory.name}: {self.num_documents} documents, {self.num_tokens} tokens, "
            f"{self.tokens.dtype})"
        )

    @classmethod
    def open(cls, directory: str | Path, verify: bool = True) -> TokenStore:
        """Open a store; DataError when it is incomplete or corrupt. `verify` checks the SHA-256 sums
        (reads every byte, about a second per GB); without it only sizes and offsets are checked."""
        directory = Path(directory)
        try:
            header = json.loads((directory / HEADER_FILE).read_text(encoding="utf-8"))
            dtype = np.dtype(header["dtype"])
            n_tokens, n_docs = int(header["num_tokens"]), int(header["num_documents"])
            if header["format"] != FORMAT_VERSION:
                raise DataError(f"format {header['format']}, expected {FORMAT_VERSION}")
            sums = header["tokens_sha256"], header["offsets_sha256"]
        except FileNotFoundError as e:
            raise DataError(f"{directory}: not a token store ({e.filename} is missing)") from e
        except (
            ValueError,
            KeyError,
            TypeError,
        ) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise DataError(f"{directory / HEADER_FILE}: garbled header ({e!r})") from e
        files = [
            (directory / TOKENS_FILE, n_tokens * dtype.itemsize, sums[0]),
            (directory / OFFSETS_FILE, (n_docs + 1) * 8, sums[1]),
        ]
        for path, size, digest in files:
            actual = path.stat().st_size if path.is_file() else None
            if actual != size:
                raise DataError(f"{path}: {actual} bytes, expected {size} (truncated or incomplete)")
            if verify and _sha256_file(path) != digest:
                raise DataError(f"{path}: checksum mismatch (the file is corrupt)")
        tokens = (
            np.memmap(directory / TOKENS_FILE, dtype=dtype, mode="r", shape=(n_tokens,))
            if n_tokens
            else np.zeros(0, dtype)
        )  # mmap cannot map an empty file
        offsets = np.fromfile(directory / OFFSETS_FILE, dtype=np.int64)
        if offsets[0] != 0 or offsets[-1] != n_tokens or (n_docs and np.any(np.diff(offsets) < 0)):
            raise DataError(f"{directory / OFFSETS_FILE}: inconsistent document offsets")
        return cls(directory, header, tokens, offsets)

    # ---- building ---------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        sources: Sequence[SourceSpec] | SourceSpec,
        tokenizer: Any,
        cache_dir: str | Path | None = None,
        *,
        add_eos: bool = True,
        progress: bool | None = None,
        verify: bool = True,
    ) -> TokenStore:
        """Tokenize `sources` (in order) into a store under `cache_dir`, or reuse the cached one.

        `tokenizer` is a plmkit Tokenizer (anything with encode_batch, vocab_size, eos_id and a
        tokenizers `backend`). `add_eos` appends the tokenizer's eos to every document (the separator
        packing needs). `progress`: a progress bar on stderr; None shows it for inputs over 16 MB when
        stderr is a terminal. `verify`: checksum a cached store before reusing it.
        """
        specs = [sources] if isinstance(sources, SourceSpec) else list(sources)
        if not specs:
            raise ConfigError("no data sources given")
        files = [resolve_files(spec) for spec in specs]  # fails early on a bad path
        eos_id = tokenizer.eos_id if add_eos else None
        if add_eos and eos_id is None:
            raise ConfigError(
                "add_eos=True needs a tokenizer with an eos token; add one or pass add_eos=False"
            )
        cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        key = cache_key(specs, files, tokenizer, add_eos)
        directory = cache_dir / f"{_slug(specs[0].path)}-{key[:20]}"
        if directory.exists():
            try:
                store = cls.open(directory, verify=verify)
                _print_skipped(store.skipped, cached=True)
                return store
            except DataError as e:
                print(f"plmkit: the cached token store is unusable ({e}); rebuilding it", file=sys.stderr)
                shutil.rmtree(directory, ignore_errors=True)
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            tmp = cache_dir / f".{directory.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
        except OSError as e:
            raise DataError(
                f"cannot write the token cache to {cache_dir} ({e.strerror}); "
                "set cache_dir or $PLMKIT_CACHE to a writable folder"
            ) from e
        try:
            header = _tokenize_into(tmp, specs, files, tokenizer, eos_id, progress)
            header.update(key=key, created=time.strftime("%Y-%m-%d %H:%M:%S"))
            _write_json(tmp / HEADER_FILE, header)  # last: a folder with a header is complete
            _publish(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        store = cls.open(directory, verify=False)
        _print_skipped(store.skipped, cached=False)
        return store


def cache_key(
    specs: Sequence[SourceSpec], files: Sequence[Sequence[Path]], tokenizer: Any, add_eos: bool
) -> str:
    """SHA-256 of everything the tokens depend on (weights do not: they only matter for sampling)."""
    described = []
    for spec, paths in zip(specs, files):
        stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
        described.append(
            {
                "files": stats,
                "text_field": spec.text_field,
                "format": spec.format,
                "on_error": spec.on_error,
                "blank_line_documents": spec.blank_line_documents,
            }
        )
    key = {
        "format": FORMAT_VERSION,
        "sources": described,
        "add_eos": add_eos,
        "eos_id": tokenizer.eos_id if add_eos else None,
        "tokenizer": hashlib.sha256(tokenizer.backend.to_str().encode("utf-8")).hexdigest(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def _tokenize_into(
    folder: Path,
    specs: Sequence[SourceSpec],
    files: Sequence[Sequence[Path]],
    tokenizer: Any,
    eos_id: int | None,
    progress: bool | None,
) -> dict[str, Any]:
    """Tokenize every document into folder/tokens.bin + offsets.bin; return the header (no key yet)."""
    dtype = token_dtype(tokenizer.vocab_size)
    total_bytes = sum(p.stat().st_size for paths in files for p in paths)
    bar = Progress(total_bytes, progress)
    report = SkipReport()
    lengths: list[np.ndarray] = []
    tokens_hash = hashlib.sha256()
    n_tokens = 0
    per_source = []
    with open(folder / TOKENS_FILE, "wb") as out:

        def flush(texts: list[str]) -> int:
            nonlocal n_tokens
            ids = tokenizer.encode_batch(texts)
            sizes = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(sizes.sum()))
            if eos_id is not None:  # after each document: before the index where the next one starts
                flat = np.insert(flat, np.cumsum(sizes), eos_id)
                sizes += 1
            data = flat.tobytes()
            out.write(data)
            tokens_hash.update(data)
            lengths.append(sizes)
            n_tokens += len(flat)
            bar.update(documents=len(texts), tokens=len(flat))
            return len(flat)

        for spec, paths in zip(specs, files):
            texts: list[str] = []
            chars = docs = source_tokens = 0
            for doc in iter_documents(spec, report, bar.advance):
                texts.append(doc.text)
                chars += len(doc.text)
                if len(texts) >= CHUNK_DOCUMENTS or chars >= CHUNK_CHARS:
                    source_tokens += flush(texts)
                    docs, texts, chars = docs + len(texts), [], 0
            if texts:
                source_tokens += flush(texts)
                docs += len(texts)
            per_source.append(
                {"path": spec.path, "files": len(paths), "num_documents": docs, "num_tokens": source_tokens}
            )
        out.flush()
        os.fsync(out.fileno())
    bar.close()
    n_docs = sum(s["num_documents"] for s in per_source)
    if n_docs == 0:
        raise DataError(f"no documents in {', '.join(s.path for s in specs)} ({report})")
    offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)
    offsets.tofile(folder / OFFSETS_FILE)
    return {
        "format": FORMAT_VERSION,
        "dtype": dtype.name,
        "num_tokens": n_tokens,
        "num_documents": n_docs,
        "add_eos": eos_id is not None,
        "eos_id": eos_id,
        "vocab_size": tokenizer.vocab_size,
        "sources": per_source,
        "skipped": report.to_dict(),
        "tokens_sha256": tokens_hash.hexdigest(),
        "offsets_sha256": hashlib.sha256(offsets.tobytes()).hexdigest(),
    }


def _publish(tmp: Path, directory: Path) -> None:
    """Rename the finished temporary folder into place (atomic). If another process published the
    same store meanwhile, keep theirs when it is valid."""
    try:
        os.replace(tmp, directory)
    except OSError:  # the target exists and is not empty
        try:
            TokenStore.open(directory, verify=False)
            return
        except DataError:
            shutil.rmtree(directory, ignore_errors=True)
            os.replace(tmp, directory)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.flush()
        os.fsync(f.fileno())


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(16 << 20):
            digest.update(block)
    return digest.hexdigest()


def _slug(path: str) -> str:
    """A readable folder name from a source path (the hash makes it unique)."""
    name = Path(path.rstrip("/*")).name or "data"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:40]


def _print_skipped(report: SkipReport, cached: bool) -> None:
    for line in report.lines():
        print(f"plmkit: {line}{' (cached store)' if cached else ''}", file=sys.stderr)
