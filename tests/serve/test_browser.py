"""The web chat page in a real browser: headless Chromium from Debian's packages (/usr/bin/chromium), driven by
playwright's Python API with that system browser (never `playwright install`), against `plm serve` started
here on a free port. It loads `/`, sends a message, sees the answer stream in (it grows in several steps) and
end equal to the server's own non-streamed answer, and saves a screenshot.

Run it: `apt-get install chromium` (Debian) and the playwright Python package, then
`pytest tests/serve/test_browser.py`. Without them it skips and says which is missing. The screenshot goes to
the test's tmp_path; PLMKIT_SCREENSHOT=1 also writes docs/chat-page.png (the README's picture).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from chat_model import save_chat_model

from tiny import ROOT, SRC

CHROMIUM = Path("/usr/bin/chromium")
# no network beyond localhost, no first-run / sync / update traffic, no GPU in a container
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
MESSAGE = "Hello! Who are you?"


@pytest.fixture(scope="module")
def sync_playwright():
    """playwright's entry point, or a skip naming what is missing (checked before the server starts)."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: install Debian's chromium package (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip(
            "the playwright Python package is absent (pip install playwright; no browser download needed)"
        )
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        pytest.skip("plm serve needs the serve extra (fastapi, uvicorn)")
    return sync_playwright


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def server(sync_playwright, tmp_path_factory):
    """`plm serve CKPT --port 0` in a subprocess -> its base URL (read from its start line)."""
    model = save_chat_model(tmp_path_factory.mktemp("browser") / "chat", max_positions=256, seed=5)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "plmkit", "serve", str(model), "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stderr.readline()  # "plm serve: NAME at http://127.0.0.1:PORT (...)"
        found = re.search(r"http://[\w.\[\]:]+", line)
        assert found, (
            f"plm serve did not start: {line}{proc.stderr.read() if proc.poll() is not None else ''}"
        )
        url = found.group(0)
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5):
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        proc.stderr.close()


@pytest.mark.slow  # a server and a browser start: ~10 s
def test_the_page_streams_an_answer_in_a_browser(sync_playwright, server, tmp_path):
    models = json.load(urllib.request.urlopen(server + "/v1/models", timeout=30))
    model = models["data"][0]["id"]
    expected = _post(
        server + "/v1/chat/completions",
        {
            "model": model,
            "messages": [{"role": "user", "content": MESSAGE}],
            "temperature": 0,
            "max_tokens": 48,
        },
    )["choices"][0]["message"]["content"]
    assert expected, "the tiny model's greedy answer is empty: nothing to watch stream in"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 540})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server + "/")
            page.wait_for_function(f"document.getElementById('model').textContent === {json.dumps(model)}")
            page.click("#settings summary")  # greedy and 48 tokens, as the reference request
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "48")
            page.click("#settings summary")
            # count the answer's text updates as they happen: a streamed answer grows in several steps
            page.evaluate(
                """() => {
                window.answerUpdates = 0;
                new MutationObserver((records) => {
                  for (const r of records)
                    if (r.target.closest && r.target.closest('.message.assistant')) window.answerUpdates++;
                }).observe(document.getElementById('messages'), {childList: true, subtree: true});
            }"""
            )
            page.fill("#input", MESSAGE)
            page.press("#input", "Enter")
            page.wait_for_selector(".message.user >> text=" + MESSAGE)
            page.wait_for_selector(".message.assistant[data-done]", timeout=60_000)
            answer = page.text_content(".message.assistant .content")
            updates = page.evaluate("window.answerUpdates")
            note = page.text_content(".message.assistant .note")
            screenshot = tmp_path / "chat-page.png"
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    assert not errors, errors
    assert "error" not in note, note
    assert answer == expected  # the streamed pieces join to the server's own answer
    assert updates >= 3, f"the answer appeared in {updates} updates: not streamed"
    assert screenshot.stat().st_size > 1000
    if os.environ.get("PLMKIT_SCREENSHOT") == "1":
        shutil.copy(screenshot, ROOT / "docs" / "chat-page.png")
