"""Terminal chat with a saved model (`plm chat CKPT`): a session that keeps the conversation, and the loop.

    model, tokenizer = plmkit.load(checkpoint)
    template = checkpoint_chat_template(checkpoint, tokenizer, None)    # its own, or a built-in / file
    session = ChatSession(model, tokenizer, template, temperature=0.0)
    for piece in session.reply("Hello"): print(piece, end="")      # then session.record(user, answer)
    chat_loop(session, interactive=sys.stdin.isatty())

A turn renders the system message, the kept history and the new user message with the chat template for the
assistant's next turn (plmkit.prompting.chat.chat_prompt_ids: the text supervised fine-tuning trained on up
to the answer) and streams the answer (plmkit.generation.stream, which never mutates the model). Decoding
stops at the template's end-of-turn token (plmkit.prompting.sft_data.end_of_turn_ids: ChatML's <|im_end|>,
Llama 3's <|eot_id|>, else the tokenizer's eos).

The conversation stays within the model's context window: the prompt and max_new_tokens must fit in
max_positions (a seq2seq model: the prompt alone, its encoder input). When they do not, whole turns (a
user message and its answer) leave the history oldest first, the system message always kept, and a notice
on stderr says so; a message too long even alone is refused with an `error:` line and the chat goes on.

The loop reads a line, runs a command or answers it. Commands: /reset (forget the history), /system TEXT
(set the system message; /system alone clears it), /temp X (0: greedy), /help, /quit. In a terminal,
Ctrl-C stops the answer being written (its text so far stays in the history) and two Ctrl-C in a row at
the prompt quit, as does Ctrl-D. From a pipe (`printf 'hi\\nbye\\n' | plm chat CKPT`) there is no prompt
and each non-empty input line gets one answer on stdout, ended by a newline; notices go to stderr.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from plmkit.config.fields import Range
from plmkit.errors import ConfigError, DataError, PlmkitError, did_you_mean
from plmkit.prompting.chat import BUILTIN, ChatTemplate, chat_prompt_ids
from plmkit.prompting.sft_data import check_template_tokens, end_of_turn_ids

if TYPE_CHECKING:
    from torch import nn

    from plmkit.generation.text import TextStream
    from plmkit.tokenizer.base import Tokenizer

# The temperatures a chat accepts (--temperature and /temp). This module imports no torch at load, so
# that `plm --help` (which declares the options) stays fast.
CHAT_TEMPERATURE = Range(ge=0, off="0", means="greedy decoding")
GENERATING_FAMILIES = ("causal", "prefix", "seq2seq")
PROMPT = ">>> "
COMMANDS = ("/reset", "/system", "/temp", "/help", "/quit")
HELP = "commands: /reset, /system TEXT, /temp X (0: greedy), /help, /quit"


def checkpoint_chat_template(
    checkpoint: str | Path, tokenizer: Tokenizer | None, spec: str | None
) -> ChatTemplate:
    """The template a chat with `checkpoint` renders with: `spec` (a built-in name or a Jinja file), else the
    tokenizer's own (tokenizer_config.json chat_template / chat_template.jinja). ConfigError naming the fix
    when there is none or the tokenizer lacks the built-in's control tokens."""
    if tokenizer is None:
        raise ConfigError(
            f"{checkpoint} has no tokenizer, so a conversation cannot be encoded; use a checkpoint saved with its "
            "tokenizer (plmkit.save(model, tokenizer, DIR) or a Hugging Face folder with tokenizer.json)"
        )
    if spec is None:
        if not tokenizer.chat_template:
            raise ConfigError(
                f"{checkpoint} has no chat template (no chat_template in tokenizer_config.json, no "
                f"chat_template.jinja); pass --chat-template NAME or FILE (built in: {', '.join(BUILTIN)}; "
                "plain fits any tokenizer with an eos token), or fine-tune it with plm sft, which saves one"
            )
        return ChatTemplate(tokenizer.chat_template)
    if spec in BUILTIN:
        template = ChatTemplate.builtin(spec)
        check_template_tokens(tokenizer, template)
        if spec == "plain" and tokenizer.eos_id is None:
            raise ConfigError(
                "--chat-template plain ends answers with the tokenizer's eos token but the tokenizer of "
                f"{checkpoint} has none; use a template whose end-of-turn token the tokenizer has"
            )
        return template
    path = Path(spec)
    if path.is_file():
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--chat-template {path}: cannot read it as UTF-8 text ({e})") from e
        return ChatTemplate(source)
    raise ConfigError(
        f"--chat-template {spec!r} is neither a built-in template ({', '.join(BUILTIN)})"
        f"{did_you_mean(spec, BUILTIN)} nor a file; give a name or the path of a Jinja file"
    )


