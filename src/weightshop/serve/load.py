"""A bounded load test: N requests from C concurrent clients against a server, latency percentiles, throughput.

    python -m weightshop.serve.load --requests 200 --concurrency 16            # a fresh server on krea2-nano-turbo
    python -m weightshop.serve.load --compare-batching --concurrency 8         # max batch 1 vs 8, same load
    python -m weightshop.serve.load --url http://127.0.0.1:8000 --key KEY      # a server already running

Every loop is bounded in count and time: each client sends at most its share of the N requests, each with a
timeout, and the run stops at `deadline_s`. 429 answers (queue full, rate limit) are counted apart: they are the
server refusing work on purpose, not failures. Only loopback addresses are meant as targets.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from weightshop.serve.server import post_json


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_load(url: str, requests: int = 200, concurrency: int = 16, body: dict | None = None, key: str | None = None,
             deadline_s: float = 600.0, timeout_s: float = 120.0) -> dict:
    """POST /v1/images/generations `requests` times from `concurrency` threads; the figures of the run."""
    body = body or {"prompt": "a red circle on a blue background", "size": "64x64"}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(requests))
    stop_at = time.monotonic() + deadline_s

    def client() -> None:
        while time.monotonic() < stop_at:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start = time.perf_counter()
            try:
                status, _ = post_json(f"{url}/v1/images/generations", {**body, "seed": i}, key, timeout_s)
            except OSError:
                status = "error"
            elapsed = time.perf_counter() - start
            with lock:
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 200:
                    latencies.append(elapsed)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(concurrency)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, stop_at - time.monotonic()) + timeout_s)
    wall = time.perf_counter() - began
    ok = statuses.get("200", 0)
    failures = sum(n for s, n in statuses.items() if s not in ("200", "429"))
    return {"requests": requests, "concurrency": concurrency, "ok": ok, "rejected_429": statuses.get("429", 0),
            "failures": failures, "statuses": statuses, "wall_s": wall, "images_per_s": ok / wall if wall else 0.0,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95)}


def serve_and_load(model="krea2-nano-turbo", max_batch: int = 8, requests: int = 200, concurrency: int = 16,
                   body: dict | None = None, max_queue: int = 64, dollars_per_hour: float = 0.0,
                   warmup_requests: int = 4) -> dict:
    """Start a server in this process (127.0.0.1, a free port, a temporary data directory), load it, stop it."""
    from weightshop.serve.config import ServeConfig
    from weightshop.serve.server import Server

    with tempfile.TemporaryDirectory(prefix="weightshop-load-") as tmp:
        config = ServeConfig(model=model, data_dir=Path(tmp), max_batch=max_batch, max_queue=max_queue,
                             rate_per_minute=1e9, dollars_per_hour=dollars_per_hour, warmup=True)
        with Server(config) as server:
            run_load(server.url, warmup_requests, 1, body)  # first-call costs out of the figures
            result = run_load(server.url, requests, concurrency, body)
            result["max_batch"] = max_batch
            batches = sum(w.batches for w in server.engine.workers)
            result["mean_batch_images"] = (result["ok"] + warmup_requests) / batches if batches else None
    return result


def compare_batching(model="krea2-nano-turbo", requests: int = 64, concurrency: int = 8, max_batch: int = 8,
                     body: dict | None = None) -> dict:
    """The same load with batching off (max batch 1) and on: throughput ratio."""
    single = serve_and_load(model, 1, requests, concurrency, body)
    batched = serve_and_load(model, max_batch, requests, concurrency, body)
    return {"batch_1": single, f"batch_{max_batch}": batched,
            "speedup": batched["images_per_s"] / single["images_per_s"] if single["images_per_s"] else None}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one on --model)")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument("--model", default="krea2-nano-turbo")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-queue", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=None, help="default: the model's preset")
    parser.add_argument("--compare-batching", action="store_true", help="max batch 1 vs --max-batch, same load")
    args = parser.parse_args(argv)
    body = {"prompt": "a red circle on a blue background", "size": f"{args.size}x{args.size}"}
    if args.steps:
        body["steps"] = args.steps
    if args.url:
        result = run_load(args.url, args.requests, args.concurrency, body, args.key)
    elif args.compare_batching:
        result = compare_batching(args.model, args.requests, args.concurrency, args.max_batch, body)
    else:
        result = serve_and_load(args.model, args.max_batch, args.requests, args.concurrency, body, args.max_queue)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
