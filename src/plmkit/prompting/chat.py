"""Chat templates: Jinja sources exactly as Hugging Face stores them (tokenizer_config.json "chat_template").

    template = ChatTemplate.builtin("chatml")             # or ChatTemplate(tokenizer.chat_template)
    text = template.render(messages, add_generation_prompt=True, **special_token_variables(tokenizer))
    text, spans = template.render_with_spans(messages)    # spans: (start, end) chars of {% generation %}

A template is rendered as transformers' `apply_chat_template(..., tokenize=False)` renders it: a sandboxed,
immutable Jinja environment with trim_blocks and lstrip_blocks, loop controls (`{% break %}`), the
`raise_exception(message)` global and a `tojson` filter that does not escape HTML or non-ASCII. The
variables are `messages`, `add_generation_prompt` and the tokenizer's special tokens (`bos_token`,
`eos_token`, ...; see `special_token_variables`).

`{% generation %}...{% endgeneration %}` marks the text the assistant writes (the loss mask of supervised
fine-tuning, transformers' `return_assistant_tokens_mask`). Plain rendering drops the tags; rendering
with spans wraps each block in a one-off marker string, removes the markers afterwards and returns where
they stood, so blocks inside macros or `{% set %}` captures are located too.

Built-in templates (`BUILTIN`), each with `{% generation %}` around the assistant content and its
end-of-turn token: "chatml" (<|im_start|>role ... <|im_end|>), "qwen" (ChatML with Qwen2's default system
prompt "You are a helpful assistant.") and "llama3" (Meta Llama 3 Instruct headers, <|eot_id|>), and
"plain" (Alpaca-style "### Instruction:" / "### Response:" headers in plain text, each answer ended by the
tokenizer's eos_token: it needs no control token besides eos, so it fits any causal LM's tokenizer).

`chat_prompt_ids(tokenizer, messages)` renders a conversation for the assistant's next turn
(add_generation_prompt) with the tokenizer's own template and encodes it: the prompt generation and chat
feed a model, the same text supervised fine-tuning trained on up to the answer.
"""

from __future__ import annotations

import functools
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plmkit.errors import ConfigError, DataError, did_you_mean

if TYPE_CHECKING:
    from plmkit.tokenizer.base import Tokenizer

Message = Mapping[str, Any]  # {"role": "user", "content": "..."} (+ any keys a template reads)

# One line each (a newline after `}}` would be output; trim_blocks only eats those after `%}`).
_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ message['content'] + '<|im_end|>' + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2: ChatML, with a default system turn when the conversation brings none.
_QWEN = (
    "{% if messages and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}" + _CHATML
)

# Llama 3 Instruct: bos, then per turn a role header, the trimmed content and <|eot_id|>.
_LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ message['content'] | trim + '<|eot_id|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] | trim + '<|eot_id|>' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


# Plain text (Alpaca's headers): the answer and the tokenizer's eos_token are the trained span, so the
# model learns to end with EOS; "\n\n" separates turns (not after the last one).
_PLAIN = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Response:\n' }}"
    "{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% if not loop.last %}{{ '\n\n' }}{% endif %}"
    "{% else %}{{ '### ' + message['role'] + ':\n' + message['content'] + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)


@dataclass(frozen=True)
class _Builtin:
    source: str
    markers: tuple[str, ...]  # literal control tokens the template writes: each must be one special token


