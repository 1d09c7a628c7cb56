"""One worker per device: the only thread that touches its pipeline (diffusers pipelines are not thread-safe).

A worker claims a batch of compatible jobs from the store (same size, steps, guidance, negative prompt and LoRA
set), renders all their images in forward passes of up to `max_batch` images, writes each PNG with its
generation record, and completes the jobs. Every image draws its noise from its own generator seeded with its
own seed, so an image is the same whether it was rendered alone or beside others, before or after a restart.

It renders as `weightshop generate` does, through `generate.run.render_batch`: prompts encoded without their
padding (`PromptCache(trim=True)`) and weightshop's own denoising loop when the model is resident (`generate.fast`),
so a served image equals the CLI's for the same request (within float rounding of stock diffusers, 1e-3).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from weightshop.errors import WeightshopError
from weightshop.generate.metadata import save_image
from weightshop.generate.fast import FastPath
from weightshop.generate.run import GenerateRequest, plan, render_batch
from weightshop.generate.text import PromptCache
from weightshop.serve.adapters import AdapterCache
from weightshop.serve.engine import serve_batches
from weightshop.serve.store import Job

PROMPT_CACHE_SIZE = 1024  # distinct prompts kept encoded per worker before the cache starts afresh


class Cancelled(Exception):
    """Every job of the batch was cancelled while it rendered."""


@dataclass
class Item:
    job: Job
    index: int
    prompt: str
    seed: int


class Worker(threading.Thread):
    def __init__(self, engine, model, device: str) -> None:
        super().__init__(name=f"weightshop-worker-{device}", daemon=True)
        self.engine = engine
        self.model = model
        self.device = device
        self.adapters = AdapterCache(model.pipeline, engine.config.lora_cache)
        self._prompts: OrderedDict[str, None] = OrderedDict()
        self.prompt_cache = self._new_prompt_cache()
        self.batches = 0
        self.busy_s = 0.0

    def _new_prompt_cache(self) -> PromptCache:
        self._prompts.clear()
        return PromptCache(self.model.pipeline, self.model.max_sequence_length, str(self.model.source.components),
                           trim=True)

    def run(self) -> None:
        serve_batches(self.engine, self.process)

    def process(self, jobs: list[Job]) -> None:
        engine, metrics = self.engine, self.engine.metrics
        start = time.perf_counter()
        for job in jobs:
            metrics.stage_seconds.labels("queue").observe(max(0.0, time.time() - job.created))
        try:
            rendered = self.render(jobs)
        except Cancelled:
            return
        except WeightshopError as e:
            for job in jobs:
                if engine.store.fail(job, str(e)):
                    metrics.jobs.labels("failed").inc()
            return
        t_save = time.perf_counter()
        files: dict[str, list[str]] = {job.id: [] for job in jobs}
        records: dict[str, list[dict]] = {job.id: [] for job in jobs}
        for item, image, record in rendered:
            record["serve"] = {"job": item.job.id, "image": item.index}
            name = f"{item.index}.png"
            save_image(engine.config.results_dir / item.job.id / name, image, record)
            files[item.job.id].append(name)
            records[item.job.id].append(record)
        metrics.stage_seconds.labels("save").observe(time.perf_counter() - t_save)
        seconds = time.perf_counter() - start
        self.busy_s += seconds
        self.batches += 1
        count = len(rendered)
        cost_per_image = engine.config.dollars_per_hour * seconds / 3600 / max(count, 1)
        metrics.images.inc(count)
        metrics.cost.inc(cost_per_image * count)
        metrics.cost_per_image.set(cost_per_image)
        for job in jobs:
            result = {"images": files[job.id], "seconds": seconds, "batch_images": count,
                      "cost_per_image": cost_per_image, "device": self.device,
                      "seeds": [r["seed"] for r in records[job.id]], "records": records[job.id]}
            if engine.store.complete(job, result):
                metrics.jobs.labels("done").inc()
                metrics.stage_seconds.labels("total").observe(max(0.0, time.time() - job.created))
            engine.progress.pop(job.id, None)

    def render(self, jobs: list[Job]) -> list[tuple[Item, object, dict]]:
        import torch

        engine, metrics = self.engine, self.engine.metrics
        first = jobs[0].params
        loras = engine.lora_requests(first["loras"])
        loads_before = self.adapters.loads
        applied = self.adapters.activate(loras)
        metrics.adapter_loads.inc(self.adapters.loads - loads_before)
        request = GenerateRequest(prompts=[first["prompt"]], negative_prompt=first.get("negative_prompt"),
                                  width=first["width"], height=first["height"], steps=first["steps"],
                                  guidance=first["guidance"])
        p = plan(self.model, request)
        pipe = self.model.pipeline
        guided = p.preset.guidance > 0
        negative = first.get("negative_prompt") or ""
        items = [Item(job, i, job.params["prompt"], job.params["seed"] + i) for job in jobs for i in range(job.images)]
        ids = {job.id for job in jobs}

        t_encode = time.perf_counter()
        cache = self._prompt_cache([it.prompt for it in items] + ([negative] if guided else []))
        metrics.stage_seconds.labels("encode").observe(time.perf_counter() - t_encode)

        from weightshop.models.placement import execution_device

        device = execution_device(pipe)
        dtype = pipe.transformer.dtype
        max_batch = engine.config.max_batch
        total = len(items) * p.preset.steps
        done = 0
        out = []
        for start in range(0, len(items), max_batch):
            chunk = items[start:start + max_batch]
            if ids <= engine.cancelled_ids(ids):
                raise Cancelled()
            embeds, mask = cache.get([it.prompt for it in chunk])
            neg = cache.get([negative] * len(chunk)) if guided else None

            def on_step(_i, n=len(chunk)):
                nonlocal done
                done += n
                for job_id in ids:
                    engine.progress[job_id] = done / total
                if ids <= engine.cancelled_ids(ids):
                    raise Cancelled()

            generators = [torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(it.seed)
                          for it in chunk]
            t_render = time.perf_counter()
            images = render_batch(self.model, p, embeds, mask, neg, generators, FastPath(), on_step=on_step)
            metrics.stage_seconds.labels("render").observe(time.perf_counter() - t_render)
            metrics.batch_images.observe(len(chunk))
            for it, image in zip(chunk, images):
                out.append((it, image, self.record(p, it, negative if guided else None, applied, dtype)))
        return out

    def render_warmup(self) -> None:
        """One small render before serving, so the first client does not pay for lazy initialisation."""
        side = 2 * self.model.size_multiple
        embeds, mask = self._prompt_cache(["warm-up"]).get(["warm-up"])
        device = self.model.pipeline._execution_device
        self.model.pipeline(prompt_embeds=embeds.to(device), prompt_embeds_mask=mask.to(device), height=side,
                            width=side, num_inference_steps=1, guidance_scale=0.0,
                            max_sequence_length=self.model.max_sequence_length)

    def _prompt_cache(self, prompts: list[str]) -> PromptCache:
        """The worker's prompt-embedding cache, warmed with `prompts`; bounded by starting afresh when full."""
        for prompt in prompts:
            self._prompts[prompt] = None
        if len(self._prompts) > PROMPT_CACHE_SIZE:
            self.prompt_cache = self._new_prompt_cache()
            for prompt in prompts:
                self._prompts[prompt] = None
        self.prompt_cache.warm(prompts)
        return self.prompt_cache

    def record(self, p, item: Item, negative: str | None, applied, dtype) -> dict:
        """The generation record every PNG carries (`weightshop generate`'s), LoRAs named without server paths."""
        from weightshop.generate.run import image_record

        record = image_record(self.model, p, item.prompt, item.seed, negative, applied, dtype)
        record["loras"] = [{**a.as_dict(), "path": Path(a.path).name} for a in applied]  # no server paths to clients
        return record
