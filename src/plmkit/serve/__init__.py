"""Using a model the way people use models today: `plm chat` in a terminal (chat.py) and an
OpenAI-compatible HTTP server with a web chat page (static/index.html)."""
