"""Starting the server: the port is bound first (a port in use fails before the model loads), then the
model is loaded and checked, the batcher's thread starts and uvicorn serves the app on that socket.

    serve("runs/sft/best", ServeSettings(port=8000))            # plm serve: blocks until Ctrl-C
    with ServerThread(app, "127.0.0.1", 0) as server:           # tests and benchmarks: a free port
        openai.OpenAI(base_url=server.url + "/v1", api_key="-")
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
import time
from pathlib import Path

from plmkit.errors import ConfigError

EXTRA_MISSING = "plm serve needs the serve extra: pip install 'plmkit[serve]'"


def check_extra() -> None:
    """ConfigError (one `error:` line) when FastAPI or uvicorn is not installed."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(EXTRA_MISSING) from None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or ConfigError naming the problem."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(
            f"--host {host}: not an address this machine can listen on ({e.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another server?); choose another with --port"
            ) from None
        if e.errno == errno.EACCES:
            raise ConfigError(
                f"permission denied to listen on {host}:{port}; use a port above 1023"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def serve(
    checkpoint: str | Path,
    settings,
    name: str | None = None,
    chat_template: str | None = None,
    max_len: int | None = None,
    dtype: str = "fp32",
    log_level: str = "warning",
) -> None:
    """`plm serve`: bind, load, serve until interrupted (Ctrl-C / SIGTERM: a graceful stop)."""
    check_extra()
    import uvicorn

    from plmkit.serve.app import build_app
    from plmkit.serve.batcher import Batcher
    from plmkit.serve.served import load_served

    sock = bind(settings.host, settings.port)
    try:
        served = load_served(checkpoint, name=name, chat_template=chat_template, max_len=max_len, dtype=dtype)
        batcher = Batcher(served, settings.max_batch, settings.max_queue)
    except BaseException:
        sock.close()
        raise
    app = build_app(served, batcher, settings)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    print(
        f"plm serve: {served.name} at http://{shown}:{port} (OpenAI API under /v1, chat page at /; "
        f"max batch {settings.max_batch}, context {served.max_len} tokens"
        + (", API key required" if settings.api_key else "")
        + "); Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=5))
    try:
        server.run(sockets=[sock])
    finally:
        batcher.close()
        sock.close()


class ServerThread:
    """uvicorn serving `app` in a background thread (tests, benchmarks): `url` once started; the context
    manager stops it."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        import uvicorn

        self.sock = bind(host, port)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        # log_config=None: uvicorn's default applies logging.config.dictConfig, which closes every logging
        # handler of the host process (and the streams they own), not only uvicorn's
        config = uvicorn.Config(app, log_config=None, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
