"""Continuous batching: one decoding thread owns the model; at every decoding step the sequences that have
finished leave the batch and waiting ones join it (after their prompt's forward), each with its own
sampling settings, random generator, stop strings and token limit.

    batcher = Batcher(served, max_batch=16, max_queue=256)
    ticket = batcher.submit([prompt_ids], n=1, params=SamplingParams(max_tokens=64), sink=callback)
    # callback(Update) from the decoding thread: new tokens and text of one choice, its finish at the end
    ticket.cancel()                                     # a client that left: its slots are free next step

Slots. The keys and values live in one StaticCache of (rows, n_kv, max_len, hd) per block; the running
sequences occupy rows 0..B-1, each from column 0 with its own length (no padding: a sequence's position is
its column). A step feeds every running sequence its last token through generation/engine.py's decode step
with per-row columns (each row writes at its own length and attends over its own columns). A sequence that
ends gives its row to the last running one (copied over), so the running rows stay 0..B-1.

A new sequence's prefill: its prompt runs once through the model's forward (batch 1, as plmkit.generation
prefills) with a cache whose buffers are views of its slot, so the keys land where the steps read them; its
first token is chosen from the last position's logits. With n > 1 the prompt's forward runs once and its
columns are copied to the other n - 1 slots. Prefills run between steps (a long prompt delays that step).

Greedy outputs do not change with load: a row's logits do not depend on the other rows. Attention runs per
row over its own columns, and a step of fewer than MIN_ROWS rows is padded to MIN_ROWS with idle rows: the
CPU GEMM (MKL) computes a row of x @ W identically for any batch of 4 or more rows, while 1 to 3 rows take
another kernel whose rounding differs (tests/serve/test_batcher.py checks it on the machine at hand). With
max_batch=1 there is no other row, so nothing is padded.
"""

from __future__ import annotations

import secrets
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from plmkit.generation import engine
from plmkit.generation.config import GenerationConfig
from plmkit.generation.sampling import filter_for_sampling
from plmkit.generation.text import _find_stop, _held_back
from plmkit.generation.weights import compute_dtype, prefill_autocast
from plmkit.model.dropout import dropout_off
from plmkit.model.kv_cache import StaticCache
from plmkit.serve.served import ServedModel

MIN_ROWS = 4  # see the module docstring: rows of a step, at least, when max_batch > 1
LOGIT_ROWS = 256  # prompt log-probs are computed this many positions at a time (bounded (rows, V) memory)
TopLogprobs = list[tuple[int, float]]  # the k likeliest (token, log-prob), best first


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding settings (the OpenAI fields, checked by the API layer)."""

    max_tokens: int = 16  # new tokens at most (0: none, the prompt only: echo)
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: all tokens
    seed: int | None = None  # choice k samples with a generator seeded seed + k
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # None: none; k: each new token's log-prob and the k likeliest
    prompt_logprobs: int | None = None  # echo: the same for the prompt's tokens (the first has none)
    ignore_eos: bool = False  # the stop tokens do not end the text (benchmarks)


@dataclass
class Update:
    """What one choice gained in one step (or its prefill), sent to the request's sink."""

    index: int  # the choice: prompt_index * n + j
    token_ids: list[int] = field(default_factory=list)  # new tokens (a stop token included)
    logprobs: list[float] = field(default_factory=list)  # their log-probs (when asked)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    text: str = ""  # new text (held back while it may still change or start a stop string)
    finish_reason: str | None = None  # "stop" (a stop token or string) or "length"; None while running
    prompt_logprobs: list[float | None] | None = None  # echo, first update only: None for the first token
    prompt_top_logprobs: list[TopLogprobs | None] | None = None


@dataclass
class Failure:
    """The server's own fault while decoding a request (a bug): the API answers 500."""

    message: str


Sink = Callable[[Update | Failure], None]


class QueueFull(Exception):
    pass


class Ticket:
    """A submitted request: `cancel()` drops its waiting prompts and frees its slots at the next step."""

    def __init__(self, batcher: Batcher, sink: Sink) -> None:
        self._batcher, self.sink, self.cancelled = batcher, sink, False

    def cancel(self) -> None:
        self.cancelled = True
        self._batcher.wake()


