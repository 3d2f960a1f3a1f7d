"""`llmirc serve`: an OpenAI-compatible HTTP server over the step engine (llmirc[serve] extra).

    protocol.py       request/response models with OpenAI's field names (+ vLLM's extras)
    async_engine.py   the engine steps in its own thread; asyncio requests get its outputs
    chat_template.py  the checkpoint's chat template, rendered in jinja2's sandbox
    metrics.py        Prometheus metrics in their own registry
    app.py            the FastAPI routes and their error objects
    server.py         load an artifact and run uvicorn on it
    terminal_chat.py  `llmirc chat`: the same engine and template in a terminal

This module imports nothing heavy: `llmirc chat` needs jinja2 only, not FastAPI.
"""
