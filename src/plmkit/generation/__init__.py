"""Text generation: greedy, sampling (temperature, top-k, top-p), beam search, streaming, KV cache.

    generate(model, tokenizer, "Once upon a time")          -> the new text (greedy)
    stream(model, tokenizer, prompt, do_sample=True)        -> the new text, piece by piece
    generate_ids(model, input_ids, attention_mask)          -> the new token ids (B, N)
    generate_ids(..., return_logprobs=True)                 -> GenerationOutput: ids, log-probs, mask

Generation never changes the model (no train/eval switch, no flags, no installed tensors): threads
may generate from one model at once, and beside training. config.py holds the options, decoder.py
the model calls, sampling.py and beam.py the two search loops, ids.py and text.py the entry points.
"""

from plmkit.generation.config import GenerationConfig
from plmkit.generation.ids import GenerationOutput, generate_ids
from plmkit.generation.text import generate, stream

__all__ = ["GenerationConfig", "GenerationOutput", "generate", "generate_ids", "stream"]