BUILTIN: dict[str, _Builtin] = {
    "chatml": _Builtin(_CHATML, ("<|im_start|>", "<|im_end|>")),
    "qwen": _Builtin(_QWEN, ("<|im_start|>", "<|im_end|>")),
    "llama3": _Builtin(_LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "plain": _Builtin(_PLAIN, ()),  # no control tokens; the tokenizer must have an eos token
}

_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")
_MARKS_VAR = "__plmkit_generation_marks__"  # render-time variable: (open, close) markers, or absent


@functools.lru_cache(maxsize=1)
def _environment():
    """The sandboxed Jinja environment every template compiles in (one per process)."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.nodes
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ConfigError("chat templates need jinja2; install it with `pip install jinja2`") from None

    class GenerationBlocks(jinja2.ext.Extension):
        """`{% generation %}body{% endgeneration %}`: renders body; when the render asks for spans
        (the marks variable is set), wraps it in the render's open / close markers."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_block"), [], [], body).set_lineno(lineno)

        @jinja2.pass_context
        def _block(self, context, caller) -> str:
            text = caller()
            marks = context.get(_MARKS_VAR)
            return f"{marks[0]}{text}{marks[1]}" if marks else text

    def raise_exception(message: str):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False) -> str:
        return json.dumps(
            value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlocks, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


def _plain(value: Any) -> Any:
    """A copy made of plain JSON types (what the template sees); None-valued message keys dropped."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class ChatTemplate:
    """A Jinja chat template (Hugging Face's format). `source` is the template text itself."""

    def __init__(self, source: str, name: str | None = None):
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(
                "a chat template must be a non-empty Jinja string (tokenizer_config.json chat_template)"
            )
        import jinja2

        self.source, self.name = source, name
        try:
            self._compiled = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(
                f"chat template {self._label}: Jinja syntax error at line {e.lineno}: {e.message}"
            ) from e
        self.has_generation_blocks = bool(_GENERATION_TAG.search(source))
        self.markers: tuple[str, ...] = BUILTIN[name].markers if name in BUILTIN else ()

    @property
    def _label(self) -> str:
        return f'"{self.name}"' if self.name else "(custom)"

    @classmethod
    def builtin(cls, name: str) -> ChatTemplate:
        """One of BUILTIN: "chatml", "qwen", "llama3", "plain"."""
        if name not in BUILTIN:
            raise ConfigError(
                f'unknown chat template "{name}"{did_you_mean(name, BUILTIN)}; built in: {", ".join(BUILTIN)}'
            )
        return cls(BUILTIN[name].source, name=name)

    @classmethod
    def resolve(cls, spec: str | None, tokenizer: Tokenizer | None = None) -> ChatTemplate:
        """A template from a recipe setting: a built-in name, Jinja source, or None for the tokenizer's own."""
        if spec is None:
            source = getattr(tokenizer, "chat_template", None)
            if not source:
                raise ConfigError(
                    "the tokenizer has no chat_template; set one (a built-in name: "
                    f"{', '.join(BUILTIN)}, or Jinja source) or use a tokenizer folder that has one"
                )
            return cls(source)
        if "{{" in spec or "{%" in spec:
            return cls(spec)
        return cls.builtin(spec)

    # ---- rendering --------------------------------------------------------------------------------
    def render(
        self, messages: Sequence[Message], add_generation_prompt: bool = False, **variables: Any
    ) -> str:
        """The conversation as text (transformers' apply_chat_template(..., tokenize=False))."""
        return self._render(messages, add_generation_prompt, variables)

    def render_with_spans(
        self, messages: Sequence[Message], add_generation_prompt: bool = False, **variables: Any
    ) -> tuple[str, list[tuple[int, int]]]:
        """(text, [(start_char, end_char) of each non-empty {% generation %} block]); text == render()."""
        nonce = secrets.token_hex(8)
        marks = (f"\x00<gen:{nonce}>", f"\x00</gen:{nonce}>")
        marked = self._render(messages, add_generation_prompt, {**variables, _MARKS_VAR: marks})
        pieces, spans, depth, start, length = [], [], 0, 0, 0
        for piece in re.split(f"({re.escape(marks[0])}|{re.escape(marks[1])})", marked):
            if piece == marks[0]:
                depth += 1
                start = length if depth == 1 else start
            elif piece == marks[1]:
                depth -= 1
                if depth == 0 and length > start:  # nested blocks count once, as the outer one
                    spans.append((start, length))
            else:
                pieces.append(piece)
                length += len(piece)
        return "".join(pieces), spans

    def _render(self, messages: Sequence[Message], add_generation_prompt: bool, variables: dict) -> str:
        import jinja2

        if isinstance(messages, (str, bytes)) or not all(isinstance(m, Mapping) for m in messages):
            raise DataError("a conversation must be a list of messages {role, content}")
        context = {
            **_plain(variables),
            "messages": _plain(list(messages)),
            "add_generation_prompt": add_generation_prompt,
        }
        if _MARKS_VAR in variables:
            context[_MARKS_VAR] = variables[_MARKS_VAR]
        try:
            return self._compiled.render(**context)
        except jinja2.exceptions.SecurityError as e:
            raise ConfigError(f"chat template {self._label} tried an unsafe operation: {e}") from e
        except jinja2.TemplateError as e:  # raise_exception(...) and undefined lookups: the data does not fit
            raise DataError(f"chat template {self._label} rejected the conversation: {e}") from e

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name or repr(self.source[:40] + '...')})"


def special_token_variables(tokenizer: Tokenizer) -> dict[str, str]:
    """{"bos_token": "<s>", "eos_token": "</s>", ...}: the tokenizer's role tokens, as transformers passes them."""
    from plmkit.tokenizer.special import ROLES

    tokens = tokenizer.special_tokens
    return {f"{role}_token": getattr(tokens, role) for role in ROLES if getattr(tokens, role) is not None}


def chat_prompt_ids(
    tokenizer: Tokenizer, messages: Sequence[Message], template: ChatTemplate | str | None = None
) -> list[int]:
    """The token ids of `messages` rendered for the assistant's next turn (add_generation_prompt=True) with
    `template` (a ChatTemplate, a built-in name or Jinja source; None: the tokenizer's own), encoded without
    added special tokens, as supervised fine-tuning encodes its conversations."""
    if not isinstance(template, ChatTemplate):
        template = ChatTemplate.resolve(template, tokenizer)
    text = template.render(messages, add_generation_prompt=True, **special_token_variables(tokenizer))
    return tokenizer.encode(text, add_special_tokens=False)
