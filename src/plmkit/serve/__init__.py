"""Using a model the way people use models today: `plm chat` in a terminal and an OpenAI-compatible HTTP
server with continuous batching (`plm serve`) and a web chat page.

    chat.py       `plm chat`: the conversation (template, end-of-turn stop, history in the window) and the loop
    served.py     the checkpoint's causal LM, tokenizer, chat template, stop tokens and context window
    batcher.py    continuous batching: one decoding thread, slots in one KV cache, per-request sampling
    schemas.py    the request bodies (pydantic; an unknown field is a 400 naming it)
    openai_api.py requests -> the batcher's inputs; its updates -> OpenAI responses and stream chunks
    app.py        the FastAPI routes and OpenAI-shaped errors
    middleware.py the body limit, the API key and the request counts (pure ASGI)
    metrics.py    the Prometheus text of GET /metrics
    server.py     binding the port, loading, uvicorn; ServerThread for tests and benchmarks
    static/index.html  the chat page served at `/`: one file, streaming through /v1/chat/completions

FastAPI and uvicorn (the `serve` extra) are imported by app.py and server.py only, so the batcher runs
without them. Nothing here imports plmkit.recipes (they are sibling layers).
"""
