"""`plm demo` / `make demo`: train a byte-level BPE tokenizer and a small GPT on real English text,
then generate from it — on a laptop CPU, with nothing downloaded.

The default corpus is the Python language reference that ships with every CPython
(`pydoc_data.topics`); `data=PATH` points it at your own UTF-8 text. The loop below is deliberately
plain PyTorch (batch → forward → loss → backward → clip → step); the trainer recipes build on it.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from plmkit.errors import DataError
from plmkit.generate import generate
from plmkit.io import save
from plmkit.model import CausalLM, ModelConfig
from plmkit.tokenizer import Tokenizer


def load_corpus(data: str | None) -> str:
    if data is None:
        from pydoc_data import topics

        return "\n\n".join(topics.topics[name] for name in sorted(topics.topics))
    path = Path(data)
    if not path.is_file():
        raise DataError(f"{data}: no such file; pass data=PATH to a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{data}: not valid UTF-8 at byte {e.start}; convert the file to UTF-8") from None
    if len(text.strip()) < 1000:
        raise DataError(f"{data}: only {len(text.strip())} characters of text; the demo needs at least 1000")
    return text


@torch.no_grad()
def perplexity(model: CausalLM, tokens: torch.Tensor, block: int, batch: int = 16) -> float:
    """exp(mean next-token loss) over all full blocks of a held-out token stream."""
    model.eval()
    n_blocks = (len(tokens) - 1) // block
    blocks = tokens[: n_blocks * block].view(n_blocks, block)
    total, count = 0.0, 0
    for i in range(0, n_blocks, batch):
        ids = blocks[i : i + batch]
        loss = model(ids, labels=ids).loss
        total += loss.item() * ids.numel()
        count += ids.numel()
    model.train()
    return math.exp(total / count)


def run_demo(
    steps: int = 600,
    out: str = "runs/demo",
    data: str | None = None,
    seed: int = 0,
    vocab_size: int = 4096,
    block: int = 128,
    batch: int = 16,
    log_every: int = 50,
) -> dict[str, float]:
    torch.manual_seed(seed)
    text = load_corpus(data)
    split = int(len(text) * 0.95)
    print(f"corpus: {len(text):,} characters ({'pydoc_data.topics' if data is None else data})")

    tokenizer = Tokenizer.train_bpe([text[:split]], vocab_size=vocab_size)
    train = torch.tensor(tokenizer.encode(text[:split]), dtype=torch.long)
    val = torch.tensor(tokenizer.encode(text[split:]), dtype=torch.long)
    print(
        f"tokenizer: byte-level BPE, {tokenizer.vocab_size:,} tokens; train {len(train):,} / val {len(val):,} tokens"
    )

    config = ModelConfig(
        family="causal",
        vocab_size=tokenizer.vocab_size,
        d_model=192,
        n_layer=4,
        n_head=6,
        d_ff=768,
        max_positions=block,
        activation="gelu_tanh",
        pad_token_id=tokenizer.pad_id,
        eos_token_id=tokenizer.eos_id,
        dropout=0.0,
    )
    model = CausalLM(config)
    print(f"model: GPT, {model.num_parameters():,} parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    ppl_before = perplexity(model, val, block)
    print(f"validation perplexity before training: {ppl_before:,.1f}")

    start = time.time()
    for step in range(steps):
        starts = torch.randint(0, len(train) - block - 1, (batch,))
        ids = torch.stack([train[s : s + block] for s in starts])
        for group in optimizer.param_groups:
            group["lr"] = 3e-3 * lr_at(step)
        loss = model(ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % log_every == 0 or step == steps - 1:
            elapsed = time.time() - start
            tok_s = (step + 1) * batch * block / max(elapsed, 1e-9)
            eta = elapsed / (step + 1) * (steps - step - 1)
            print(
                f"step {step:5d}/{steps}  loss {loss.item():.3f}  {tok_s:,.0f} tok/s  eta {eta:4.0f}s",
                flush=True,
            )

    ppl_after = perplexity(model, val, block)
    print(f"validation perplexity after training: {ppl_after:,.1f} ({ppl_before / ppl_after:.1f}x lower)")
    save(model, tokenizer, out)
    print(f'checkpoint: {out}  (try: plm generate --model {out} --prompt "The for statement")')
    for prompt in ("The for statement", "A class definition"):
        completion = generate(
            model, tokenizer, prompt, max_new_tokens=40, do_sample=True, top_k=40, seed=seed
        )
        print(f"--- sample: {prompt}{completion}")
    return {"ppl_before": ppl_before, "ppl_after": ppl_after}
