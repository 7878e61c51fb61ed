"""The server through clients no one here wrote: the real `openai` client (completions and chat, streaming
and not, n > 1, seeds, log-probs, a wrong key, bad input) and lm-evaluation-harness's remote tokenizer,
against a server started on a free localhost port."""

from __future__ import annotations

import json
import threading
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from plmkit.generation import generate  # noqa: E402
from plmkit.serve.app import PAGE, build_app  # noqa: E402
from plmkit.serve.batcher import Batcher  # noqa: E402
from plmkit.serve.served import load_served  # noqa: E402
from plmkit.serve.server import ServerThread  # noqa: E402
from plmkit.serve.settings import ServeSettings  # noqa: E402

KEY = "test-key"


class Running:
    def __init__(self, folder, **settings) -> None:
        self.settings = ServeSettings(**settings)
        self.served = load_served(folder)
        self.batcher = Batcher(self.served, self.settings.max_batch, self.settings.max_queue)
        self.thread = ServerThread(build_app(self.served, self.batcher, self.settings))

    def __enter__(self) -> Running:
        self.thread.__enter__()
        self.url = self.thread.url
        key = self.settings.api_key or "-"
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)
        self.http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()
        self.thread.__exit__(*exc)
        self.batcher.close()


@pytest.fixture(scope="module")
def server(chat_lm):
    with Running(chat_lm, api_key=KEY, max_batch=8) as running:
        yield running


@pytest.fixture(scope="module")
def name(server) -> str:
    return server.served.name


# ---- completions --------------------------------------------------------------------------------------
def test_completion_is_plmkit_greedy_generation(server, name):
    out = server.client.completions.create(model=name, prompt="red green", max_tokens=8, temperature=0)
    served = server.served
    expected = generate(served.model, served.tokenizer, "red green", max_new_tokens=8)
    assert out.choices[0].text == expected
    assert out.choices[0].index == 0 and out.choices[0].finish_reason in ("length", "stop")
    assert out.usage.prompt_tokens == len(served.prompt_ids("red green"))
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_prompts_and_n_give_indexed_choices(server, name):
    kwargs = dict(model=name, prompt=["blue moon", "cat dog"], n=2, max_tokens=5, temperature=1.0, seed=3)
    out = server.client.completions.create(**kwargs)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]  # index = prompt_index * n + j
    assert [c.text for c in server.client.completions.create(**kwargs).choices] == [
        c.text for c in out.choices
    ]
    ids = [server.served.prompt_ids("blue moon"), server.served.prompt_ids("cat dog")]
    as_ids = server.client.completions.create(**{**kwargs, "prompt": ids})
    assert [c.text for c in as_ids.choices] == [c.text for c in out.choices]  # token ids: the same prompts


