"""The model a server serves: a checkpoint's causal LM, its tokenizer and chat template, the tokens that end
an answer, and the context window; checked once at start so that a bad folder fails before any port opens.

    served = load_served("runs/sft/best")                  # CheckpointError / ConfigError: one `error:` line
    served.prompt_ids("Once upon a time")                   # bos (when the tokenizer has one) + the text
    served.chat_ids([{"role": "user", "content": "hi"}])    # through the checkpoint's chat template

The stop tokens are the model's and tokenizer's EOS and the chat template's end-of-turn token (ChatML's
<|im_end|>, Llama 3's <|eot_id|>): the special token the template writes right after an assistant's
answer. A checkpoint without a chat template still serves completions; /v1/chat/completions then answers
400 with the fix (`template_error`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from plmkit.errors import CheckpointError, ConfigError, DataError
from plmkit.generation import engine
from plmkit.generation.config import ABSOLUTE_POSITIONS
from plmkit.prompting.chat import BUILTIN, ChatTemplate, Message, special_token_variables
from plmkit.prompting.sft_data import check_template_tokens, end_of_turn_ids

DEFAULT_CONTEXT = 2048  # the context window of a model whose positions are unbounded (relative, ALiBi)


@dataclass
class ServedModel:
    model: nn.Module
    tokenizer: Any
    name: str  # the `model` clients name (GET /v1/models)
    max_len: int  # prompt + new tokens, at most
    stop_ids: frozenset[int]  # EOS and the template's end-of-turn token
    template: ChatTemplate | None  # None: the chat route answers `template_error`
    template_error: str  # why there is no template and how to fix it ("" when there is one)
    dtype: str = "fp32"  # decode-step weights (plmkit.generation.weights.DecodeDtype)

    @property
    def vocab_size(self) -> int:
        return self.model.config.vocab_size

    def prompt_ids(self, text: str) -> list[int]:
        """A text prompt as plmkit.generation encodes one: bos (when the tokenizer has one) + the text; an
        empty text starts from eos."""
        tok = self.tokenizer
        ids = ([tok.bos_id] if tok.bos_id is not None else []) + tok.encode(text, add_special_tokens=False)
        if not ids and tok.eos_id is not None:
            ids = [tok.eos_id]
        return ids

    def chat_ids(self, messages: Sequence[Message]) -> list[int]:
        """The conversation rendered for the assistant's next turn and encoded (as SFT encodes it)."""
        if self.template is None:
            raise ConfigError(self.template_error)
        text = self.template.render(
            messages, add_generation_prompt=True, **special_token_variables(self.tokenizer)
        )
        return self.tokenizer.encode(text, add_special_tokens=False)

    def token_text(self, token: int) -> str:
        """One token as text, special tokens included (the `tokens` of log-probs)."""
        return self.tokenizer.decode([token], skip_special_tokens=False)


def load_served(
    checkpoint: str | Path,
    name: str | None = None,
    chat_template: str | None = None,
    max_len: int | None = None,
    dtype: str = "fp32",
) -> ServedModel:
    """Load and check a plmkit or Hugging Face folder for serving (CheckpointError / ConfigError otherwise).
    `chat_template`: a built-in name, a Jinja file or Jinja source, instead of the tokenizer's own."""
    from plmkit.io import load

    folder = Path(checkpoint)
    model, tokenizer = load(folder)
    config = getattr(model, "config", None)
    family = getattr(config, "family", None)
    if family != "causal":
        raise ConfigError(
            f"{folder} holds a {type(model).__name__}"
            + (f" ({family} family)" if family else "")
            + "; plm serve "
            "serves causal LMs (GPT, LLaMA, Qwen): give it a checkpoint of plm pretrain, plm sft or a Hugging "
            "Face causal LM"
        )
    if not engine.eligible(model):
        raise ConfigError(
            f"{folder}: plm serve batches the decode steps of a plain causal LM, and this {type(model).__name__} "
            "runs its own forward (prompt or prefix tuning); merge or export it to a plain checkpoint first"
        )
    if tokenizer is None:
        raise CheckpointError(
            f"{folder} has no tokenizer (tokenizer.json); plm serve needs the checkpoint's tokenizer"
        )
    template, problem = _template(folder, tokenizer, chat_template)
    context = config.max_positions if config.position in ABSOLUTE_POSITIONS else DEFAULT_CONTEXT
    if max_len is not None:
        if max_len > context and config.position in ABSOLUTE_POSITIONS:
            raise ConfigError(
                f"--max-model-len {max_len} is longer than the model's positions (max_positions={context}); "
                f"use {context} or less"
            )
        context = max_len
    stops = {i for i in (config.eos_token_id, tokenizer.eos_id) if i is not None}
    if template is not None:
        try:
            stops |= set(end_of_turn_ids(tokenizer, template))
        except (ConfigError, DataError):  # a template that rejects the probe conversation: EOS only
            pass
    return ServedModel(
        model=model,
        tokenizer=tokenizer,
        name=name or folder.resolve().name,
        max_len=context,
        stop_ids=frozenset(stops),
        template=template,
        template_error=problem,
        dtype=dtype,
    )


def _template(folder: Path, tokenizer: Any, spec: str | None) -> tuple[ChatTemplate | None, str]:
    """(the chat template, "") or (None, the message of the chat route's 400 with its fix)."""
    if spec is not None:
        path = Path(spec)
        if spec not in BUILTIN and path.is_file():
            spec = path.read_text(encoding="utf-8")
        template = ChatTemplate.resolve(spec, tokenizer)
        try:
            check_template_tokens(tokenizer, template)
        except ConfigError as e:
            raise ConfigError(f"--chat-template {spec}: {e} (or --chat-template plain)") from None
        return template, ""
    own = getattr(tokenizer, "chat_template", None)
    if not own:
        return None, (
            f"the checkpoint {folder.name} has no chat template (tokenizer_config.json chat_template), so "
            "/v1/chat/completions cannot format messages; use /v1/completions, or restart with "
            f"plm serve {folder} --chat-template NAME|FILE (built in: {', '.join(BUILTIN)}), or save the "
            "tokenizer with one (plm sft does)"
        )
    name = next((n for n, b in BUILTIN.items() if b.source == own), None)
    return ChatTemplate(own, name=name), ""
