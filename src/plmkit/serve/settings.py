"""What `plm serve` is started with: address, key, batching and the limits each request is checked against."""

from __future__ import annotations

from dataclasses import dataclass

from plmkit.config.fields import Range

# the options' ranges (plmkit.config.Range: one wording for CLI options and recipe keys)
PORT = Range(ge=0, le=65535)
MAX_BATCH = Range(ge=1)
MAX_QUEUE = Range(ge=1)
MAX_BODY_BYTES = Range(ge=1024)
LIMIT = Range(ge=1)


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"  # localhost only unless asked
    port: int = 8000
    api_key: str | None = None  # None: no key asked for
    max_batch: int = 16  # sequences decoded together
    max_queue: int = 256  # prompts waiting for a slot; more -> 429
    max_body_bytes: int = 4 * 2**20  # larger bodies -> 413
    max_prompt_tokens: int | None = None  # None: the context window
    max_tokens: int = 4096  # the largest max_tokens a request may ask
    max_n: int = 8  # choices per prompt (and at most max_batch)
    max_prompts: int = 64  # prompts in one /v1/completions request
