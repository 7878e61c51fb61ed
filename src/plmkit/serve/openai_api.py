"""OpenAI requests to the batcher's inputs, and the batcher's updates to OpenAI responses and stream chunks.

Completions (/v1/completions): `prompt` is a string, a list of strings, a list of token ids or a list of
lists; choice `index` = prompt_index * n + j (as vLLM numbers them). `logprobs: k` gives the legacy object:
`tokens`, `token_logprobs`, `top_logprobs` (the k likeliest as {token: log-prob}, plus the chosen token
when it is not among them) and `text_offset` (each token's character offset in the choice's text: the
running sum of the token strings' lengths). With `echo` the prompt comes first: prompt_tokens +
max_tokens entries, the first log-prob null (nothing predicts the first token); `max_tokens: 0` with
`echo` scores the prompt only, as lm-evaluation-harness's log-likelihood requests do.

Chat completions: the messages through the checkpoint's chat template; `logprobs: true` with
`top_logprobs: k` gives {"content": [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}.

Log-probs are of the model's distribution (log-softmax of the raw logits), whatever temperature or
top_p chose the token, as vLLM reports them by default.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from plmkit.errors import PlmkitError
from plmkit.serve.batcher import SamplingParams, TopLogprobs, Update
from plmkit.serve.errors import bad_request, unknown_model
from plmkit.serve.schemas import ChatCompletionRequest, CompletionRequest, Sampling
from plmkit.serve.served import ServedModel
from plmkit.serve.settings import ServeSettings


def request_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def check_model(name: str | None, served: ServedModel) -> None:
    if name is not None and name != served.name:
        raise unknown_model(name, served.name)


def check_ids(ids: list[int], served: ServedModel, param: str) -> None:
    bad = next((i for i in ids if not 0 <= i < served.vocab_size), None)
    if bad is not None:
        raise bad_request(
            f"token id {bad} in {param} is outside the model's vocabulary [0, {served.vocab_size})", param
        )


def _sampling(
    req: Sampling, settings: ServeSettings, max_tokens: int, logprobs, prompt_logprobs
) -> SamplingParams:
    if req.n > settings.max_n or req.n > settings.max_batch:
        limit = min(settings.max_n, settings.max_batch)
        raise bad_request(
            f"n={req.n} is more than this server gives per prompt ({limit}: plm serve --max-n / --max-batch)",
            "n",
        )
    if max_tokens > settings.max_tokens:
        raise bad_request(
            f"max_tokens={max_tokens} is more than this server allows ({settings.max_tokens}, plm serve --max-tokens)",
            "max_tokens",
        )
    temperature = 1.0 if req.temperature is None else req.temperature
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=max(0, req.top_k or 0),
        seed=req.seed,
        stop=req.stops(),
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        ignore_eos=req.ignore_eos,
    )


def _check_length(
    ids: list[int], max_tokens: int, served: ServedModel, settings: ServeSettings, param: str
) -> None:
    limit = settings.max_prompt_tokens
    if limit is not None and len(ids) > limit:
        raise bad_request(
            f"the prompt has {len(ids)} tokens, more than this server accepts ({limit}, plm serve "
            "--max-prompt-tokens); shorten it",
            param,
        )
    if len(ids) + max_tokens > served.max_len:
        raise bad_request(
            f"This model's maximum context length is {served.max_len} tokens; the prompt has {len(ids)} and "
            f"max_tokens asks for {max_tokens} more ({len(ids) + max_tokens}); shorten the prompt or lower "
            "max_tokens",
            param,
            code="context_length_exceeded",
        )


# ---- completions -------------------------------------------------------------------------------------
@dataclass
class CompletionJob:
    prompts: list[list[int]]
    texts: list[str]  # each prompt as text (echo)
    params: SamplingParams


def completion_job(req: CompletionRequest, served: ServedModel, settings: ServeSettings) -> CompletionJob:
    check_model(req.model, served)
    prompt = req.prompt
    if isinstance(prompt, str):
        raw: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        raw = [prompt]
    else:
        raw = list(prompt)
    if not raw:
        raise bad_request("prompt is an empty list; give a string, a list of strings or token ids", "prompt")
    if len(raw) > settings.max_prompts:
        raise bad_request(
            f"{len(raw)} prompts in one request, more than this server accepts ({settings.max_prompts}, "
            "plm serve --max-prompts)",
            "prompt",
        )
    prompts, texts = [], []
    for p in raw:
        if isinstance(p, str):
            ids = served.prompt_ids(p)
            text = p
        else:
            ids = list(p)
            check_ids(ids, served, "prompt")
            text = served.tokenizer.decode(ids)
        if not ids:
            raise bad_request(
                "a prompt is empty and the tokenizer has no bos or eos token to start from", "prompt"
            )
        prompts.append(ids)
        texts.append(text)
    max_tokens = 16 if req.max_tokens is None else req.max_tokens
    for ids in prompts:
        _check_length(ids, max_tokens, served, settings, "prompt")
    logprobs = req.logprobs
    params = _sampling(
        req, settings, max_tokens, logprobs, logprobs if req.echo and logprobs is not None else None
    )
    return CompletionJob(prompts, texts, params)


@dataclass
class ChoiceState:
    """One choice's updates, gathered: text, tokens, log-probs and (echo) the prompt's."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[TopLogprobs | None] | None = None

    def add(self, update: Update) -> None:
        self.text += update.text
        self.token_ids += update.token_ids
        self.logprobs += update.logprobs
        self.top_logprobs += update.top_logprobs
        if update.prompt_logprobs is not None:
            self.prompt_logprobs, self.prompt_top_logprobs = (
                update.prompt_logprobs,
                update.prompt_top_logprobs,
            )
        if update.finish_reason is not None:
            self.finish_reason = update.finish_reason


