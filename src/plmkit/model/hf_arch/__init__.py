"""Hugging Face architectures, one readable table each: config fields and weight names.

Each architecture gives
  to_config(hf)   : transformers' config.json dict -> ModelConfig
  from_config(c)  : ModelConfig -> config.json dict (for export)
  weights(c, head): the rules mapping plmkit parameter names to Hugging Face names.
A rule's `theirs` lists one name, or several that are concatenated along dim 0 into one of our fused
tensors (q|k|v -> qkv, k|v -> cross kv, gate|up -> fc_in). GPT-2's Conv1D stores weights transposed.

rules.py holds Rule and Architecture; decoders.py, encoders.py, seq2seq.py and moe.py (Mixtral,
Qwen2-MoE: per-expert tensors stacked into our (E, out, in) ones) the tables per family.
"""

from __future__ import annotations

from plmkit.model.hf_arch.decoders import GPT2, LLAMA, QWEN2
from plmkit.model.hf_arch.encoders import BERT, ROBERTA
from plmkit.model.hf_arch.moe import MIXTRAL, QWEN2_MOE
from plmkit.model.hf_arch.rules import Architecture
from plmkit.model.hf_arch.seq2seq import BART, T5

ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a for a in (GPT2, BERT, ROBERTA, BART, T5, LLAMA, QWEN2, MIXTRAL, QWEN2_MOE)
}
