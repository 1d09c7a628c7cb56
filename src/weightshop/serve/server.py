"""Run the API: in the foreground (`weightshop serve`), or in a background thread (`Server`, for `smoke`, the demo
and tests), always on an address the caller chose; port 0 picks a free port."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from weightshop.errors import WeightshopError
from weightshop.serve.config import ServeConfig


def build_app(config: ServeConfig):
    from weightshop.serve.api import create_app

    if config.ray:
        from weightshop.serve.ray_app import RayEngine as Engine
    else:
        from weightshop.serve.engine import Engine
    engine = Engine(config)
    return create_app(engine), engine


def serve_forever(config: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers), then stop the workers."""
    import uvicorn

    app, _engine = build_app(config)
    uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=10)


class Server:
    """The API in a background thread of this process: `with Server(config) as s: ... s.url ...`."""

    def __init__(self, config: ServeConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.config, self.host, self.port = config, host, port
        self.app, self.engine = build_app(config)
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 300.0) -> "Server":
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        uv_config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(uv_config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="weightshop-serve")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise WeightshopError("the server stopped while starting (see the log above)")
            if time.monotonic() > deadline:
                self.stop()
                raise WeightshopError(f"the server did not start within {timeout:.0f} s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.engine.stop()

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def start(config: ServeConfig | None = None, **overrides) -> Server:
    """Start a server in the background; stop it with `.stop()` (or use `Server` as a context manager)."""
    config = config or ServeConfig(**overrides)
    return Server(config).start()


def post_json(url: str, body: dict, key: str | None = None, timeout: float = 600.0) -> tuple[int, dict]:
    """POST a JSON body with the standard library (so `smoke` needs no HTTP client package)."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def smoke(model="krea2-nano-turbo", lora: str | Path | None = None, strength: float = 1.0, *,
          prompt: str = "a red circle on a blue background", size: int | None = None, steps: int | None = None,
          dollars_per_hour: float = 2.0, device: str = "cpu", data_dir: str | Path | None = None,
          seed: int = 0) -> dict:
    """Start a server briefly, generate one image through the OpenAI-compatible API (with `lora` when given),
    and return what it cost: {"latency_s", "cost_per_image", "render_s", "image_bytes", "lora", "url", "job"}.

    `model` is a name or path for load_model, or a LoadedModel already in memory (the demo passes its own).
    The LoRA file is offered under its stem through a temporary LoRA directory (a hard link, or a copy across
    file systems), and named by the request exactly as a client of a real server names it.
    """
    import base64
    import shutil

    with tempfile.TemporaryDirectory(prefix="weightshop-smoke-") as tmp:
        root = Path(tmp)
        lora_dir = root / "loras"
        lora_dir.mkdir()
        name = None
        if lora is not None:
            lora = Path(lora)
            if not lora.is_file():
                raise WeightshopError(f"LoRA file {lora} does not exist")
            name = lora.name.removesuffix(".safetensors")
            target = lora_dir / f"{name}.safetensors"
            try:
                os.link(lora, target)  # a hard link stays inside the directory (a symlink out of it is refused)
            except OSError:
                shutil.copyfile(lora, target)
        config = ServeConfig(model=model, data_dir=Path(data_dir) if data_dir else root / "serve",
                             lora_dir=lora_dir, devices=[device], dollars_per_hour=dollars_per_hour)
        body = {"prompt": prompt, "n": 1, "response_format": "b64_json", "seed": seed}
        if size:
            body["size"] = f"{size}x{size}"
        if steps:
            body["steps"] = steps
        if name:
            body["loras"] = [{"name": name, "strength": strength}]
        with Server(config) as server:
            start_time = time.perf_counter()
            status, answer = post_json(f"{server.url}/v1/images/generations", body)
            latency = time.perf_counter() - start_time
        if status != 200:
            raise WeightshopError(f"serve smoke: the server answered {status}: {answer.get('error', answer)}")
        extra = answer["weightshop"]
        return {"latency_s": latency, "cost_per_image": extra["cost_per_image"], "render_s": extra["seconds"],
                "image_bytes": len(base64.b64decode(answer["data"][0]["b64_json"])), "lora": name,
                "strength": strength if name else None, "dollars_per_hour": dollars_per_hour, "job": extra["id"]}
