"""plmkit.data: text sources, the tokenized store, packing, sampling and the pre-training objectives."""

from plmkit.data.mixture import MixtureSampler
from plmkit.data.packing import DocumentDataset, PackedDataset
from plmkit.data.pipeline import (
    BlockRange,
    PretrainingData,
    build_pretraining_data,
    iter_source_texts,
    packed_blocks,
)
from plmkit.data.sampler import ResumableSampler
from plmkit.data.sources import Document, SkipReport, SourceSpec, iter_documents, resolve_files
from plmkit.data.store import TokenStore, default_cache_dir

__all__ = [
    "BlockRange",
    "Document",
    "DocumentDataset",
    "MixtureSampler",
    "PackedDataset",
    "PretrainingData",
    "ResumableSampler",
    "SkipReport",
    "SourceSpec",
    "TokenStore",
    "build_pretraining_data",
    "default_cache_dir",
    "iter_source_texts",
    "iter_documents",
    "packed_blocks",
    "resolve_files",
]