def legacy_logprobs(
    served: ServedModel,
    token_ids: list[int],
    logprobs: list[float | None],
    tops: list[TopLogprobs | None],
    k: int,
    offset: int = 0,
) -> dict[str, Any]:
    """The completions API's logprobs object for these tokens (text offsets from `offset`)."""
    tokens = [served.token_text(t) for t in token_ids]
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    top_dicts: list[dict[str, float] | None] = []
    for token, chosen, lp, top in zip(token_ids, tokens, logprobs, tops):
        if top is None:
            top_dicts.append(None)
            continue
        entries = {served.token_text(t): v for t, v in top[:k]}
        if lp is not None and token not in {t for t, _ in top[:k]}:
            entries[chosen] = lp
        top_dicts.append(entries)
    return {
        "tokens": tokens,
        "token_logprobs": list(logprobs),
        "top_logprobs": top_dicts,
        "text_offset": offsets,
    }


def completion_logprobs(
    served: ServedModel, job: CompletionJob, state: ChoiceState, prompt_index: int, echo: bool
) -> dict[str, Any] | None:
    k = job.params.logprobs
    if k is None:
        return None
    ids, lps, tops = list(state.token_ids), list(state.logprobs), list(state.top_logprobs)
    if echo and state.prompt_logprobs is not None:
        ids = job.prompts[prompt_index] + ids
        lps = state.prompt_logprobs + lps
        tops = state.prompt_top_logprobs + tops
    return legacy_logprobs(served, ids, lps, tops, k)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_response(
    served: ServedModel, req: CompletionRequest, job: CompletionJob, states: list[ChoiceState], rid: str
) -> dict[str, Any]:
    choices = []
    for state in states:
        p = state.index // req.n
        text = (job.texts[p] if req.echo else "") + state.text
        choices.append(
            {
                "index": state.index,
                "text": text,
                "logprobs": completion_logprobs(served, job, state, p, req.echo),
                "finish_reason": state.finish_reason,
            }
        )
    generated = sum(len(s.token_ids) for s in states)
    return {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": served.name,
        "choices": choices,
        "usage": usage(sum(len(p) for p in job.prompts), generated),
    }


