"""Serving: an HTTP API, a durable job store and one worker per device (issue 21).

The layers, as vLLM splits them: `api` (HTTP, OpenAI-compatible; never touches a model) -> `engine`
(validation, admission, the queue in `store`) -> `worker` (one per device, owns its pipeline, batches compatible
jobs, hot-swaps LoRAs through `adapters`). `server` runs it all in the foreground or a background thread;
`load` is the bounded load test behind docs/benchmarks.md.

Heavy imports (torch, fastapi, uvicorn) happen inside the modules that need them, so importing this package
is cheap: `from weightshop.serve import Server, ServeConfig, smoke`.
"""

from __future__ import annotations

from weightshop.serve.config import ServeConfig

__all__ = ["ServeConfig", "Server", "smoke", "start"]


def __getattr__(name: str):
    if name in ("Server", "smoke", "start"):
        from weightshop.serve import server

        return getattr(server, name)
    raise AttributeError(name)