@dataclass
class _Group:
    """One prompt of a request and its n choices: admitted together (one prefill)."""

    ticket: Ticket
    prompt: list[int]
    first_index: int
    n: int
    params: SamplingParams


class _Sequence:
    """One choice being generated: its row's length, last token, text so far and sampling state."""

    def __init__(self, group: _Group, index: int, length: int) -> None:
        self.group, self.index, self.length = group, index, length
        params = group.params
        self.params = params
        self.sample = params.temperature > 0
        self.config = None
        self.generator = None
        if self.sample:
            self.config = GenerationConfig(
                do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k
            )
            seed = (params.seed + index) % 2**64 if params.seed is not None else secrets.randbits(62)
            self.generator = torch.Generator().manual_seed(seed)
        self.pending = -1  # the chosen token not yet fed to the model
        self.ids: list[int] = []  # new tokens of the text (stop tokens excluded)
        self.generated = 0  # new tokens chosen (stop tokens included)
        self.emitted = ""  # text already sent


class Batcher:
    def __init__(self, served: ServedModel, max_batch: int = 16, max_queue: int = 256) -> None:
        self.served, self.model, self.tokenizer = served, served.model, served.tokenizer
        self.max_batch, self.max_queue = max_batch, max_queue
        config = self.model.config
        self.plan = engine.plan(self.model, served.dtype, max_batch)
        self.min_rows = MIN_ROWS if max_batch > 1 else 1
        rows = max(max_batch, self.min_rows)
        device = next(self.model.parameters()).device
        self.device = device
        self.store = StaticCache(
            config.n_layer,
            rows,
            config.kv_heads,
            config.dim_per_head,
            served.max_len,
            self.plan.kv_dtype,
            device,
        )
        self.running: list[_Sequence] = []  # row i of the store holds running[i]
        self.waiting: deque[_Group] = deque()
        self._lock = threading.Condition()
        self._closing = False
        # counters for /metrics (written by the decoding thread only)
        self.steps = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self.batch_rows = 0  # running rows summed over steps: mean batch = batch_rows / steps
        self._thread = threading.Thread(target=self._loop, name="plmkit-decoder", daemon=True)
        self._thread.start()

    # ---- the API side (any thread) --------------------------------------------------------------------
    def submit(self, prompts: list[list[int]], n: int, params: SamplingParams, sink: Sink) -> Ticket:
        """Queue the prompts (each with n choices, indexed prompt_index * n + j); QueueFull when the
        queue already holds max_queue prompts."""
        ticket = Ticket(self, sink)
        with self._lock:
            if self._closing:
                raise QueueFull
            if len(self.waiting) + len(prompts) > self.max_queue:
                raise QueueFull
            for i, prompt in enumerate(prompts):
                self.waiting.append(_Group(ticket, list(prompt), i * n, n, params))
            self._lock.notify()
        return ticket

    def wake(self) -> None:
        with self._lock:
            self._lock.notify()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._lock.notify()
        self._thread.join(timeout=30)

    @property
    def queue_length(self) -> int:
        return len(self.waiting)

    @property
    def running_count(self) -> int:
        return len(self.running)

    # ---- the decoding thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode(), dropout_off():
            while True:
                with self._lock:
                    while not self._closing and not self.waiting and not self.running:
                        self._lock.wait()
                    if self._closing:
                        break
                self._drop_cancelled()
                self._admit()
                if self.running:
                    try:
                        self._step()
                    except Exception as e:  # noqa: BLE001 - a bug: fail the batch, keep serving
                        self._fail([s.group for s in self.running], e)
                        self.running.clear()
        for seq in self.running:
            seq.group.ticket.sink(Failure("the server is shutting down"))
        for group in self.waiting:
            group.ticket.sink(Failure("the server is shutting down"))

    def _fail(self, groups: list[_Group], error: Exception) -> None:
        """A bug while serving these groups: their clients get a 500; the server goes on."""
        traceback.print_exc(file=sys.stderr)
        for ticket in {id(g.ticket): g.ticket for g in groups}.values():
            ticket.sink(Failure(f"{type(error).__name__}: {error}"))

    def _drop_cancelled(self) -> None:
        for seq in [s for s in self.running if s.group.ticket.cancelled]:
            self._release(seq)

    def _admit(self) -> None:
        """Waiting prompts join while their n choices fit in the free rows (first come, first served)."""
        while True:
            with self._lock:
                if not self.waiting:
                    return
                group = self.waiting[0]
                if group.ticket.cancelled:
                    self.waiting.popleft()
                    continue
                if group.params.max_tokens > 0 and len(self.running) + group.n > self.max_batch:
                    return
                self.waiting.popleft()
            try:
                self._prefill(group)
            except Exception as e:  # noqa: BLE001 - a bug: fail this request, keep serving
                self._fail([group], e)
                for seq in [s for s in self.running if s.group is group]:
                    self._release(seq)

    def _prefill(self, group: _Group) -> None:
        """The prompt's forward into the first free row (copied to the group's other rows), the prompt's
        log-probs when asked, and each choice's first token."""
        params, prompt = group.params, group.prompt
        t = len(prompt)
        self.prompt_tokens += t
        ids = torch.tensor([prompt], dtype=torch.long, device=self.device)
        generate = params.max_tokens > 0
        first_row = len(self.running)
        cache = self._row_view(first_row) if generate else None
        # bf16 serving: a bf16 prompt forward where bf16 matmuls are fast, as plmkit.generation prefills
        with prefill_autocast(self.model, self.served.dtype):
            out = self.model(
                input_ids=ids,
                check_inputs=False,
                use_cache=generate,
                past_key_values=cache,
                compute_logits=False,
            )
        hidden = out.hidden_states[0].to(compute_dtype(self.model, "fp32"))  # (T, C), the model's dtype
        echo = _prompt_logprobs(self.model, hidden, prompt, params.prompt_logprobs)
        if not generate:  # the prompt only (echo with max_tokens=0)
            for j in range(group.n):
                update = Update(group.first_index + j, finish_reason="length")
                update.prompt_logprobs, update.prompt_top_logprobs = echo
                group.ticket.sink(update)
            return
        logits = self.model.lm_head(hidden[-1:]).float()  # (1, V)
        for j in range(group.n):
            row = len(self.running)
            if row != first_row:
                self._copy_row(first_row, row, t)
            seq = _Sequence(group, group.first_index + j, t)
            self.running.append(seq)
            update = self._choose([seq], logits)[0]
            update.prompt_logprobs, update.prompt_top_logprobs = echo
            self._deliver(seq, update)

    def _step(self) -> None:
        running = self.running
        b = len(running)
        rows = max(b, self.min_rows)
        tokens = [s.pending for s in running] + [0] * (rows - b)
        lengths = [s.length for s in running] + [0] * (rows - b)  # idle rows write at column 0 of free rows
        device = self.device
        columns = torch.tensor(lengths, dtype=torch.long, device=device)
        logits = engine.step(
            self.plan,
            self.store,
            torch.tensor(tokens, dtype=torch.long, device=device),
            columns[:, None],
            None,
            None,
            columns=columns,
            widths=[n + 1 for n in lengths],
        )[:b].float()  # (B, V)
        self.steps += 1
        self.batch_rows += b
        for seq in running:
            seq.length += 1
        updates = self._choose(list(running), logits)
        for seq, update in zip(list(running), updates):
            self._deliver(seq, update)

    def _choose(self, sequences: list[_Sequence], logits: torch.Tensor) -> list[Update]:
        """Each sequence's next token from its row of logits (B, V): greedy (one argmax for all rows) or
        sampled with its own settings and generator; the log-probs (of the model's distribution) when asked."""
        greedy = logits.argmax(dim=-1).tolist()
        wants = [s.params.logprobs for s in sequences if s.params.logprobs is not None]
        logprobs = logits.log_softmax(dim=-1) if wants else None
        top = None
        if wants and max(wants) > 0:
            values, ids = logprobs.topk(min(max(wants), logprobs.shape[-1]), dim=-1)
            top = (values.tolist(), ids.tolist())
        updates = []
        for r, seq in enumerate(sequences):
            if seq.sample:
                scores = filter_for_sampling(logits[r : r + 1], seq.config)
                token = int(torch.multinomial(scores.softmax(dim=-1), 1, generator=seq.generator))
            else:
                token = greedy[r]
            update = Update(seq.index, token_ids=[token])
            k = seq.params.logprobs
            if k is not None:
                update.logprobs.append(float(logprobs[r, token]))
                update.top_logprobs.append(list(zip(top[1][r][:k], top[0][r][:k])) if k and top else [])
            updates.append(update)
        return updates

    def _deliver(self, seq: _Sequence, update: Update) -> None:
        """Record the chosen token: the text, a stop token or string, the limit; send the update; a finished
        sequence leaves its row."""
        token = update.token_ids[0]
        seq.generated += 1
        self.generated_tokens += 1
        params = seq.params
        finish = None
        if token in self.served.stop_ids and not params.ignore_eos:
            finish = "stop"
        else:
            seq.ids.append(token)
        text = self.tokenizer.decode(seq.ids)
        cut = _find_stop(text, params.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
        elif finish is None and (seq.generated >= params.max_tokens or seq.length >= self.served.max_len):
            finish = "length"
        if finish is None:  # hold back an incomplete character and what may start a stop string
            text = text.rstrip("\ufffd")
            text = text[: len(text) - _held_back(text, params.stop)]
        if len(text) > len(seq.emitted):
            update.text = text[len(seq.emitted) :]
            seq.emitted = text
        update.finish_reason = finish
        seq.pending = token
        seq.group.ticket.sink(update)
        if finish is not None:
            self._release(seq)

    def _release(self, seq: _Sequence) -> None:
        """Free the sequence's row: the last running sequence moves into it."""
        row = self.running.index(seq)
        last = len(self.running) - 1
        if row != last:
            moved = self.running[last]
            self._copy_row(last, row, moved.length)
            self.running[row] = moved
        self.running.pop()

    # ---- rows of the store ------------------------------------------------------------------------
    def _row_view(self, row: int) -> StaticCache:
        """A batch-1 StaticCache whose buffers are views of one row of the store (the prefill writes there)."""
        store = self.store
        view = StaticCache(len(store), 1, 1, 1, 1, store.dtype, self.device)  # tiny buffers, replaced below
        view.keys = [k[row : row + 1] for k in store.keys]
        view.values = [v[row : row + 1] for v in store.values]
        return view

    def _copy_row(self, source: int, target: int, columns: int) -> None:
        for buffers in (self.store.keys, self.store.values):
            for b in buffers:
                b[target, :, :columns] = b[source, :, :columns]


def _prompt_logprobs(
    model: torch.nn.Module, hidden: torch.Tensor, prompt: list[int], k: int | None
) -> tuple[list[float | None] | None, list[TopLogprobs | None] | None]:
    """Echo: log p(prompt[i] | prompt[:i]) for i >= 1 (None for the first token) and the k likeliest
    tokens at each position, from the prompt's hidden states (T, C), LOGIT_ROWS positions at a time."""
    if k is None:
        return None, None
    chosen: list[float | None] = [None]
    tops: list[TopLogprobs | None] = [None]
    targets = torch.tensor(prompt[1:], dtype=torch.long, device=hidden.device)
    for start in range(0, len(prompt) - 1, LOGIT_ROWS):
        end = min(start + LOGIT_ROWS, len(prompt) - 1)
        logprobs = model.lm_head(hidden[start:end]).float().log_softmax(dim=-1)  # (rows, V)
        chosen.extend(logprobs.gather(1, targets[start:end, None])[:, 0].tolist())
        if k:
            values, ids = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
            tops.extend([list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())])
        else:
            tops.extend([[] for _ in range(end - start)])
    return chosen, tops
