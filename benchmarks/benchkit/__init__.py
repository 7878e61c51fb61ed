"""The benchmark harness behind `make bench` / `python benchmarks/run.py` (see run.py).

contention.py  /proc/stat samples -> others_share, steal_share; waiting for a quiet second
rounds.py      warm-up, interleaved rounds with rotating order, median of per-round ratios
limits.py      the machine: CPU, flags, versions; GEMM peak per dtype, read bandwidth, matrix-vector rates
models.py      the same weights on both sides: transformers built, save_pretrained, plmkit.load_hf; checks
decode.py      decoding rows (GPT-2, LLaMA, T5; fp32 / bf16 / int8; time to first token; 124M shape)
train.py       training-step rows (GPT-2, LLaMA, BERT MLM, T5, BART, LoRA; fp32 / bf16), MFU, matmul bound
memory.py      peak RSS of a checkpointed step (subprocesses); step time and memory against length and width
report.py      the JSON, the Markdown table and the PNG; result_path: every experiment's dated, never-overwritten file name
"""
