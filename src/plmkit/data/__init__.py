"""plmkit.data: text sources, the tokenized store, packing, sampling and the pre-training objectives.

The names below load lazily (PEP 562), so that reading a recipe's data section (data.sources) imports no
torch: a bad recipe fails fast.
"""

from __future__ import annotations

from plmkit.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Document": "plmkit.data.sources",
    "DocumentDataset": "plmkit.data.packing",
    "MixtureSampler": "plmkit.data.mixture",
    "PackedDataset": "plmkit.data.packing",
    "BlockRange": "plmkit.data.pipeline",
    "PretrainingData": "plmkit.data.pipeline",
    "iter_source_texts": "plmkit.data.pipeline",
    "ResumableSampler": "plmkit.data.sampler",
    "SkipReport": "plmkit.data.sources",
    "SourceSpec": "plmkit.data.sources",
    "TokenStore": "plmkit.data.store",
    "build_pretraining_data": "plmkit.data.pipeline",
    "default_cache_dir": "plmkit.data.store",
    "iter_documents": "plmkit.data.sources",
    "packed_blocks": "plmkit.data.pipeline",
    "resolve_files": "plmkit.data.sources",
}
__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