def context_budget(model: nn.Module, max_new_tokens: int) -> int | None:
    """How many prompt tokens a turn may use: max_positions less max_new_tokens (a seq2seq model: its
    encoder's max_positions); None when positions do not bound the length (relative positions)."""
    from plmkit.generation.config import ABSOLUTE_POSITIONS

    config = model.config
    if config.position not in ABSOLUTE_POSITIONS:
        return None
    if config.family == "seq2seq":  # the decoder holds its start token + the answer
        return config.max_positions if 1 + max_new_tokens <= config.max_positions else 0
    return config.max_positions - max_new_tokens


def default_max_new_tokens(model: nn.Module) -> int:
    """Half the context window (an answer as long as its prompt), at most 512."""
    from plmkit.generation.config import ABSOLUTE_POSITIONS

    config = model.config
    if config.position not in ABSOLUTE_POSITIONS:
        return 512
    if config.family == "seq2seq":
        return min(512, config.max_positions - 1)
    return max(1, min(512, config.max_positions // 2))


@dataclass
class Prompt:
    """A turn's prompt: its token ids and how many old turns left the history to make room for it."""

    ids: list[int]
    dropped_turns: int


@dataclass
class ChatSession:
    """One conversation with a model: the system message, the history (user / assistant messages, whole
    turns) and the sampling settings. `reply` streams an answer; `record` adds the turn to the history."""

    model: Any
    tokenizer: Any
    template: ChatTemplate
    max_new_tokens: int | None = None  # None: default_max_new_tokens
    temperature: float = 0.7  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None  # turn k samples with seed + k: a scripted chat is reproducible
    dtype: str = "fp32"
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)
    turns: int = 0  # answers started so far (the seed offset)

    def __post_init__(self) -> None:
        family = self.model.config.family
        if family not in GENERATING_FAMILIES:
            raise ConfigError(
                f"the checkpoint holds a {family} model, which cannot write an answer; chat needs a causal, "
                "prefix or seq2seq language model"
            )
        if self.max_new_tokens is None:
            self.max_new_tokens = default_max_new_tokens(self.model)
        self.budget = context_budget(self.model, self.max_new_tokens)
        if self.budget is not None and self.budget < 1:
            raise ConfigError(
                f"--max-new-tokens={self.max_new_tokens} leaves no room for the conversation in the model's "
                f"context window of {self.model.config.max_positions} tokens; lower it"
            )
        self.stop_ids = end_of_turn_ids(
            self.tokenizer, self.template
        )  # also renders: a bad template fails here

    # ---- the conversation -------------------------------------------------------------------------
    def messages(self, user_text: str, history: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return [
            *system,
            *(self.history if history is None else history),
            {"role": "user", "content": user_text},
        ]

    def prompt(self, user_text: str) -> Prompt:
        """The prompt of the next turn; the oldest whole turns leave the history until it fits the window.
        DataError when the message (with the system message) does not fit even alone."""
        history = list(self.history)
        while True:
            ids = chat_prompt_ids(self.tokenizer, self.messages(user_text, history), self.template)
            if self.budget is None or len(ids) <= self.budget:
                break
            if not history:
                raise DataError(
                    f"this message needs {len(ids)} prompt tokens (with the system message and the template) "
                    f"but the context window of {self.model.config.max_positions} tokens leaves {self.budget} "
                    f"beside --max-new-tokens={self.max_new_tokens}; shorten it (or the /system message) or "
                    "lower --max-new-tokens"
                )
            history = history[_turn_end(history) :]
        dropped = _count_turns(self.history) - _count_turns(history)
        self.history = history
        return Prompt(ids, dropped)

    def reply(self, prompt: Prompt) -> TextStream:
        """The answer to `prompt`, streamed piece by piece (`.finish` says why it ended)."""
        from plmkit.generation import stream

        sampling = self.temperature > 0
        seed = None if self.seed is None else self.seed + self.turns
        self.turns += 1
        return stream(
            self.model,
            self.tokenizer,
            prompt.ids,
            max_new_tokens=self.max_new_tokens,
            do_sample=sampling,
            temperature=self.temperature if sampling else 1.0,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=seed,
            eos_token_id=self.stop_ids or None,
            dtype=self.dtype,
        )

    def record(self, user_text: str, answer: str) -> None:
        self.history += [{"role": "user", "content": user_text}, {"role": "assistant", "content": answer}]

    def reset(self) -> None:
        self.history = []


def _turn_end(history: list[dict[str, str]]) -> int:
    """Index just past the first whole turn: its user message and everything up to the next user message."""
    for i in range(1, len(history)):
        if history[i]["role"] == "user":
            return i
    return len(history)


def _count_turns(history: list[dict[str, str]]) -> int:
    return sum(1 for m in history if m["role"] == "user")


# ---- the loop ---------------------------------------------------------------------------------------
@dataclass
class _Io:
    out: TextIO
    err: TextIO
    interactive: bool

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def notice(self, text: str) -> None:
        self.out.flush()  # a notice comes after the text it is about
        self.err.write(text + "\n")
        self.err.flush()


def chat_loop(
    session: ChatSession,
    interactive: bool,
    read_line: Callable[[str], str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Read, answer, repeat until /quit, end of input, or two Ctrl-C in a row at the prompt. -> exit code 0.
    `read_line(prompt)` (default: input() in a terminal, stdin lines otherwise) raises EOFError at the end."""
    io = _Io(out or sys.stdout, err or sys.stderr, interactive)
    read = read_line or (_terminal_line if interactive else _piped_line)
    if interactive:
        io.notice(f"{HELP}; Ctrl-C stops an answer, twice in a row quits")
    interrupted = False  # the last thing that happened was a Ctrl-C
    while True:
        try:
            line = read(PROMPT if interactive else "")
        except EOFError:
            if interactive:
                io.write("\n")
            return 0
        except KeyboardInterrupt:
            if interrupted or not interactive:
                io.write("\n")
                return 0
            io.write("\n")
            io.notice("(Ctrl-C again or /quit to leave)")
            interrupted = True
            continue
        interrupted = False
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            if _command(session, text, io):
                return 0
            continue
        interrupted = _answer(session, text, io)


def _terminal_line(prompt: str) -> str:
    import readline  # noqa: F401  (line editing and history for input())

    return input(prompt)


def _piped_line(prompt: str) -> str:
    line = sys.stdin.readline()
    if not line:
        raise EOFError
    return line


def _answer(session: ChatSession, text: str, io: _Io) -> bool:
    """Stream one answer; -> True when Ctrl-C stopped it. A user error (a message too long, a template that
    rejects the conversation) is one `error:` line and the chat goes on."""
    pieces: list[str] = []
    stream = None
    try:
        try:
            prompt = session.prompt(text)
        except PlmkitError as e:
            io.notice(f"error: {e}")
            if not io.interactive:
                io.write("\n")  # one answer line per input line, even an empty one
            return False
        if prompt.dropped_turns:
            turns = "turn" if prompt.dropped_turns == 1 else "turns"
            io.notice(
                f"[history trimmed: the oldest {prompt.dropped_turns} {turns} left the conversation to fit "
                f"the context window of {session.model.config.max_positions} tokens]"
            )
        stream = session.reply(prompt)
        for piece in stream:
            io.write(piece)
            pieces.append(piece)
    except KeyboardInterrupt:
        io.write("\n")
        io.notice("[interrupted]")
        if stream is not None:
            stream.close()  # frees the decoder's cache at once
            session.record(text, "".join(pieces))  # what was shown stays in the conversation
        return True
    io.write("\n")
    session.record(text, "".join(pieces))
    if stream.finish is not None and stream.finish.reason == "max_new_tokens":
        io.notice(f"[answer cut at --max-new-tokens={session.max_new_tokens}]")
    return False


def _command(session: ChatSession, text: str, io: _Io) -> bool:
    """Run a /command; -> True for /quit."""
    name, _, argument = text.partition(" ")
    argument = argument.strip()
    if name == "/quit":
        return True
    if name == "/reset":
        session.reset()
        io.notice("[conversation reset]")
    elif name == "/system":
        session.system = argument or None
        io.notice(f"[system message set: {argument}]" if argument else "[system message cleared]")
    elif name == "/temp":
        try:
            session.temperature = CHAT_TEMPERATURE.option(float, "/temp")(argument)
        except ConfigError as e:
            io.notice(f"error: {e}")
        else:
            io.notice(
                f"[temperature {session.temperature:g}{' (greedy)' if not session.temperature else ''}]"
            )
    elif name == "/help":
        io.notice(HELP)
    else:
        io.notice(f"error: unknown command {name}{did_you_mean(name, COMMANDS)}; {HELP}")
    return False
