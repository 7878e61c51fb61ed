"""`plm chat`: the session (template, end-of-turn stop, history kept and trimmed oldest-first), the command in a
pseudo-terminal (two turns, /reset, Ctrl-C during an answer), piped stdin answered line by line, and bad input
as one `error:` line with exit 2. The expected answers come from a ChatSession run in this process with the
same settings, so the command is checked against the library, token for token."""

from __future__ import annotations

import fcntl
import io
import os
import re
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
from chat_model import save_chat_model

from plmkit.cli import main
from plmkit.errors import ConfigError, DataError
from plmkit.io import load
from plmkit.prompting.chat import chat_prompt_ids
from plmkit.serve.chat import ChatSession, checkpoint_chat_template
from tiny import SRC

ENV = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "TERM": "dumb"}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("chat-models")
    return {
        # greedy decoding of this seed writes visible text at once and never ends its turn by itself
        "long": save_chat_model(folder / "long", max_positions=4096, seed=5),
        "short": save_chat_model(folder / "short", max_positions=64),
        "bare": save_chat_model(folder / "bare", template=None),
    }


def session(folder: Path, **options) -> ChatSession:
    model, tokenizer = load(folder)
    return ChatSession(model, tokenizer, checkpoint_chat_template(folder, tokenizer, None), **options)


def answer(chat: ChatSession, text: str) -> str:
    """One turn as the command runs it: the answer."""
    return turn(chat, text)[0]


def turn(chat: ChatSession, text: str) -> tuple[str, str]:
    """One turn as the command runs it: (the answer, what a terminal shows from it to the next prompt)."""
    pieces = chat.reply(chat.prompt(text))
    reply = "".join(pieces)
    chat.record(text, reply)
    cut = pieces.finish.reason == "max_new_tokens"
    return reply, reply + "\n" + (f"[answer cut at --max-new-tokens={chat.max_new_tokens}]\n" if cut else "")


