"""plmkit.peft: parameter-efficient tuning — LoRA, bottleneck adapters, BitFit, prompt and prefix tuning.

    model = plmkit.peft.apply(model, method="lora", r=8, target="attn.qkv")   # base frozen
    print(plmkit.peft.trainable_report(model))      # gpt2-small: trainable: 294,912 / total: 124,734,720 (0.2364%)
    ... train as usual (only requires_grad parameters change) ...
    plmkit.peft.save_adapter(model, "out/adapter")  # a small folder; the base stays where it is
    model = plmkit.peft.load_adapter(base, "out/adapter")
    plmkit.peft.merge(model)                        # LoRA folded into the weights; unmerge() undoes it
    plmkit.peft.export_peft(model, "out/peft", base_directory="out/hf")   # for transformers + peft

Methods and their options (all JSON values; `train_head` for every method: also train a task head
such as SequenceClassifier's classifier in full; default True for task models, False otherwise):
  lora     r=8, alpha=2r, dropout=0.0, target="attn.qkv", rslora=False            (lora.py)
  adapter  kind="houlsby"|"pfeiffer", size=d_model//reduction, reduction=16, activation="gelu"  (adapter.py)
  bitfit   (biases only)                                                            (bitfit.py)
  prompt   n_tokens=20, init_text=None (+ tokenizer=...), init_ids=None             (prompt.py)
  prefix   n_tokens=20, projection=True, hidden=d_model, cross_attention=True; with projection=False
           (P-tuning v2) also init_text (+ tokenizer), init_ids                       (prefix.py)
LoRA, adapters, BitFit and prefix tuning change the model in place; prompt tuning returns a wrapper:
always use the returned model. `fold(model)` folds prefix-tuning's MLP away for inference.

In a recipe: `peft: {method: lora, r: 8, target: all-linear}` (see `apply_spec`). A PEFT model saved
with plmkit.save (every training checkpoint) loads back as the same PEFT model, and its folder also
holds the adapter (save_adapter's files), so load_adapter and `plm merge-lora` read it directly.
"""

from plmkit.peft.adapter import AdapterLinear
from plmkit.peft.base import (
    PeftConfig,
    get_config,
    mark_only_peft_trainable,
    peft_parameter_names,
    trainable_report,
)
from plmkit.peft.disable import adapters_off
from plmkit.peft.export import export_peft
from plmkit.peft.io import load_adapter, save_adapter
from plmkit.peft.lora import LoRALinear
from plmkit.peft.methods import METHOD_OPTIONS, METHODS, apply, apply_spec, merge, unmerge
from plmkit.peft.prefix import PrefixEncoder, fold
from plmkit.peft.prompt import PromptTunedModel
from plmkit.peft.qlora import MergeReport

__all__ = [
    "METHODS",
    "METHOD_OPTIONS",
    "AdapterLinear",
    "LoRALinear",
    "MergeReport",
    "PeftConfig",
    "PrefixEncoder",
    "PromptTunedModel",
    "adapters_off",
    "apply",
    "apply_spec",
    "export_peft",
    "fold",
    "get_config",
    "load_adapter",
    "mark_only_peft_trainable",
    "merge",
    "peft_parameter_names",
    "save_adapter",
    "trainable_report",
    "unmerge",
]
