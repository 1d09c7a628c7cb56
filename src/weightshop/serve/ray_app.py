"""`weightshop serve --ray`: the same API, rendered by Ray Serve replicas (one per GPU; on CPU, as many as asked).

The head (the process that runs `weightshop serve --ray`) keeps everything that makes a job durable: the HTTP API
(api.py, unchanged), validation and admission (engine.py) and the SQLite job store, which stays the one source of
truth and is written by the head only. The Ray Serve deployment `Renderer` is stateless: each replica loads the
model on its device and turns a batch of claimed jobs into PNG bytes with their generation records. It never
opens the store or the results directory, so a replica may live on any node of the cluster.

Between them, one dispatcher thread per replica claims a batch from the store (as a local worker does), sends it to
a replica through a Serve handle, writes the PNGs atomically and completes the jobs under the attempt that claimed
them; while it waits it reads the jobs' progress, which the replica posts to a small named actor (`ProgressBoard`),
so GET /v1/jobs/ID moves as it does with local workers. When a replica dies mid-render (killed, out of memory, its
node gone) the call fails: the dispatcher puts the jobs back in the queue under that same attempt, Serve starts a
replacement, and the jobs are rendered again (`attempts` grows; same seeds, same images) and complete once. A render
with no answer within `RENDER_TIMEOUT_S` is treated the same way; an answer that comes later is never read, and
could change nothing anyway, since only the head writes and only under the attempt it claimed. A job whose renders
lose `MAX_RENDERS` replicas fails rather than take down the next one. kill -9 of the head is the single-process
case: at restart `recover` requeues what was running (the head is the only process that claims).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path
from types import SimpleNamespace

from weightshop.errors import WeightshopError
from weightshop.io import atomic_write_bytes, atomic_write_json
from weightshop.serve.adapters import lora_catalog, resolve_loras
from weightshop.serve.config import ServeConfig
from weightshop.serve.engine import Engine, ModelFacts, serve_batches
from weightshop.serve.metrics import Metrics
from weightshop.serve.store import Job, JobStore

log = logging.getLogger("weightshop.serve")
APP_NAME = "weightshop"  # the Serve application; its deployment is "Renderer"
RENDER_TIMEOUT_S = 600.0  # one batch on one replica, before the dispatcher gives it up and queues it again
START_TIMEOUT_S = 600.0  # the replicas load their models
MAX_RENDERS = 3  # renders of one job that lost their replica before the job fails
RETRY_PAUSE_S = 1.0  # a dispatcher's pause after a lost replica, while Serve replaces it
PROGRESS_BOARD = "weightshop-progress"  # the named Ray actor replicas post job progress to (namespace "weightshop")
PROGRESS_POST_S = 0.25  # a replica posts progress at most this often
PROGRESS_POLL_S = 0.5  # a dispatcher reads it this often while its batch renders


def require_ray():
    """(ray, ray.serve), or a WeightshopError that says how to install them."""
    try:
        import ray
        from ray import serve
    except ImportError as e:
        raise WeightshopError(f"--ray needs Ray Serve, an optional extra: pip install -c constraints.txt -e "
                              f"\".[serve,ray]\" ({e})") from None
    return ray, serve


def uses_gpu(config: ServeConfig) -> bool:
    return any(d.startswith("cuda") for d in config.devices)


def replica_plan(config: ServeConfig, cluster: dict) -> tuple[int, dict]:
    """(replicas, ray_actor_options): one replica per GPU of the cluster (or `ray_replicas`), each holding one GPU;
    on CPU, `ray_replicas` (default 1) replicas of `ray_cpus_per_replica` CPUs each."""
    options = {"num_cpus": config.ray_cpus_per_replica}
    if uses_gpu(config):
        gpus = int(cluster.get("GPU", 0))
        if gpus < 1:
            raise WeightshopError("--ray with a CUDA device, but the Ray cluster has no GPU: use --device cpu")
        return (config.ray_replicas or gpus), {**options, "num_gpus": 1}
    return (config.ray_replicas or 1), options


# ---- inside a replica


class _Recorder:
    """One metric, as a replica sees it: each call is recorded for the head to replay on its own registry."""

    def __init__(self, calls: list, name: str, labels: tuple = ()) -> None:
        self.calls, self.name, self.label_values = calls, name, labels

    def labels(self, *values: str) -> "_Recorder":
        return _Recorder(self.calls, self.name, values)

    def observe(self, value: float) -> None:
        self.calls.append((self.name, self.label_values, "observe", float(value)))

    def inc(self, value: float = 1.0) -> None:
        self.calls.append((self.name, self.label_values, "inc", float(value)))

    def set(self, value: float) -> None:
        self.calls.append((self.name, self.label_values, "set", float(value)))


class _RecordedMetrics:
    def __init__(self) -> None:
        self.calls: list = []

    def __getattr__(self, name: str) -> _Recorder:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Recorder(self.calls, name)


def replay(metrics: Metrics, calls: list) -> None:
    """Apply a replica's recorded metric calls to the head's Prometheus metrics."""
    for name, labels, method, value in calls:
        metric = getattr(metrics, name, None)
        if metric is None:
            continue
        getattr(metric.labels(*labels) if labels else metric, method)(value)


def progress_key(job_id: str, attempts: int) -> str:
    """The board's key: a job's progress under one render attempt (a replica given up on may still post under an
    earlier attempt; it never reaches the job's next render)."""
    return f"{job_id}:{attempts}"


class ProgressBoard:
    """A Ray actor between replicas and head: a replica posts the progress of the jobs it renders, the head's
    dispatchers read it while they wait for the batch, by `progress_key`. Progress is not durable (the store never
    holds it), so the head stays the store's one writer."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def post(self, values: dict[str, float]) -> None:
        self.values.update(values)

    def read(self, ids: list[str]) -> dict[str, float]:
        return {i: self.values[i] for i in ids if i in self.values}

    def forget(self, ids: list[str]) -> None:
        for i in ids:
            self.values.pop(i, None)


def progress_board(create: bool = False):
    """The progress board's actor handle (created by the head with `create`), or None where there is none (no Ray
    connection: a replica built outside Serve, in a test). Without a board, jobs still render; their progress then
    shows 0 until done, and the head says why once."""
    import ray

    if not ray.is_initialized():
        return None
    try:
        if create:
            return ray.remote(ProgressBoard).options(name=PROGRESS_BOARD, namespace="weightshop", num_cpus=0,
                                                     get_if_exists=True).remote()
        return ray.get_actor(PROGRESS_BOARD, namespace="weightshop")
    except Exception as e:  # progress is a courtesy: rendering goes on without it
        log.warning("no progress board (%s: %s): running jobs show progress 0 until done", type(e).__name__, e)
        return None


class _PostedProgress(dict):
    """A replica's job progress (a Worker writes it as a local engine's, by job id): kept here, and posted to the
    progress board under each job's `progress_key` at most every PROGRESS_POST_S seconds and whenever a job
    reaches 1. `attempts`: the render attempt of each job in the batch being rendered."""

    def __init__(self, board) -> None:
        super().__init__()
        self.board = board
        self.attempts: dict[str, int] = {}
        self.posted = 0.0

    def __setitem__(self, job_id: str, value: float) -> None:
        super().__setitem__(job_id, value)
        now = time.monotonic()
        if self.board is not None and (now - self.posted >= PROGRESS_POST_S or value >= 1.0):
            self.posted = now
            self.board.post.remote({progress_key(i, self.attempts.get(i, 0)): v for i, v in self.items()})


class _ReplicaEngine:
    """What a `Worker` asks of its engine, inside a replica: the config, LoRAs by name, metrics, progress (posted to
    the head's board); no store (the head owns it), so nothing to cancel mid-render: the head drops the images of a
    job cancelled meanwhile."""

    def __init__(self, config: ServeConfig, board=None) -> None:
        self.config = config
        self.metrics = _RecordedMetrics()
        self.progress: dict[str, float] = _PostedProgress(board)

    def lora_requests(self, loras: list[dict]):
        return resolve_loras([(x["name"], x["strength"]) for x in loras], lora_catalog(self.config.lora_dir),
                             self.config.max_loras)

    def cancelled_ids(self, ids: set[str]) -> set[str]:
        return set()


class Renderer:
    """A Ray Serve replica: the model on its device; a batch of jobs in, PNG bytes and generation records out.

    It renders with the local `Worker`'s code (same batching, LoRA hot-swap, prompt cache, records), so an image is
    the same whether it was rendered by `weightshop serve` or by a replica."""

    def __init__(self, config: ServeConfig) -> None:
        from weightshop.models.loading import load_model
        from weightshop.serve.worker import Worker

        device = "cuda" if uses_gpu(config) else "cpu"  # Ray gives a GPU replica its own CUDA_VISIBLE_DEVICES
        model = load_model(config.model, components=config.components, checkpoint=config.checkpoint,
                           dtype=config.dtype, device=device, offload=config.offload)
        self.engine = _ReplicaEngine(config, progress_board())
        self.worker = Worker(self.engine, model, device)  # never started as a thread: render() is called here
        self.name = f"{socket.gethostname()}:{os.getpid()}:{device}"
        if config.warmup:
            self.worker.render_warmup()

    def facts(self) -> dict:
        """What the head validates requests with, the tokenizer included (the head never loads the model)."""
        from weightshop.serve.engine import model_facts

        model = self.worker.model
        facts = model_facts(model, self.engine.config)
        return {"facts": {k: v for k, v in asdict(facts).items() if k != "count_tokens"},
                "tokenizer": model.pipeline.tokenizer, "model": model.name, "checkpoint": model.checkpoint.name}

    def render(self, jobs: list[dict]) -> dict:
        from weightshop.generate.metadata import png_bytes

        self.engine.metrics.calls = []
        self.engine.progress.clear()
        self.engine.progress.attempts = {job["id"]: job["attempts"] for job in jobs}
        start = time.perf_counter()
        answer = {"replica": self.name, "metrics": self.engine.metrics.calls}
        try:
            rendered = self.worker.render([Job(**job) for job in jobs])
        except WeightshopError as e:
            return {**answer, "error": str(e)}
        except Exception:  # the replica lives on; its jobs fail, as a local worker's do
            log.error("batch failed:\n%s", traceback.format_exc())
            return {**answer, "error": "internal error while rendering"}
        files: dict[str, list] = {job["id"]: [] for job in jobs}
        for item, image, record in rendered:
            record["serve"] = {"job": item.job.id, "image": item.index}
            files[item.job.id].append((f"{item.index}.png", png_bytes(image, record), record))
        return {**answer, "files": files, "images": len(rendered), "seconds": time.perf_counter() - start}


# ---- on the head


class RayJobStore(JobStore):
    def requeue(self, job: Job) -> bool:
        """Back to the queue after its replica was lost, only if still running under the attempt that claimed it
        (a job cancelled since stays cancelled)."""
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET status = 'queued' WHERE id = ? AND status = 'running' AND attempts = ?",
                              (job.id, job.attempts)).rowcount == 1


class Dispatcher(threading.Thread):
    """Claims batches from the store for one replica's worth of work and has a replica render them."""

    def __init__(self, engine: "RayEngine", index: int, model) -> None:
        super().__init__(name=f"weightshop-ray-dispatch-{index}", daemon=True)
        self.engine = engine
        self.model = model  # name and checkpoint, for /v1/info
        self.device = f"ray-{index}"
        self.batches = 0
        self.busy_s = 0.0
        self.lost = 0  # renders that lost their replica

    def run(self) -> None:
        serve_batches(self.engine, self.dispatch)

    def dispatch(self, jobs: list[Job]) -> None:
        try:
            self.render(jobs)
        except Exception:  # the jobs fail (`serve_batches`): their progress goes with them
            self.engine.forget_progress(jobs)
            raise

    def wait(self, response, jobs: list[Job]) -> dict:
        """The replica's answer, reading the jobs' progress from the board meanwhile; TimeoutError after
        RENDER_TIMEOUT_S."""
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        while True:
            left = deadline - time.monotonic()
            try:
                return response.result(timeout_s=max(0.01, min(PROGRESS_POLL_S, left)))
            except TimeoutError:
                if left <= PROGRESS_POLL_S or self.engine.stopping.is_set():
                    raise
                self.engine.read_progress(jobs)

    def render(self, jobs: list[Job]) -> None:
        engine, metrics, store = self.engine, self.engine.metrics, self.engine.store
        for job in jobs:
            metrics.stage_seconds.labels("queue").observe(max(0.0, time.time() - job.created))
        ids = {job.id for job in jobs}
        if ids <= engine.cancelled_ids(ids):
            return
        response = engine.handle.render.remote([asdict(job) for job in jobs])
        try:
            answer = self.wait(response, jobs)
        except Exception as e:  # the replica died or never answered: render the jobs again elsewhere
            engine.forget_progress(jobs)  # before the jobs can be claimed again
            if engine.stopping.is_set():
                return  # left running: the next start's `recover` queues them again
            response.cancel()
            self.lost += 1
            log.warning("a replica was lost while rendering %d jobs (%s): queueing them again", len(jobs),
                        type(e).__name__)
            for job in jobs:
                if job.attempts >= MAX_RENDERS:
                    if store.fail(job, f"{job.attempts} renders of this job lost their replica"):
                        metrics.jobs.labels("failed").inc()
                else:
                    store.requeue(job)
            engine.wake.set()
            engine.stopping.wait(RETRY_PAUSE_S)
            return
        replay(metrics, answer["metrics"])
        if "error" in answer:
            for job in jobs:
                if store.fail(job, answer["error"]):
                    metrics.jobs.labels("failed").inc()
            engine.forget_progress(jobs)
            return
        t_save = time.perf_counter()
        for job in jobs:
            if store.status_of(job.id) != "running":
                continue  # cancelled while it rendered: nothing to write
            for name, png, record in answer["files"][job.id]:
                path = engine.config.results_dir / job.id / name
                atomic_write_bytes(path, png)
                atomic_write_json(path.with_suffix(".json"), record)
        metrics.stage_seconds.labels("save").observe(time.perf_counter() - t_save)
        seconds, count = answer["seconds"], answer["images"]  # the replica's busy time: what the device cost
        self.busy_s += seconds
        self.batches += 1
        cost_per_image = engine.config.dollars_per_hour * seconds / 3600 / max(count, 1)
        metrics.images.inc(count)
        metrics.cost.inc(cost_per_image * count)
        metrics.cost_per_image.set(cost_per_image)
        for job in jobs:
            files = answer["files"][job.id]
            result = {"images": [name for name, _, _ in files], "seconds": seconds, "batch_images": count,
                      "cost_per_image": cost_per_image, "device": answer["replica"],
                      "seeds": [record["seed"] for _, _, record in files], "records": [r for _, _, r in files]}
            if store.complete(job, result):
                metrics.jobs.labels("done").inc()
                metrics.stage_seconds.labels("total").observe(max(0.0, time.time() - job.created))
        engine.forget_progress(jobs)  # done: the store's status says 1 from here


class RayEngine(Engine):
    """The engine with Ray Serve replicas in place of local workers; the store, validation and admission are the
    local engine's. Connects to `ray_address` (`auto`: a cluster started with `ray start`), or starts a local Ray on
    127.0.0.1 when Ray is not running in this process yet; stops only what it started."""

    def __init__(self, config: ServeConfig) -> None:
        super().__init__(config)
        self.store.close()
        self.store = RayJobStore(config.db_path)
        self.metrics = Metrics(queue_depth=self.store.depth)
        self.handle = None
        self.board = None
        self._board_failed = False
        self.replicas = 0
        self._started_ray = False
        self._stopped = False

    def start(self) -> "RayEngine":
        ray, serve = require_ray()
        if not isinstance(self.config.model, (str, Path)):
            raise WeightshopError("--ray: each replica loads the model itself: give a model name or path")
        self.recovered = self.store.recover()
        if self.recovered:
            log.warning("recovered %d jobs left running by a previous process", self.recovered)
        if not ray.is_initialized():
            if self.config.ray_address:
                ray.init(address=self.config.ray_address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address="local", include_dashboard=False, log_to_driver=False,
                         _node_ip_address="127.0.0.1")
            self._started_ray = True
        self.board = progress_board(create=True)
        self.replicas, options = replica_plan(self.config, ray.cluster_resources())
        deployment = serve.deployment(Renderer, name="Renderer", num_replicas=self.replicas,
                                      ray_actor_options=options, max_ongoing_requests=1,
                                      health_check_period_s=2.0, health_check_timeout_s=30.0,
                                      graceful_shutdown_timeout_s=5.0, max_constructor_retry_count=2)
        serve.start(proxy_location="Disabled")  # HTTP is the head's own FastAPI app
        replica_config = replace(self.config, key_hashes={})  # replicas never see API key hashes
        try:
            self.handle = serve.run(deployment.bind(replica_config), name=APP_NAME, route_prefix=None)
            info = self.handle.facts.remote().result(timeout_s=START_TIMEOUT_S)
        except Exception as e:  # a replica could not load the model: say why, once
            raise WeightshopError(f"the Ray Serve replicas did not start: {e}") from None
        tokenizer = info["tokenizer"]
        self.facts = ModelFacts(**info["facts"], count_tokens=lambda text: len(tokenizer(text)["input_ids"]))
        model = SimpleNamespace(name=info["model"], checkpoint=SimpleNamespace(name=info["checkpoint"]))
        self.workers = [Dispatcher(self, i, model) for i in range(self.replicas)]
        for dispatcher in self.workers:
            dispatcher.start()
        log.warning("serving through %d Ray Serve replica(s)", self.replicas)
        return self

    def read_progress(self, jobs: list[Job]) -> None:
        """The board's progress of these running jobs, under the attempt this head claimed, into the engine's (what
        GET /v1/jobs/ID reports). Best effort: a board that does not answer leaves the last value, and says so
        once in the log."""
        if self.board is None:
            return
        import ray

        keys = {progress_key(job.id, job.attempts): job.id for job in jobs}
        try:
            posted = ray.get(self.board.read.remote(sorted(keys)), timeout=PROGRESS_POLL_S)
        except Exception as e:  # progress is a courtesy: never let it fail a render
            if not self._board_failed:
                self._board_failed = True
                log.warning("the progress board did not answer (%s): progress may lag", type(e).__name__)
            return
        self.progress.update({keys[key]: value for key, value in posted.items()})

    def forget_progress(self, jobs: list[Job]) -> None:
        for job in jobs:
            self.progress.pop(job.id, None)
        if self.board is not None:
            self.board.forget.remote(sorted(progress_key(job.id, job.attempts) for job in jobs))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming, let the replicas finish (5 s at most: what they leave running is queued again at the
        next start), join the dispatchers, and shut down Ray if this engine started it. Idempotent."""
        self.stopping.set()
        self.wake.set()
        if not self._stopped and (self.handle is not None or self._started_ray):
            self._stopped = True
            _ray, serve = require_ray()
            try:
                if self.handle is not None:
                    serve.delete(APP_NAME)
            except Exception as e:  # stopping must not raise: Ray may already be gone
                log.warning("stopping Ray Serve: %s", e)
        super().stop(timeout)
        if self._started_ray and ray_running():
            require_ray()[0].shutdown()  # the Serve controller goes with the Ray it ran on


def ray_running() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()
