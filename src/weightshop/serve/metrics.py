"""Prometheus metrics of one server, in their own registry (two servers in one process never share counters)."""

from __future__ import annotations

import os


class Metrics:
    def __init__(self, queue_depth=None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("weightshop_queue_depth", "Jobs queued or running.", registry=r)
        if queue_depth is not None:
            self.queue_depth.set_function(queue_depth)
        buckets = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
        self.stage_seconds = Histogram("weightshop_stage_seconds", "Seconds per stage: queue (wait), encode "
                                       "(text), render (denoise + decode), save (PNG + record), total (per job).",
                                       ["stage"], buckets=buckets, registry=r)
        self.batch_images = Histogram("weightshop_batch_images", "Images per forward batch.",
                                      buckets=(1, 2, 4, 8, 16, 32), registry=r)
        self.images = Counter("weightshop_images", "Images rendered (rate() gives images/s).", registry=r)
        self.jobs = Counter("weightshop_jobs", "Jobs by outcome.", ["status"], registry=r)
        self.rejected = Counter("weightshop_rejected", "Requests refused, by reason.", ["reason"], registry=r)
        self.cost = Counter("weightshop_cost_dollars", "Device cost of rendered images, in dollars.", registry=r)
        self.cost_per_image = Gauge("weightshop_cost_per_image_dollars", "Cost per image of the last batch.",
                                    registry=r)
        self.adapter_loads = Counter("weightshop_lora_loads", "LoRA files loaded into a pipeline (LRU misses).",
                                     registry=r)
        self.memory = Gauge("weightshop_memory_bytes", "Resident memory of the process, and GPU memory allocated.",
                            ["kind"], registry=r)
        self.memory.labels("rss").set_function(_rss)
        self.memory.labels("gpu_allocated").set_function(_gpu_allocated)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _rss() -> float:
    try:
        import psutil

        return float(psutil.Process(os.getpid()).memory_info().rss)
    except Exception:  # psutil missing or the platform refuses: report nothing rather than fail a scrape
        return 0.0


def _gpu_allocated() -> float:
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return 0.0
    return float(sum(torch.cuda.memory_allocated(i) for i in range(torch.cuda.device_count())))
