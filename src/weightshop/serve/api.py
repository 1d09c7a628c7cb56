"""The HTTP API (FastAPI): OpenAI-compatible image generation, jobs, LoRAs, health, metrics and the page.

Errors have OpenAI's shape, `{"error": {"message", "type", "code"}}`, so existing clients show them: 400 for
bad parameters (each message names the field and what is accepted), 401 for a missing or unknown key, 404 for a
job that is not the caller's (indistinguishable from one that does not exist), 413 for a body over the limit,
429 with Retry-After for a full queue or a key over its rate.
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from pathlib import Path
from typing import Literal

from fastapi import Depends, FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from weightshop.errors import WeightshopError
from weightshop.serve.engine import MAX_SEED, Engine, RateLimited
from weightshop.serve.store import FINAL, QueueFull

PAGE = Path(__file__).with_name("page.html")
JOB_ID = PathParam(pattern=r"^[A-Za-z0-9_-]{8,64}$", max_length=64)


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def error_response(status: int, message: str, code: str, headers: dict | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "code": code}}, status, headers=headers)


class LoraChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64, description="A LoRA's name as GET /v1/loras lists it (never a path).")
    strength: float = Field(1.0, ge=-4, le=4, allow_inf_nan=False)


class Extras(BaseModel):
    """weightshop's parameters beside OpenAI's; unset ones take the model's preset and default size."""

    model_config = ConfigDict(extra="forbid")
    negative_prompt: str | None = Field(None, max_length=4000)
    steps: int | None = Field(None, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Image i of n uses seed + i. Default: random.")
    loras: list[LoraChoice] = Field(default_factory=list, max_length=8)


class JobBody(Extras):
    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(1, ge=1, le=64)
    width: int | None = Field(None, ge=1, le=16384)
    height: int | None = Field(None, ge=1, le=16384)


class ImagesBody(Extras):
    """POST /v1/images/generations, as OpenAI's images API takes it (model, quality, style, user are accepted and
    ignored: the server serves one model)."""

    prompt: str = Field(min_length=1, max_length=4000)
    n: int = Field(1, ge=1, le=64)
    size: str | None = Field(None, pattern=r"^[0-9]{1,5}x[0-9]{1,5}$", description="WIDTHxHEIGHT, e.g. 64x64")
    response_format: Literal["b64_json", "url"] = "b64_json"
    model: str | None = Field(None, max_length=200)
    quality: str | None = Field(None, max_length=50)
    style: str | None = Field(None, max_length=50)
    user: str | None = Field(None, max_length=200)


def _spec(body: BaseModel) -> dict:
    spec = body.model_dump()
    spec["loras"] = [x.model_dump() for x in body.loras]
    return spec


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413, whether it declares its length or streams it."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await error_response(413, f"request body over {self.limit} bytes", "body_too_large")(
                scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise ApiError(413, f"request body over {self.limit} bytes", "body_too_large")
            return message

        try:
            return await self.app(scope, limited, send)
        except ApiError as e:
            return await error_response(e.status, e.message, e.code)(scope, receive, send)


def create_app(engine: Engine, manage_engine: bool = True) -> FastAPI:
    """The app over an engine; with `manage_engine` the app starts it at startup and stops it at shutdown."""
    from contextlib import asynccontextmanager

    config = engine.config

    @asynccontextmanager
    async def lifespan(_app):
        if manage_engine:
            await run_in_threadpool(engine.start)
        yield
        if manage_engine:
            await run_in_threadpool(engine.stop)

    app = FastAPI(title="weightshop serve", version="1", lifespan=lifespan,
                  description="Krea 2 image generation: OpenAI-compatible images API, durable jobs, LoRAs.")
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return error_response(e.status, e.message, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request, e: RequestValidationError):
        parts = []
        for err in e.errors()[:5]:
            where = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return error_response(400, "; ".join(parts), "invalid_parameters")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), "http_error", getattr(e, "headers", None))

    def owner(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        who = config.owner_of(key)
        if who is None:
            engine.metrics.rejected.labels("auth").inc()
            raise ApiError(401, "missing or unknown API key (Authorization: Bearer KEY)", "invalid_api_key",
                           {"WWW-Authenticate": "Bearer"})
        return who

    async def submit(who: str, spec: dict):
        try:
            return await run_in_threadpool(engine.submit, who, spec)
        except WeightshopError as e:
            raise ApiError(400, str(e), "invalid_parameters") from None
        except RateLimited as e:
            raise ApiError(429, str(e), "rate_limit_exceeded", {"Retry-After": str(math.ceil(e.retry_after))}) \
                from None
        except QueueFull as e:
            raise ApiError(429, f"{e}: retry later", "queue_full", {"Retry-After": str(engine.retry_after())}) \
                from None

    def own_job(job_id: str, who: str):
        job = engine.store.get(job_id, who)
        if job is None:
            raise ApiError(404, "no such job", "not_found")
        return job

    @app.post("/v1/images/generations", summary="Generate images (OpenAI-compatible; waits for the images)")
    async def images_generations(body: ImagesBody, request: Request, who: str = Depends(owner)):
        spec = _spec(body)
        if body.size:
            spec["width"], spec["height"] = (int(x) for x in body.size.split("x"))
        job = await submit(who, spec)
        deadline = time.monotonic() + config.sync_timeout_s
        delay = 0.02
        while time.monotonic() < deadline:
            job = engine.store.get(job.id)
            if job.status in FINAL:
                break
            await asyncio.sleep(delay)
            delay = min(0.2, delay * 1.5)
        if job.status != "done":
            if job.status == "cancelled":
                raise ApiError(409, f"job {job.id} was cancelled", "cancelled")
            if job.status == "failed":
                raise ApiError(500, f"job {job.id} failed: {job.error}", "generation_failed")
            raise ApiError(504, f"job {job.id} is still {job.status}: poll GET /v1/jobs/{job.id}", "timeout")
        view = engine.view(job, str(request.base_url))
        data = []
        for i, name in enumerate(job.result["images"]):
            if body.response_format == "url":
                data.append({"url": view["images"][i], "revised_prompt": body.prompt})
            else:
                raw = (config.results_dir / job.id / name).read_bytes()
                data.append({"b64_json": base64.b64encode(raw).decode("ascii"), "revised_prompt": body.prompt})
        return {"created": int(job.created), "data": data,
                "weightshop": {k: view[k] for k in ("id", "seeds", "seconds", "batch_images", "cost_per_image")}}

    @app.post("/v1/jobs", status_code=202, summary="Submit a job; poll it with GET /v1/jobs/{id}")
    async def create_job(body: JobBody, request: Request, who: str = Depends(owner)):
        job = await submit(who, _spec(body))
        return engine.view(job, str(request.base_url))

    @app.get("/v1/jobs", summary="The caller's latest jobs, newest first")
    async def list_jobs(request: Request, who: str = Depends(owner)):
        jobs = await run_in_threadpool(engine.store.list, who, 50)
        return {"data": [engine.view(j, str(request.base_url)) for j in jobs]}

    @app.get("/v1/jobs/{job_id}", summary="A job's status, progress, parameters, cost and image URLs")
    async def get_job(request: Request, job_id: str = JOB_ID, who: str = Depends(owner)):
        return engine.view(own_job(job_id, who), str(request.base_url))

    @app.get("/v1/jobs/{job_id}/images/{index}", summary="One result image: a PNG with its generation record",
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    async def get_image(job_id: str = JOB_ID, index: int = PathParam(ge=0, le=1000), who: str = Depends(owner)):
        path = engine.image_path(own_job(job_id, who), index)
        if path is None or not path.is_file():
            raise ApiError(404, "no such image (is the job done?)", "not_found")
        return FileResponse(path, media_type="image/png", filename=f"{job_id}-{index}.png")

    @app.post("/v1/jobs/{job_id}/cancel", summary="Cancel a queued or running job (a finished job stays as it is)")
    async def cancel_job(request: Request, job_id: str = JOB_ID, who: str = Depends(owner)):
        job = await run_in_threadpool(engine.cancel, job_id, who)
        if job is None:
            raise ApiError(404, "no such job", "not_found")
        return engine.view(job, str(request.base_url))

    @app.get("/v1/loras", summary="LoRAs this server offers, by name")
    async def list_loras(who: str = Depends(owner)):
        return {"data": [{"name": name, "bytes": path.stat().st_size} for name, path in engine.catalog().items()]}

    @app.get("/v1/info", summary="The model, its defaults and the server's limits")
    async def info(who: str = Depends(owner)):
        facts = engine.facts
        model = engine.workers[0].model if engine.workers else None
        return {"model": model.name if model else None, "checkpoint": model.checkpoint.name if model else None,
                "default_size": facts.default_size if facts else None,
                "size_multiple": facts.size_multiple if facts else None,
                "max_side": facts.max_side if facts else None, "steps": facts.preset_steps if facts else None,
                "guidance": facts.preset_guidance if facts else None, "max_n": config.max_n,
                "max_steps": config.max_steps, "dollars_per_hour": config.dollars_per_hour,
                "open_access": config.open_access}

    @app.get("/healthz", summary="The process answers")
    async def health():
        return {"status": "ok"}

    @app.get("/readyz", summary="Every worker is up with its model")
    async def ready():
        if not engine.ready:
            return error_response(503, "not ready: workers are starting or stopped", "not_ready")
        return {"status": "ready", "workers": len(engine.workers), "queue_depth": engine.store.depth()}

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics():
        body, content_type = await run_in_threadpool(engine.metrics.render)
        return Response(body, media_type=content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(PAGE.read_text(encoding="utf-8"))

    return app