def run_piped(lines: str, *args: str, monkeypatch, capsys) -> tuple[int, str, str]:
    """`printf LINES | plm chat ARGS` in this process."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    code = main(["chat", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---- the session ------------------------------------------------------------------------------------
def test_turns_render_the_whole_conversation_and_stop_at_the_end_of_turn_token(models):
    chat = session(models["long"], temperature=0.0, max_new_tokens=8, system="be brief")
    im_end = chat.tokenizer.token_to_id("<|im_end|>")
    assert chat.stop_ids == [im_end, chat.tokenizer.eos_id]
    first = answer(chat, "hello")
    prompt = chat.prompt("and you?")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": first},
        {"role": "user", "content": "and you?"},
    ]
    assert (
        prompt.ids == chat_prompt_ids(chat.tokenizer, messages, chat.template) and prompt.dropped_turns == 0
    )
    chat.reset()
    assert chat.prompt("hi").ids == chat_prompt_ids(
        chat.tokenizer, [messages[0], {"role": "user", "content": "hi"}]
    )


def test_an_end_of_turn_token_ends_the_answer(models):
    """A model certain to write <|im_end|> (a bias on its head) gives an empty answer ended there."""
    from plmkit.model import ModelConfig, build_model

    _, tokenizer = load(models["short"])
    config = ModelConfig(
        family="causal", vocab_size=tokenizer.vocab_size, d_model=32, n_layer=1, n_head=2, d_ff=64,
        max_positions=64, tie_embeddings=False, lm_head_bias=True,
    )  # fmt: skip
    model = build_model(config).eval()
    chat = ChatSession(model, tokenizer, checkpoint_chat_template("short", tokenizer, None), temperature=0.0)
    with torch.no_grad():
        model.lm_head.decoder.bias[tokenizer.token_to_id("<|im_end|>")] = 1e3
    pieces = chat.reply(chat.prompt("hello"))
    assert "".join(pieces) == "" and str(pieces.finish) == "[stopped at end-of-text after 0 tokens]"


def test_history_is_trimmed_oldest_turn_first_and_the_system_message_kept(models):
    chat = session(models["short"], temperature=0.0, max_new_tokens=16, system="sys")
    chat.history = [
        {"role": "user", "content": "one two three"},
        {"role": "assistant", "content": "four five six"},
        {"role": "user", "content": "seven eight"},
        {"role": "assistant", "content": "nine ten"},
    ]
    before = list(chat.history)
    prompt = chat.prompt("hello there, how are you today?")
    assert len(prompt.ids) <= 64 - 16 and prompt.dropped_turns >= 1
    assert chat.history == before[2 * prompt.dropped_turns :]  # whole turns, oldest first
    kept = [
        {"role": "system", "content": "sys"},
        *chat.history,
        {"role": "user", "content": "hello there, how are you today?"},
    ]
    assert prompt.ids == chat_prompt_ids(chat.tokenizer, kept, chat.template)  # the system message stays
    with pytest.raises(DataError, match=r"this message needs \d+ prompt tokens .* shorten it"):
        chat.prompt("hello there " * 40)
    assert chat.history == before[2 * prompt.dropped_turns :]  # a refused message drops nothing


def test_bad_settings_fail_before_the_chat(models, tmp_path):
    model, tokenizer = load(models["bare"])
    with pytest.raises(ConfigError, match="has no chat template .* pass --chat-template NAME or FILE"):
        checkpoint_chat_template(models["bare"], tokenizer, None)
    with pytest.raises(ConfigError, match='neither a built-in template .*did you mean "chatml"'):
        checkpoint_chat_template(models["bare"], tokenizer, "chatm")
    with pytest.raises(ConfigError, match=r"writes <\|start_header_id\|>"):
        checkpoint_chat_template(models["bare"], tokenizer, "llama3")
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}", encoding="utf-8")
    assert checkpoint_chat_template(models["bare"], tokenizer, str(jinja)).source == jinja.read_text()
    with pytest.raises(ConfigError, match="leaves no room for the conversation"):
        ChatSession(
            model,
            tokenizer,
            checkpoint_chat_template(models["bare"], tokenizer, "chatml"),
            max_new_tokens=256,
        )


def test_a_seq2seq_model_chats_within_its_encoder_and_decoder_windows(models):
    from tiny import tiny_model

    _, tokenizer = load(models["short"])
    model = tiny_model("seq2seq", vocab_size=tokenizer.vocab_size)  # learned positions, max_positions 32
    template = checkpoint_chat_template("short", tokenizer, None)
    chat = ChatSession(model, tokenizer, template, temperature=0.0, max_new_tokens=4)
    assert chat.budget == 32  # the whole prompt goes to the encoder
    pieces = chat.reply(chat.prompt("hi"))
    assert isinstance("".join(pieces), str) and pieces.finish is not None
    assert ChatSession(model, tokenizer, template).max_new_tokens == 31  # its start token + the answer
    with pytest.raises(ConfigError, match="--max-new-tokens=32 leaves no room"):
        ChatSession(model, tokenizer, template, max_new_tokens=32)


# ---- piped stdin: one answer per line ----------------------------------------------------------------
def test_piped_lines_get_one_answer_each_with_commands_between(models, monkeypatch, capsys):
    args = ["--temperature", "1", "--seed", "3", "--max-new-tokens", "6"]
    lines = "hello\n\n/system be brief\nhow are you\n/reset\n/temp 0\nbye\n"
    code, out, err = run_piped(lines, str(models["short"]), *args, monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0, err
    chat = session(models["short"], temperature=1.0, seed=3, max_new_tokens=6)
    expected = [answer(chat, "hello")]
    chat.system = "be brief"
    expected.append(answer(chat, "how are you"))
    chat.reset()
    chat.temperature = 0.0
    expected.append(answer(chat, "bye"))
    assert out == "".join(a + "\n" for a in expected)
    assert (
        "[system message set: be brief]" in err
        and "[conversation reset]" in err
        and "[temperature 0 (greedy)]" in err
    )


def test_piped_trimming_notice_and_a_refused_message(models, monkeypatch, capsys):
    lines = "one two three four\n" * 5 + "hello there " * 40 + "\nlast\n"
    code, out, err = run_piped(
        lines,
        str(models["short"]),
        "--temperature",
        "0",
        "--max-new-tokens",
        "16",
        monkeypatch=monkeypatch,
        capsys=capsys,
    )
    assert code == 0, err
    assert (
        "[history trimmed: the oldest 1 turn left the conversation to fit the context window of 64 tokens]"
        in err
    )
    refused = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(refused) == 1 and "this message needs" in refused[0]
    chat = session(models["short"], temperature=0.0, max_new_tokens=16)
    expected = [answer(chat, "one two three four") for _ in range(5)] + [""] + [answer(chat, "last")]
    assert out == "".join(a + "\n" for a in expected)  # the refused line's answer is empty


def test_bad_commands_and_temperatures_are_one_line_and_the_chat_goes_on(models, monkeypatch, capsys):
    lines = "/tmp 2\n/temp -1\n/temp hot\n/quit\nnever read\n"
    code, out, err = run_piped(lines, str(models["short"]), monkeypatch=monkeypatch, capsys=capsys)
    assert code == 0 and out == ""
    assert 'error: unknown command /tmp (did you mean "/temp"?)' in err
    assert "error: /temp=-1.0 is out of range: must be >= 0 (0: greedy decoding)" in err
    assert 'error: /temp="hot" must be a number >= 0' in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["{bare}"], "has no chat template"),
        (["{bare}", "--chat-template", "chatm"], "is neither a built-in template"),
        (["{empty}"], "is not a model checkpoint"),
        (["{missing}"], "does not exist"),
        (["{masked}"], "holds a masked model, which cannot write an answer"),
        (["{short}", "--max-new-tokens", "64"], "--max-new-tokens=64 leaves no room"),
        (["{short}", "--temperature", "-1"], "--temperature=-1.0 is out of range"),
    ],
)
def test_bad_input_is_one_error_line_and_exit_2(models, tmp_path, monkeypatch, capsys, args, message):
    from plmkit.io import save
    from tiny import tiny_model

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a model", encoding="utf-8")
    _, tokenizer = load(models["short"])
    masked = save(tiny_model("masked", vocab_size=tokenizer.vocab_size), tokenizer, tmp_path / "masked")
    folders = {
        **{k: str(v) for k, v in models.items()},
        "empty": empty,
        "missing": tmp_path / "nope",
        "masked": masked,
    }
    code, out, err = run_piped(
        "hello\n", *[a.format(**folders) for a in args], monkeypatch=monkeypatch, capsys=capsys
    )
    assert code == 2 and out == ""
    assert err.count("error:") == 1 and err.startswith("error: ") and message in err, err


def test_a_checkpoint_without_a_template_chats_with_one_given(models, monkeypatch, capsys):
    code, out, err = run_piped(
        "hello\n", str(models["bare"]), "--chat-template", "chatml", "--temperature", "0", "--max-new-tokens", "4",
        monkeypatch=monkeypatch, capsys=capsys,
    )  # fmt: skip
    assert code == 0 and out.count("\n") >= 1, err


def test_the_real_command_from_a_pipe(models):
    """`printf 'hi\\nbye\\n' | plm chat CKPT` in a fresh interpreter; and its no-template error line."""
    args = [sys.executable, "-m", "plmkit", "chat", "--temperature", "0", "--max-new-tokens", "6"]
    result = subprocess.run(
        [*args, str(models["short"])], input=b"hi\nbye\n", capture_output=True, env=ENV, timeout=120
    )
    assert result.returncode == 0, result.stderr.decode()
    chat = session(models["short"], temperature=0.0, max_new_tokens=6)
    assert result.stdout.decode() == answer(chat, "hi") + "\n" + answer(chat, "bye") + "\n"
    assert b">>>" not in result.stdout  # no prompt when not in a terminal
    result = subprocess.run(
        [*args, str(models["bare"])], input=b"hi\n", capture_output=True, env=ENV, timeout=120
    )
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "has no chat template" in lines[0] and "--chat-template" in lines[0]


# ---- in a terminal ----------------------------------------------------------------------------------
class Terminal:
    """`python -m plmkit chat ARGS` on a pseudo-terminal: the child's controlling terminal, so that \\x03 typed
    there is the SIGINT a user's Ctrl-C sends. `seen` is the screen so far without \\r and escape sequences."""

    def __init__(self, *args: str) -> None:
        master, slave = os.openpty()

        def as_a_shell_starts_it() -> None:
            os.setsid()  # a new session whose controlling terminal is the pty (fd 0, dup'ed before this runs)
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # not an ignore inherited from this process

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "plmkit", "chat", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=ENV,
            preexec_fn=as_a_shell_starts_it,
        )
        os.close(slave)
        self.master, self.raw, self.cursor = master, b"", 0

    @property
    def seen(self) -> str:
        text = self.raw.decode("utf-8", errors="replace").replace("\r", "")
        return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if ready:
            try:
                self.raw += os.read(self.master, 4096)
            except OSError:  # the child closed the terminal
                time.sleep(timeout)

    def expect(self, text: str, timeout: float = 90) -> str:
        """Wait for `text` after what earlier expects consumed; -> the screen from there up to its end."""
        deadline = time.time() + timeout
        while (at := self.seen.find(text, self.cursor)) < 0:
            if time.time() > deadline:
                raise AssertionError(f"{text!r} not seen in {timeout} s; screen:\n{self.seen[-2000:]}")
            self._read(0.1)
        start, self.cursor = self.cursor, at + len(text)
        return self.seen[start : self.cursor]

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal():
    opened: list[Terminal] = []
    yield lambda *args: opened.append(Terminal(*args)) or opened[-1]
    for t in opened:
        t.close()