def test_streamed_completion_joins_to_the_whole(server, name):
    kwargs = dict(model=name, prompt="the river", max_tokens=12, temperature=0)
    whole = server.client.completions.create(**kwargs).choices[0].text
    chunks = list(
        server.client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("length", "stop")


def test_legacy_logprobs_and_echo(server, name):
    served = server.served
    prompt = served.prompt_ids("the cat sat")
    out = server.client.completions.create(
        model=name, prompt=prompt, max_tokens=1, temperature=0, logprobs=1, echo=True
    )  # lm-evaluation-harness's log-likelihood request
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(prompt) + 1
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(v <= 0 for v in lp.token_logprobs[1:])
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    greedy = lp.token_logprobs[-1]
    assert greedy == pytest.approx(max(lp.top_logprobs[-1].values()))  # greedy: the top token was chosen
    assert out.choices[0].text.startswith(served.tokenizer.decode(prompt))
    kwargs = dict(model=name, prompt=prompt, max_tokens=6, temperature=0, logprobs=2, echo=True)
    whole = server.client.completions.create(**kwargs).choices[0]
    chunks = [c.choices[0] for c in server.client.completions.create(stream=True, **kwargs)]
    assert "".join(c.text for c in chunks) == whole.text
    for field in ("tokens", "token_logprobs", "text_offset"):  # streamed log-probs join to the whole
        joined = [v for c in chunks if c.logprobs for v in getattr(c.logprobs, field)]
        assert joined == getattr(whole.logprobs, field)
    only_prompt = server.client.completions.create(
        model=name, prompt=prompt, max_tokens=0, echo=True, logprobs=0
    )
    assert only_prompt.choices[0].logprobs.token_logprobs == lp.token_logprobs[:-1]
    assert only_prompt.usage.completion_tokens == 0


# ---- chat ---------------------------------------------------------------------------------------------
def test_chat_streaming_and_not(server, name):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "red or blue?"}]
    whole = server.client.chat.completions.create(model=name, messages=messages, max_tokens=10, temperature=0)
    assert whole.choices[0].message.role == "assistant"
    chunks = list(
        server.client.chat.completions.create(
            model=name, messages=messages, max_tokens=10, temperature=0, stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"  # the role delta comes first
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    prompt = server.served.chat_ids(messages)
    assert whole.usage.prompt_tokens == len(prompt)


def test_chat_seed_n_and_logprobs(server, name):
    messages = [{"role": "user", "content": "name a colour"}]
    kwargs = dict(model=name, messages=messages, max_tokens=6, temperature=1.0, seed=11, n=2)
    a = server.client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=3)
    b = server.client.chat.completions.create(**kwargs)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    content = a.choices[0].logprobs.content
    assert 1 <= len(content) <= 6
    assert all(
        len(t.top_logprobs) == 3 and t.logprob <= 0 and t.bytes == list(t.token.encode()) for t in content
    )


def test_chat_without_a_template_is_a_clear_400(plain_lm):
    with Running(plain_lm) as running:
        with pytest.raises(openai.BadRequestError) as e:
            running.client.chat.completions.create(
                model=running.served.name, messages=[{"role": "user", "content": "hi"}], max_tokens=3
            )
        assert "--chat-template" in str(e.value) and "no chat template" in str(e.value)
        # completions still work
        assert running.client.completions.create(model=running.served.name, prompt="red", max_tokens=2)


# ---- errors -------------------------------------------------------------------------------------------
def test_wrong_or_missing_key_is_401(server, name):
    for key in ("wrong", ""):
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key or "-", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            client.completions.create(model=name, prompt="red", max_tokens=2)
    assert httpx.get(server.url + "/health").status_code == 200  # open without the key


def test_bad_input_through_the_client(server, name):
    c = server.client
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        c.completions.create(model=name, prompt="red", max_tokens=-1)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.completions.create(model="gpt-4", prompt="red", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="messages"):
        c.chat.completions.create(model=name, messages=[], max_tokens=2)
    with pytest.raises(openai.APIStatusError) as e:
        c.completions.create(model=name, prompt="x" * 10_000_000, max_tokens=2)  # a 10 MB body
    assert e.value.status_code == 413 and "bytes" in e.value.message
    with pytest.raises(openai.BadRequestError, match="'frobnicate'"):
        c.completions.create(model=name, prompt="red", max_tokens=2, extra_body={"frobnicate": 1})


BAD_BODIES = [
    ({"prompt": "red", "temperature": 5}, "temperature"),
    ({"prompt": "red", "n": 0}, "n"),
    ({"prompt": "red", "n": 99}, "n"),
    ({"prompt": "red", "logprobs": 50}, "logprobs"),
    ({"prompt": "red", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "red", "max_tokens": 10_000}, "max_tokens"),
    ({"prompt": "red", "max_tokens": 1023}, "context length"),
    ({"prompt": [], "max_tokens": 2}, "prompt"),
    ({"prompt": [[]], "max_tokens": 2}, "prompt"),
    ({"prompt": [5, 10_000], "max_tokens": 2}, "vocabulary"),
    ({"prompt": [-1], "max_tokens": 2}, "vocabulary"),
    ({"prompt": "red", "max_tokens": 0}, "echo"),
    ({"prompt": "red", "suffix": "x"}, "suffix"),
    ({"prompt": "red", "presence_penalty": 1}, "presence_penalty"),
    ({"prompt": "red", "stream_options": {"include_usage": True}}, "stream"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "red", "seed": 2**70}, "seed"),
    ({"prompt": "red", "temperature": float("nan")}, "temperature"),
    ({"prompt": "red", "stop": [""]}, "stop"),
    ({"prompt": "red", "best_of": 3}, "best_of"),
    ({"prompt": "red", "logit_bias": {"5": 1.0}}, "logit_bias"),
    ({"prompt": [[1, 2], "text"]}, "prompt"),
    ({"prompt": "red", "n": "many"}, "n"),
    ({}, "prompt"),
]


@pytest.mark.parametrize("body,words", BAD_BODIES)
def test_bad_completion_bodies_are_400(server, body, words):
    r = server.http.post(
        "/v1/completions", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"] + str(
        error["param"]
    )


@pytest.mark.parametrize(
    "body,words",
    [
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "logprobs"),
        ({"messages": "hi"}, "messages"),
    ],
)
def test_bad_chat_bodies_are_400(server, body, words):
    r = server.http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    assert words in json.dumps(r.json()["error"])