def completion_chunk(
    served: ServedModel,
    req: CompletionRequest,
    job: CompletionJob,
    update: Update,
    first: bool,
    offset: int,
    rid: str,
) -> tuple[dict[str, Any] | None, int]:
    """(the stream chunk of one update or None when it carries nothing, the text offset after it). The
    choice's first chunk carries the prompt with echo; `offset`: the token strings' length sent before."""
    p = update.index // req.n
    echo = req.echo and first
    text = (job.texts[p] if echo else "") + update.text
    logprobs = None
    k = job.params.logprobs
    if k is not None:
        ids, lps, tops = update.token_ids, update.logprobs, update.top_logprobs
        if echo and update.prompt_logprobs is not None:
            ids = job.prompts[p] + ids
            lps = update.prompt_logprobs + lps
            tops = update.prompt_top_logprobs + tops
        logprobs = legacy_logprobs(served, ids, lps, tops, k, offset)
        offset += sum(len(t) for t in logprobs["tokens"])
    if not text and logprobs is None and update.finish_reason is None:
        return None, offset
    chunk = {
        "id": rid,
        "object": "text_completion",
        "created": int(time.time()),
        "model": served.name,
        "choices": [
            {"index": update.index, "text": text, "logprobs": logprobs, "finish_reason": update.finish_reason}
        ],
    }
    if req.stream_options is not None and req.stream_options.include_usage:
        chunk["usage"] = None
    return chunk, offset


# ---- chat completions --------------------------------------------------------------------------------
@dataclass
class ChatJob:
    prompt: list[int]
    params: SamplingParams


def chat_job(req: ChatCompletionRequest, served: ServedModel, settings: ServeSettings) -> ChatJob:
    check_model(req.model, served)
    if served.template is None:
        raise bad_request(served.template_error, "messages", code="no_chat_template")
    try:
        ids = served.chat_ids([m.plain() for m in req.messages])
    except PlmkitError as e:  # the template rejected the conversation (raise_exception, a bad role order)
        raise bad_request(str(e), "messages") from None
    limit = req.token_limit()
    if limit is None:
        limit = min(settings.max_tokens, served.max_len - len(ids))
        if limit < 1:
            raise bad_request(
                f"This model's maximum context length is {served.max_len} tokens and the messages take "
                f"{len(ids)}; shorten the conversation",
                "messages",
                code="context_length_exceeded",
            )
    _check_length(ids, limit, served, settings, "messages")
    k = (req.top_logprobs or 0) if req.logprobs else None
    return ChatJob(ids, _sampling(req, settings, limit, k, None))


def chat_logprobs(served: ServedModel, token_ids, logprobs, tops, k: int) -> dict[str, Any]:
    def entry(token: int, lp: float) -> dict[str, Any]:
        text = served.token_text(token)
        return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}

    content = []
    for token, lp, top in zip(token_ids, logprobs, tops):
        content.append({**entry(token, lp), "top_logprobs": [entry(t, v) for t, v in top[:k]]})
    return {"content": content}


def chat_response(
    served: ServedModel, req: ChatCompletionRequest, job: ChatJob, states: list[ChoiceState], rid: str
) -> dict[str, Any]:
    k = job.params.logprobs
    choices = [
        {
            "index": s.index,
            "message": {"role": "assistant", "content": s.text},
            "logprobs": None
            if k is None
            else chat_logprobs(served, s.token_ids, s.logprobs, s.top_logprobs, k),
            "finish_reason": s.finish_reason,
        }
        for s in states
    ]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": served.name,
        "choices": choices,
        "usage": usage(len(job.prompt), sum(len(s.token_ids) for s in states)),
    }


def chat_chunk(
    served: ServedModel,
    req: ChatCompletionRequest,
    job: ChatJob,
    index: int,
    delta: dict,
    update: Update | None,
    rid: str,
) -> dict[str, Any]:
    k = job.params.logprobs
    logprobs = None
    if k is not None and update is not None and update.token_ids:
        logprobs = chat_logprobs(served, update.token_ids, update.logprobs, update.top_logprobs, k)
    chunk = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": served.name,
        "choices": [
            {
                "index": index,
                "delta": delta,
                "logprobs": logprobs,
                "finish_reason": update.finish_reason if update is not None else None,
            }
        ],
    }
    if req.stream_options is not None and req.stream_options.include_usage:
        chunk["usage"] = None
    return chunk


def usage_chunk(
    obj: str, served: ServedModel, rid: str, prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": obj,
        "created": int(time.time()),
        "model": served.name,
        "choices": [],
        "usage": usage(prompt_tokens, completion_tokens),
    }
