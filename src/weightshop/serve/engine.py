"""The engine between the HTTP API and the workers: validation, admission (queue bound, rate limits), the store.

The API never touches a model: it hands the engine a plain dict of parameters, and the engine checks them
against the model's facts (token budget, size multiple, preset) and the LoRA catalogue, resolves defaults
(a random seed is drawn once, at submission, so a job rendered again after a crash makes the same images),
and writes the job to the durable store, where a worker picks it up.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import threading
import time
from dataclasses import dataclass

from weightshop.errors import WeightshopError
from weightshop.serve.adapters import lora_catalog, resolve_loras
from weightshop.serve.config import ServeConfig
from weightshop.serve.metrics import Metrics
from weightshop.serve.store import Job, JobStore, QueueFull

log = logging.getLogger("weightshop.serve")


def serve_batches(engine, handle) -> None:
    """Claim batches of up to `max_batch` jobs from the engine's store until it stops, and hand each to `handle`.
    A batch that raises fails its jobs and the loop goes on: a worker never dies of one batch. (The in-process
    worker renders each batch; under --ray a dispatcher hands it to a replica.)"""
    while not engine.stopping.is_set():
        jobs = engine.store.claim(engine.config.max_batch)
        if not jobs:
            engine.wake.wait(0.2)
            engine.wake.clear()
            continue
        try:
            handle(jobs)
        except Exception:
            log.exception("batch failed")
            for job in jobs:
                if engine.store.fail(job, "internal error while rendering"):
                    engine.metrics.jobs.labels("failed").inc()


MAX_SEED = 2**63 - 1


class RateLimited(Exception):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"rate limit reached: retry in {retry_after:.1f} s")
        self.retry_after = retry_after


class RateLimiter:
    """A token bucket per key: `per_minute` submissions a minute, bursts up to a minute's worth."""

    def __init__(self, per_minute: float, clock=time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.burst = max(1.0, per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                raise RateLimited((1.0 - tokens) / self.rate)
            self._buckets[key] = (tokens - 1.0, now)


@dataclass(frozen=True)
class ModelFacts:
    """What validation needs from the loaded model (taken from the first worker's)."""

    size_multiple: int
    default_size: int
    max_side: int
    preset_steps: int
    preset_guidance: float
    max_tokens: int
    count_tokens: object  # str -> int


def model_facts(model, config: ServeConfig) -> ModelFacts:
    tokenizer = model.pipeline.tokenizer
    preset = model.checkpoint.preset
    return ModelFacts(model.size_multiple, model.default_size, min(config.max_side, model.family.hard_max_side),
                      preset.steps, preset.guidance, model.max_sequence_length,
                      lambda text: len(tokenizer(text)["input_ids"]))


def check_params(spec: dict, facts: ModelFacts, config: ServeConfig, catalog: dict) -> dict:
    """Client parameters -> the job's resolved parameters, or a WeightshopError naming the field at fault."""
    prompt = spec.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise WeightshopError("prompt: give a non-empty text")
    for field, text in (("prompt", prompt), ("negative_prompt", spec.get("negative_prompt") or "")):
        if len(text) > 20 * facts.max_tokens:
            raise WeightshopError(f"{field}: {len(text)} characters is far over the model's token budget")
        tokens = facts.count_tokens(text) if text else 0
        if tokens > facts.max_tokens:
            raise WeightshopError(f"{field}: {tokens} tokens, over the model's budget of {facts.max_tokens}")
    n = spec.get("n", 1)
    if not isinstance(n, int) or not 1 <= n <= config.max_n:
        raise WeightshopError(f"n: from 1 to {config.max_n} images per request, got {n}")
    sizes = {}
    for side in ("width", "height"):
        value = spec.get(side) or facts.default_size
        if not isinstance(value, int) or value % facts.size_multiple or not (
                2 * facts.size_multiple <= value <= facts.max_side):
            raise WeightshopError(f"{side}: a multiple of {facts.size_multiple} from {2 * facts.size_multiple} to "
                                  f"{facts.max_side} pixels, got {value}")
        sizes[side] = value
    steps = spec.get("steps")
    if steps is None:
        steps = facts.preset_steps  # the checkpoint's preset is always allowed; max_steps bounds what clients ask
    elif not isinstance(steps, int) or not 1 <= steps <= config.max_steps:
        raise WeightshopError(f"steps: from 1 to {config.max_steps}, got {steps}")
    guidance = spec.get("guidance")
    guidance = facts.preset_guidance if guidance is None else guidance
    if not isinstance(guidance, (int, float)) or not math.isfinite(guidance) or not (
            0 <= guidance <= config.max_guidance):
        raise WeightshopError(f"guidance: from 0 to {config.max_guidance} (0 turns it off), got {guidance}")
    seed = spec.get("seed")
    if seed is None:
        seed = secrets.randbelow(2**31)
    if not isinstance(seed, int) or not 0 <= seed <= MAX_SEED - config.max_n:
        raise WeightshopError(f"seed: an integer from 0 to {MAX_SEED - config.max_n}, got {seed}")
    loras = [(item.get("name"), item.get("strength", 1.0)) for item in spec.get("loras") or []]
    resolve_loras(loras, catalog, config.max_loras)  # raises on unknown names and bad strengths
    return {"prompt": prompt, "negative_prompt": spec.get("negative_prompt") or None, "n": n, **sizes,
            "steps": steps, "guidance": float(guidance), "seed": seed,
            "loras": [{"name": name, "strength": float(strength)} for name, strength in loras]}


def batch_key(params: dict) -> str:
    """Jobs with equal keys can share a forward pass: everything but prompt, seed and n."""
    keep = {k: params[k] for k in ("width", "height", "steps", "guidance", "loras")}
    keep["negative_prompt"] = params["negative_prompt"] if params["guidance"] > 0 else None
    return json.dumps(keep, sort_keys=True)


class Engine:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.store = JobStore(config.db_path)
        self.metrics = Metrics(queue_depth=self.store.depth)
        self.limiter = RateLimiter(config.rate_per_minute)
        self.workers: list = []
        self.progress: dict[str, float] = {}
        self.stopping = threading.Event()
        self.wake = threading.Event()
        self.facts: ModelFacts | None = None
        self.models_loaded = 0
        self.recovered = 0

    # ---- life
    def start(self) -> "Engine":
        """Load one model per device (or take the one given), return jobs a dead process left running to the
        queue, and start the workers."""
        from weightshop.serve.worker import Worker

        self.recovered = self.store.recover()
        if self.recovered:
            log.warning("recovered %d jobs left running by a previous process", self.recovered)
        for device in self.config.devices:
            model = self._load(device)
            self.workers.append(Worker(self, model, device))
        self.facts = model_facts(self.workers[0].model, self.config)
        if self.config.warmup:
            for worker in self.workers:
                worker.render_warmup()
        for worker in self.workers:
            worker.start()
        return self

    def _load(self, device: str):
        model = self.config.model
        if not isinstance(model, (str, bytes)) and hasattr(model, "pipeline"):
            if len(self.config.devices) > 1:
                raise WeightshopError("a loaded model serves one device; give a model name or path for several")
            return model
        from weightshop.models.loading import load_model

        self.models_loaded += 1
        return load_model(model, components=self.config.components, checkpoint=self.config.checkpoint,
                          dtype=self.config.dtype, device=device, offload=self.config.offload)

    def stop(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        self.wake.set()
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    @property
    def ready(self) -> bool:
        return bool(self.workers) and all(w.is_alive() for w in self.workers) and not self.stopping.is_set()

    # ---- jobs
    def catalog(self) -> dict:
        return lora_catalog(self.config.lora_dir)

    def lora_requests(self, loras: list[dict]):
        return resolve_loras([(x["name"], x["strength"]) for x in loras], self.catalog(), self.config.max_loras)

    def submit(self, owner: str, spec: dict) -> Job:
        """Validate, rate-limit and durably queue a job; raises WeightshopError, RateLimited or QueueFull."""
        try:
            params = check_params(spec, self.facts, self.config, self.catalog())
        except WeightshopError:
            self.metrics.rejected.labels("invalid").inc()
            raise
        try:
            self.limiter.take(owner)
            job = self.store.submit(owner, params, params["n"], batch_key(params), self.config.max_queue)
        except RateLimited:
            self.metrics.rejected.labels("rate_limit").inc()
            raise
        except QueueFull:
            self.metrics.rejected.labels("queue_full").inc()
            raise
        self.wake.set()
        return job

    def cancelled_ids(self, ids: set[str]) -> set[str]:
        return {i for i in ids if self.store.status_of(i) == "cancelled"}

    def cancel(self, job_id: str, owner: str) -> Job | None:
        job = self.store.cancel(job_id, owner)
        if job is not None and job.status == "cancelled":
            self.progress.pop(job_id, None)
        return job

    def retry_after(self) -> int:
        """Seconds a client should wait when the queue is full: about one batch's time, at least the configured."""
        busy = [w.busy_s / w.batches for w in self.workers if w.batches]
        return max(self.config.retry_after_s, math.ceil(min(busy))) if busy else self.config.retry_after_s

    def view(self, job: Job, base_url: str = "/") -> dict:
        """A job as the API shows it: never its owner, never a server path."""
        result = job.result or {}
        progress = 1.0 if job.status == "done" else self.progress.get(job.id, 0.0) if job.status == "running" else 0.0
        images = [f"{base_url}v1/jobs/{job.id}/images/{i}" for i in range(len(result.get("images", [])))]
        return {"id": job.id, "status": job.status, "progress": round(progress, 4), "created": job.created,
                "started": job.started, "finished": job.finished, "params": job.params, "images": images,
                "seeds": result.get("seeds"), "seconds": result.get("seconds"),
                "batch_images": result.get("batch_images"), "cost_per_image": result.get("cost_per_image"),
                "error": job.error}

    def image_path(self, job: Job, index: int):
        names = (job.result or {}).get("images", [])
        if job.status != "done" or not 0 <= index < len(names):
            return None
        return self.config.results_dir / job.id / names[index]
