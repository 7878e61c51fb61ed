"""plmkit.quant: int8 and 4-bit (NF4) weight quantization for inference and QLoRA.

    model = plmkit.quant.quantize(model, "int8")        # weight-only int8, per output channel
    model = plmkit.quant.quantize(model, "int8-dynamic")  # + int8 activations per token (int8 x int8)
    model = plmkit.quant.quantize(model, "nf4")         # QLoRA's 4-bit NormalFloat, blocks of 64
    print(plmkit.quant.report(model))   # int8: 8 linear layers, 2 embedding tables; weights 2.15 MB -> 0.58 MB (3.7x smaller)
    plmkit.save(model, tokenizer, "out/int8")            # int8 / uint8 tensors; plmkit.load rebuilds it
    model = plmkit.peft.apply(model, "lora", r=8, target="all-linear")   # QLoRA: LoRA on the frozen base
    plmkit.quant.dequantize(model)                       # float layers again (the quantized values)

`backend="bitsandbytes"` multiplies with bitsandbytes' LLM.int8 / 4-bit kernels on the same tensors
(`pip install 'plmkit[quant]'`; fast on CUDA). A quantized model is frozen: building an optimizer for it
without PEFT is an error. Formats: formats.py; layers and kernels: modules.py; model level: apply.py.
"""

from __future__ import annotations

from plmkit.quant.apply import (
    MODES,
    QuantConfig,
    QuantReport,
    check_trainable,
    dequantize,
    is_quantized,
    quant_config,
    quantize,
    rebuild,
    report,
)
from plmkit.quant.modules import (
    QuantEmbedding,
    QuantLinear,
    QuantSpec,
    dequantize_weight,
    float_dtype,
    linear,
    requantize_,
)

__all__ = [
    "MODES",
    "QuantConfig",
    "QuantEmbedding",
    "QuantLinear",
    "QuantReport",
    "QuantSpec",
    "check_trainable",
    "dequantize",
    "dequantize_weight",
    "float_dtype",
    "is_quantized",
    "linear",
    "quant_config",
    "quantize",
    "rebuild",
    "report",
    "requantize_",
]
