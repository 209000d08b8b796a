"""`edgetune serve`: an OpenAI-compatible HTTP server over the decode engine (device side, no torch).

    server.py      the parts from a ServeConfig, run on uvicorn, drained on SIGTERM
    app.py         routes, the API key, body limits, errors in OpenAI's shape
    completions.py /v1/chat/completions and /v1/completions, whole or streamed (SSE)
    schemas.py     request checks and response shapes
    scheduler.py   the engine's own thread: admission (429 when full), events, cancellation
    adapters.py    model names -> adapter folders, confined to --adapters-dir
    metrics.py     Prometheus metrics
    static/        the chat page

Needs the `serve` extra (starlette, uvicorn, prometheus-client, python-multipart).
"""
