"""Serving a model: an OpenAI-compatible HTTP server with continuous batching (`plm serve`).

    served.py     the checkpoint's causal LM, tokenizer, chat template, stop tokens and context window
    batcher.py    continuous batching: one decoding thread, slots in one KV cache, per-request sampling
    schemas.py    the request bodies (pydantic; an unknown field is a 400 naming it)
    openai_api.py requests -> the batcher's inputs; its updates -> OpenAI responses and stream chunks
    app.py        the FastAPI routes, OpenAI-shaped errors, the API key and the body limit
    metrics.py    the Prometheus text of GET /metrics
    server.py     binding the port, loading, uvicorn; ServerThread for tests and benchmarks

FastAPI and uvicorn (the `serve` extra) are imported by app.py and server.py only, so the batcher runs
without them. Nothing here imports plmkit.recipes (they are sibling layers).
"""