def test_two_turns_and_reset_in_a_terminal(models, terminal):
    t = terminal(str(models["long"]), "--temperature", "0", "--max-new-tokens", "8")
    chat = session(models["long"], temperature=0.0, max_new_tokens=8)
    assert "/reset" in t.expect(">>> ")  # the commands are listed at the start
    t.type("hello\r")
    assert t.expect(">>> ") == f"hello\n{turn(chat, 'hello')[1]}>>> "
    t.type("how are you?\r")
    assert t.expect(">>> ") == f"how are you?\n{turn(chat, 'how are you?')[1]}>>> "
    t.type("/reset\r")
    assert t.expect(">>> ") == "/reset\n[conversation reset]\n>>> "
    chat.reset()
    t.type("hello\r")
    assert t.expect(">>> ") == f"hello\n{turn(chat, 'hello')[1]}>>> "
    t.type("/quit\r")
    assert t.proc.wait(timeout=30) == 0


@pytest.mark.slow  # a real subprocess, an answer left running: ~5 s
def test_ctrl_c_stops_the_answer_not_the_program(models, terminal):
    t = terminal(str(models["long"]), "--temperature", "0", "--max-new-tokens", "4000")
    t.expect(">>> ")
    t.type("hello\r")
    t.expect("hello\n")
    deadline = time.time() + 90
    while len(t.seen) < t.cursor + 20 and time.time() < deadline:  # the answer is being written
        t._read(0.1)
    t.type("\x03")
    t.expect("[interrupted]\n>>> ", timeout=30)
    assert t.proc.poll() is None  # still running, and answering
    t.type("/system be brief\r")
    t.expect("[system message set: be brief]\n>>> ")
    # Python's input() misses a SIGINT that lands between printing the prompt and waiting for a key (it
    # checks for signals only when the wait is interrupted); a person never types that fast
    time.sleep(0.5)
    t.type("\x03")
    t.expect("Ctrl-C again or /quit to leave)\n>>> ")
    time.sleep(0.5)
    t.type("\x03")  # the second in a row quits
    assert t.proc.wait(timeout=30) == 0
