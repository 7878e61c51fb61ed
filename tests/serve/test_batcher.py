"""The continuous-batching engine without HTTP: greedy tokens and their log-probs are the same alone, among
concurrent requests and when requests join a running batch; max_batch=1 reproduces plmkit.generation
exactly; seeds reproduce under load; stop strings, stop tokens and limits end a choice; a cancelled request
frees its row; echo's prompt log-probs equal plmkit's own scoring."""

from __future__ import annotations

import threading

import pytest
import torch

from plmkit.generation import generate_ids
from plmkit.generation.scoring import continuation_logprobs
from plmkit.prompting.sft_data import end_of_turn_ids
from plmkit.serve.batcher import Batcher, Failure, QueueFull, SamplingParams, Update
from plmkit.serve.served import load_served

TEXTS = [
    "red green",
    "the cat sat on",
    "blue moon river",
    "a",
    "dog bird sun tree stone",
    "cloud",
    "x y z",
    "hi",
]


class Collector:
    """The updates of one submitted request, by choice; `wait()` until every choice finished."""

    def __init__(self, choices: int) -> None:
        self.choices = choices
        self.tokens: dict[int, list[int]] = {}
        self.logprobs: dict[int, list[float]] = {}
        self.text: dict[int, str] = {}
        self.finish: dict[int, str] = {}
        self.updates: list[Update] = []
        self.done = threading.Event()

    def __call__(self, update) -> None:
        assert not isinstance(update, Failure), update
        self.updates.append(update)
        i = update.index
        self.tokens.setdefault(i, []).extend(update.token_ids)
        self.logprobs.setdefault(i, []).extend(update.logprobs)
        self.text[i] = self.text.get(i, "") + update.text
        if update.finish_reason is not None:
            self.finish[i] = update.finish_reason
            if len(self.finish) == self.choices:
                self.done.set()

    def wait(self) -> Collector:
        assert self.done.wait(60), "the batcher did not finish"
        return self


def submit(batcher: Batcher, prompt: list[int], params: SamplingParams, n: int = 1) -> Collector:
    sink = Collector(n)
    batcher.submit([prompt], n, params, sink)
    return sink


@pytest.fixture(scope="module")
def served(plain_lm):
    return load_served(plain_lm)


@pytest.fixture
def batcher(served):
    b = Batcher(served, max_batch=8)
    yield b
    b.close()


GREEDY = SamplingParams(max_tokens=20, temperature=0, logprobs=0, ignore_eos=True)


def test_max_batch_1_is_plmkit_generation(served):
    b = Batcher(served, max_batch=1)
    try:
        for text in TEXTS[:4]:
            prompt = served.prompt_ids(text)
            got = submit(b, prompt, GREEDY).wait()
            expected = generate_ids(served.model, torch.tensor([prompt]), max_new_tokens=20, eos_token_id=[])
            assert got.tokens[0] == expected[0].tolist()
    finally:
        b.close()


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_serving_prefills_like_plmkit_generation(monkeypatch, plain_lm, fast):
    """--dtype bf16: the server's prefill runs in the context plmkit.generation's does (bf16 autocast where
    bf16 matmuls are fast, weights.prefill_autocast), so max_batch 1 answers as generate_ids(dtype=bf16)."""
    from plmkit.generation import weights

    monkeypatch.setattr(weights, "bf16_matmuls_are_fast", lambda device: fast)
    served = load_served(plain_lm, dtype="bf16")
    from plmkit.serve import batcher as batcher_module

    contexts = []  # (the dtype asked for, the context's autocast)

    def recording(model, dtype):
        context = weights.prefill_autocast(model, dtype)
        contexts.append((dtype, isinstance(context, torch.autocast)))
        return context

    monkeypatch.setattr(batcher_module, "prefill_autocast", recording)
    b = Batcher(served, max_batch=1)
    try:
        submit(b, served.prompt_ids(TEXTS[0]), GREEDY).wait()
        assert contexts == [("bf16", fast)]
        for text in TEXTS[:3]:
            prompt = served.prompt_ids(text)
            got = submit(b, prompt, GREEDY).wait()
            expected = generate_ids(
                served.model, torch.tensor([prompt]), max_new_tokens=20, eos_token_id=[], dtype="bf16"
            )
            assert got.tokens[0] == expected[0].tolist()
    finally:
        b.close()


def test_greedy_alone_equals_under_load(served, batcher):
    prompts = [served.prompt_ids(t) for t in TEXTS]
    alone = [submit(batcher, p, GREEDY).wait() for p in prompts]
    together = [submit(batcher, p, GREEDY) for p in prompts]  # all 8 at once
    together = [c.wait() for c in together]
    assert batcher.batch_rows > batcher.steps  # the 8 requests did share steps
    for a, t in zip(alone, together):
        assert a.tokens == t.tokens
        assert a.logprobs == t.logprobs  # bit for bit: a row's logits do not depend on the other rows