def test_edge_values_that_are_fine(server, name):
    for body in (
        {"prompt": "red", "seed": 2**64 - 1, "n": 2, "temperature": 1},  # seed + k wraps
        {"prompt": "red", "seed": -5, "temperature": 1},
        {"prompt": "red", "max_tokens": None, "top_k": -1, "logit_bias": {}},
        {"prompt": ["red", "green"], "best_of": 1, "stop": "x"},
    ):
        r = server.http.post("/v1/completions", json={"model": name, **body})
        assert r.status_code == 200, (body, r.text)


def test_not_json_and_unknown_routes(server):
    r = server.http.post(
        "/v1/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = server.http.post("/v1/completions", json=[1, 2])
    assert r.status_code == 400 and "error" in r.json()
    assert server.http.get("/v1/nothing").status_code == 404
    assert server.http.get("/v1/completions").status_code == 405


# ---- models, tokenizer, metrics, page ---------------------------------------------------------------
def test_models_health_metrics(server, name):
    assert [m.id for m in server.client.models.list().data] == [name]
    assert server.client.models.retrieve(name).id == name
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok"
    text = httpx.get(server.url + "/metrics").text
    for metric in (
        'plmkit_requests_total{route="/v1/completions",status="200"}',
        "plmkit_generation_tokens_total",
        "plmkit_queue_length",
        "plmkit_request_latency_seconds_bucket",
        "plmkit_time_to_first_token_seconds_count",
    ):
        assert metric in text


def test_tokenizer_routes_are_what_lm_eval_reads(server):
    from lm_eval.utils import RemoteTokenizer

    remote = RemoteTokenizer(server.url + "/v1/completions", auth_token=KEY)
    tok = server.served.tokenizer
    text = "the cat sat on the red stone"
    assert remote.encode(text) == tok.encode(text)
    assert remote.decode(tok.encode(text)) == text
    assert remote.eos_token == "<|endoftext|>" and remote.eos_token_id == tok.eos_id
    assert remote.bos_token_id is None
    rendered = remote.apply_chat_template([{"role": "user", "content": "hi"}])
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    r = server.http.post("/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}).json()
    assert r["tokens"] == server.served.chat_ids([{"role": "user", "content": "hi"}]) and r["count"] == len(
        r["tokens"]
    )
    assert server.http.post("/detokenize", json={"tokens": [10**6]}).status_code == 400


def test_page(server):
    r = httpx.get(server.url + "/")
    if PAGE.is_file():
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    else:
        assert r.status_code == 404 and "index.html" in r.json()["error"]["message"]


# ---- load: disconnects and a full queue --------------------------------------------------------------
def wait_until(condition, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.005)
    return False


def test_a_client_that_disconnects_frees_its_slot(server, name):
    """A streaming client that closes, and a waiting client that times out: generation stops early."""
    body = {"model": name, "prompt": "red", "max_tokens": 1000, "temperature": 0, "ignore_eos": True}
    before = server.batcher.generated_tokens
    with server.http.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
        next(r.iter_lines())
    assert wait_until(lambda: server.batcher.running_count == 0)
    assert server.batcher.generated_tokens - before < 1000
    before = server.batcher.generated_tokens
    with pytest.raises(httpx.TimeoutException):
        server.http.post("/v1/completions", json=body, timeout=0.3)
    assert wait_until(lambda: server.batcher.running_count == 0)
    assert server.batcher.generated_tokens - before < 1000


def test_full_queue_is_429(chat_lm):
    with Running(chat_lm, max_batch=1, max_queue=1) as running:
        name = running.served.name
        long = {"model": name, "prompt": "red", "max_tokens": 500, "ignore_eos": True, "temperature": 0}
        results = []
        first = threading.Thread(
            target=lambda: results.append(running.http.post("/v1/completions", json=long))
        )
        first.start()
        assert wait_until(lambda: running.batcher.running_count == 1)
        second = threading.Thread(
            target=lambda: results.append(running.http.post("/v1/completions", json=long))
        )
        second.start()
        assert wait_until(lambda: running.batcher.queue_length == 1)
        with pytest.raises(openai.RateLimitError, match="busy"):
            running.client.completions.create(model=name, prompt="red", max_tokens=2)
        first.join()
        second.join()
        assert [r.status_code for r in results] == [200, 200]


def test_a_server_thread_leaves_the_host_process_logging_alone(tmp_path):
    """uvicorn's default log config runs logging.config.dictConfig, which closes every handler of the process
    and the stream each one owns (here: one a library made on pytest's captured stderr at import, which
    then took pytest down); the embedded server must not."""
    import logging

    from fastapi import FastAPI

    # made, like absl's, without being attached to a logger; closing it closes its stream
    handler = logging.FileHandler(tmp_path / "host.log")
    with ServerThread(FastAPI()) as thread:
        assert httpx.get(thread.url + "/nothing-here", timeout=30).status_code == 404
    assert handler.stream is not None and not handler.stream.closed
    handler.close()
