"""`plm serve` as a user starts it: a subprocess on a free port answers, Ctrl-C stops it cleanly; a port in
use, a folder that is not a model, a model that is not a causal LM, an unknown chat template and a missing
serve extra each give one `error:` line and exit 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest

from tiny import SRC
from train_helpers import run_cli

pytest.importorskip("fastapi")


def plm(*args: str) -> list[str]:
    return [sys.executable, "-m", "plmkit", *args]


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}


def one_error_line(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_serve_answers_and_stops_on_ctrl_c(chat_lm):
    child = subprocess.Popen(
        plm("serve", str(chat_lm), "--port", "0", "--max-batch", "4"),
        env=env(),
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        line = child.stderr.readline()  # printed once the model is loaded and the port bound
        assert line.startswith("plm serve: chat-lm at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        body = json.dumps({"prompt": "red green", "max_tokens": 4, "temperature": 0}).encode()
        request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            answer = json.loads(r.read())
        assert answer["object"] == "text_completion" and answer["usage"]["completion_tokens"] >= 1
        child.send_signal(signal.SIGINT)
        assert child.wait(timeout=30) == 130  # plm's Ctrl-C code, after uvicorn's graceful stop
        rest = child.stderr.read()
        assert "Traceback" not in rest and rest.strip().splitlines()[-1] == "interrupted"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_port_in_use(chat_lm, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code, _, err = run_cli(["serve", chat_lm, "--port", port], capsys)
    line = one_error_line(code, err)
    assert f"port {port}" in line and "in use" in line and "--port" in line


def test_not_a_model_folder(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    line = one_error_line(*run_cli(["serve", tmp_path, "--port", "0"], capsys)[::2])
    assert "not a model checkpoint" in line


def test_not_a_causal_lm(tmp_path, capsys):
    from finetune_helpers import save_base

    bert = save_base(tmp_path / "bert")
    line = one_error_line(*run_cli(["serve", bert, "--port", "0"], capsys)[::2])
    assert "causal LMs" in line


def test_unknown_chat_template(plain_lm, capsys):
    line = one_error_line(
        *run_cli(["serve", plain_lm, "--port", "0", "--chat-template", "chatmel"], capsys)[::2]
    )
    assert "chatml" in line
    # a built-in template whose control tokens the tokenizer lacks
    line = one_error_line(
        *run_cli(["serve", plain_lm, "--port", "0", "--chat-template", "chatml"], capsys)[::2]
    )
    assert "<|im_start|>" in line and "plain" in line


def test_missing_serve_extra(tmp_path):
    script = (
        "import sys; sys.modules['fastapi'] = None; sys.modules['uvicorn'] = None\n"
        "from plmkit.cli import main\n"
        f"raise SystemExit(main(['serve', {str(tmp_path)!r}]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env(), capture_output=True, text=True, timeout=120
    )
    line = one_error_line(done.returncode, done.stderr)
    assert line == "error: plm serve needs the serve extra: pip install 'plmkit[serve]'"