def test_requests_join_a_running_batch(served, batcher):
    """Prompts submitted while another request is decoding join its steps and get their solo answers."""
    prompts = [served.prompt_ids(t) for t in TEXTS]
    long = SamplingParams(max_tokens=60, temperature=0, logprobs=0, ignore_eos=True)
    alone_first = submit(batcher, prompts[0], long).wait()
    alone_rest = [submit(batcher, p, GREEDY).wait() for p in prompts[1:]]
    first = submit(batcher, prompts[0], long)
    while len(first.updates) < 5:  # it is running
        first.done.wait(0.01)
    steps_before = batcher.steps
    rest = [submit(batcher, p, GREEDY) for p in prompts[1:]]
    assert first.wait().tokens == alone_first.tokens
    assert [r.wait().tokens for r in rest] == [a.tokens for a in alone_rest]
    assert batcher.steps - steps_before < 55 + 7 * 20  # shared steps, not one request after another


def test_seed_reproduces_under_load(served, batcher):
    prompt = served.prompt_ids("red green")
    sampled = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    alone = submit(batcher, prompt, sampled).wait()
    others = [submit(batcher, served.prompt_ids(t), sampled) for t in TEXTS[1:]]
    again = submit(batcher, prompt, sampled)
    assert again.wait().tokens == alone.tokens
    for o in others:
        o.wait()
    other_seed = submit(
        batcher, prompt, SamplingParams(max_tokens=16, temperature=1.0, seed=8, ignore_eos=True)
    )
    assert other_seed.wait().tokens != alone.tokens


def test_n_choices_share_the_prompt(served, batcher):
    prompt = served.prompt_ids("blue moon")
    greedy = submit(batcher, prompt, GREEDY, n=3).wait()
    assert greedy.tokens[0] == greedy.tokens[1] == greedy.tokens[2]
    sampled = submit(
        batcher, prompt, SamplingParams(max_tokens=12, temperature=1.0, seed=1, ignore_eos=True), n=3
    )
    sampled.wait()
    assert len({tuple(t) for t in sampled.tokens.values()}) == 3  # seed + k per choice: different samples
    assert batcher.running_count == 0


def test_stop_string_stop_token_and_length(served, batcher):
    prompt = served.prompt_ids("red green")
    free = submit(batcher, prompt, SamplingParams(max_tokens=20, temperature=0, ignore_eos=True)).wait()
    text = free.text[0]
    assert free.finish[0] == "length" and len(free.tokens[0]) == 20
    stop = text[3:5]  # a stop string in the middle of the greedy text: the text ends before it
    cut = submit(
        batcher, prompt, SamplingParams(max_tokens=20, temperature=0, stop=(stop,), ignore_eos=True)
    ).wait()
    assert cut.finish[0] == "stop" and cut.text[0] == text[: text.index(stop)]
    # the model's own EOS ends a choice: make the greedy 3rd token a stop token
    served.stop_ids, saved = frozenset({free.tokens[0][2]}), served.stop_ids
    try:
        stopped = submit(batcher, prompt, SamplingParams(max_tokens=20, temperature=0)).wait()
    finally:
        served.stop_ids = saved
    first_stop = next(i for i, t in enumerate(free.tokens[0]) if t == free.tokens[0][2])
    assert stopped.finish[0] == "stop" and stopped.tokens[0] == free.tokens[0][: first_stop + 1]
    assert stopped.text[0] == served.tokenizer.decode(free.tokens[0][:first_stop])


def test_cancelled_request_leaves_at_the_next_step(served):
    b = Batcher(served, max_batch=1)
    try:
        long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        sink = Collector(1)
        ticket = b.submit([served.prompt_ids("red")], 1, long, sink)
        while not sink.updates:
            sink.done.wait(0.01)
        waiting = submit(b, served.prompt_ids("green"), SamplingParams(max_tokens=3, temperature=0))
        assert b.queue_length == 1  # max_batch=1: it waits for the row
        ticket.cancel()
        waiting.wait()  # the row was freed
        assert len(sink.tokens[0]) < 200 and not sink.finish
    finally:
        b.close()


def test_queue_full(served):
    b = Batcher(served, max_batch=1, max_queue=2)
    try:
        long = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        first = submit(b, served.prompt_ids("red"), long)
        while not first.updates:
            first.done.wait(0.01)
        queued = [submit(b, served.prompt_ids("red"), long) for _ in range(2)]
        with pytest.raises(QueueFull):
            submit(b, served.prompt_ids("red"), long)
        for c in [first, *queued]:
            c.wait()
    finally:
        b.close()


def test_echo_logprobs_equal_plmkit_scoring(served, batcher):
    """The prompt's log-probs (echo) are plmkit.generation.scoring's: log p(token | everything before)."""
    prompt = served.prompt_ids("the cat sat on the river stone")
    echo = submit(batcher, prompt, SamplingParams(max_tokens=0, prompt_logprobs=2, logprobs=2)).wait()
    update = echo.updates[0]
    expected = continuation_logprobs(served.model, [prompt[:1]], [prompt[1:]])[0]
    assert update.prompt_logprobs[0] is None
    assert update.prompt_logprobs[1:] == pytest.approx(expected, abs=1e-5)
    assert [len(t) for t in update.prompt_top_logprobs[1:]] == [2] * (len(prompt) - 1)
    assert echo.finish[0] == "length" and echo.tokens[0] == []


def test_end_of_turn_token_is_a_stop_token(chat_lm):
    served = load_served(chat_lm)
    im_end = served.tokenizer.token_to_id("<|im_end|>")
    assert end_of_turn_ids(served.tokenizer, served.template) == [im_end, served.tokenizer.eos_id]
    assert served.stop_ids == {im_end, served.tokenizer.eos_id}
