"""The HTTP API on a live server: the official openai client, jobs, LoRAs by name, batching, hot-swap, metrics."""

from __future__ import annotations

import base64
import io
import json
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve.conftest import KEYS, auth, make_config

SMALL = {"width": 32, "height": 32, "steps": 2}


def wait_done(client, job_id: str, key: str = "alice", timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=auth(key)).json()
        if job["status"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} not finished in {timeout} s")


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served.url, timeout=60) as c:
        yield c


def record_of(png: bytes) -> dict:
    with Image.open(io.BytesIO(png)) as im:
        return json.loads(im.info["weightshop"])


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_openai_client_generates_with_a_lora(served):
    from openai import BadRequestError, OpenAI

    oai = OpenAI(base_url=f"{served.url}/v1", api_key=KEYS["alice"], max_retries=0, timeout=60)
    result = oai.images.generate(prompt="a red circle", n=2, size="32x32", response_format="b64_json",
                                 extra_body={"steps": 2, "seed": 3, "loras": [{"name": "style", "strength": 0.8}]})
    assert len(result.data) == 2
    records = [record_of(base64.b64decode(d.b64_json)) for d in result.data]
    assert [r["seed"] for r in records] == [3, 4]
    assert records[0]["loras"][0]["name"].endswith("style") and records[0]["loras"][0]["strength"] == 0.8
    assert records[0]["loras"][0]["path"] == "style.safetensors"  # never a server path
    assert (records[0]["width"], records[0]["steps"]) == (32, 2)
    by_url = oai.images.generate(prompt="a blue square", size="32x32", response_format="url",
                                 extra_body={"steps": 2})
    assert by_url.data[0].url.startswith(served.url)
    png = httpx.get(by_url.data[0].url, headers=auth("alice")).content
    assert record_of(png)["prompt"] == "a blue square"
    with pytest.raises(BadRequestError, match="multiple of 8"):
        oai.images.generate(prompt="x", size="30x32")


def test_job_lifecycle_progress_result_and_cost(client):
    r = client.post("/v1/jobs", json={"prompt": "a green triangle", "n": 2, "seed": 11, **SMALL}, headers=auth("alice"))
    assert r.status_code == 202 and r.json()["status"] in ("queued", "running", "done")
    job = wait_done(client, r.json()["id"])
    assert job["status"] == "done" and job["progress"] == 1.0 and job["seeds"] == [11, 12]
    assert job["cost_per_image"] > 0 and job["seconds"] > 0
    # cost per image = busy seconds x $/device-hour / images of the batch
    assert job["cost_per_image"] == pytest.approx(2.5 * job["seconds"] / 3600 / job["batch_images"])
    png = client.get(f"/v1/jobs/{job['id']}/images/1", headers=auth("alice"))
    assert png.headers["content-type"] == "image/png" and record_of(png.content)["seed"] == 12
    assert client.get(f"/v1/jobs/{job['id']}/images/2", headers=auth("alice")).status_code == 404
    mine = client.get("/v1/jobs", headers=auth("alice")).json()["data"]
    assert job["id"] in [j["id"] for j in mine]
    # a finished job is not cancelled
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth("alice")).json()["status"] == "done"


def test_cancel_a_queued_job(served, client):
    engine = served.engine
    slow = client.post("/v1/jobs", json={"prompt": "slow", "n": 4, "width": 128, "height": 128, "steps": 4},
                       headers=auth("alice")).json()
    queued = client.post("/v1/jobs", json={"prompt": "never", "width": 96, "height": 96, "steps": 1},
                         headers=auth("alice")).json()
    cancelled = client.post(f"/v1/jobs/{queued['id']}/cancel", headers=auth("alice")).json()
    assert cancelled["status"] == "cancelled"
    wait_done(client, slow["id"])
    assert engine.store.get(queued["id"]).status == "cancelled"
    assert engine.store.get(queued["id"]).completions == 0


def test_loras_are_listed_by_name_only(client):
    data = client.get("/v1/loras", headers=auth("alice")).json()["data"]
    assert sorted(d["name"] for d in data) == ["shape", "style"]  # the link out of the directory is not offered
    assert all(set(d) == {"name", "bytes"} for d in data)


def test_hot_swap_never_reloads_the_model_and_leaves_no_trace(served, client):
    worker = served.engine.workers[0]
    loads = worker.adapters.loads
    body = {"prompt": "a yellow circle", "seed": 5, **SMALL}

    def render(loras):
        job = client.post("/v1/jobs", json={**body, "loras": loras}, headers=auth("bob")).json()
        job = wait_done(client, job["id"], "bob")
        return client.get(f"/v1/jobs/{job['id']}/images/0", headers=auth("bob")).content

    plain = render([])
    styled = render([{"name": "style", "strength": 1.0}])
    render([{"name": "shape", "strength": 0.5}, {"name": "style", "strength": 1.0}])
    assert np.abs(pixels(plain) - pixels(styled)).mean() > 1
    assert np.array_equal(pixels(render([])), pixels(plain))  # swapped out: the base model again, exactly
    assert np.array_equal(pixels(render([{"name": "style", "strength": 1.0}])), pixels(styled))
    assert worker.adapters.loads - loads <= 2 and worker.adapters.hits >= 2
    assert served.engine.models_loaded == 0  # the one model given; never loaded again


def test_prompt_embeddings_are_cached(served, client):
    worker = served.engine.workers[0]
    for _ in range(2):
        job = client.post("/v1/jobs", json={"prompt": "a cached prompt", **SMALL}, headers=auth("alice")).json()
        wait_done(client, job["id"])
        if _ == 0:
            encoded = worker.prompt_cache.encoded
    assert worker.prompt_cache.encoded == encoded


def test_health_ready_metrics_and_openapi(served, client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    text = client.get("/metrics").text
    for name in ("weightshop_queue_depth", 'weightshop_stage_seconds_count{stage="render"}', "weightshop_images_total",
                 "weightshop_cost_per_image_dollars", 'weightshop_memory_bytes{kind="rss"}'):
        assert name in text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/images/generations", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/loras"} <= set(paths)
    assert "<html" in client.get("/").text.lower()


def test_compatible_jobs_share_a_forward_pass(nano_turbo, lora_dir, tmp_path):
    """Four jobs queued before the worker starts (as after a restart) render as one batch of 4."""
    from weightshop.serve import Server
    from weightshop.serve.engine import batch_key

    server = Server(make_config(tmp_path, nano_turbo, lora_dir, max_batch=4))
    ids = []
    for i in range(4):
        params = {"prompt": f"p{i}", "negative_prompt": None, "n": 1, "seed": i, "loras": [], "guidance": 0.0,
                  **SMALL}
        ids.append(server.engine.store.submit("alice", params, 1, batch_key(params), 10).id)
    with server:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            jobs = [wait_done(c, i) for i in ids]
            alone = c.post("/v1/jobs", json={"prompt": "p2", "seed": 2, **SMALL}, headers=auth("alice")).json()
            alone = wait_done(c, alone["id"])
            assert [j["batch_images"] for j in jobs] == [4] * 4 and alone["batch_images"] == 1
            batched = c.get(f"/v1/jobs/{ids[2]}/images/0", headers=auth("alice")).content
            single = c.get(f"/v1/jobs/{alone['id']}/images/0", headers=auth("alice")).content
    # an image depends on its seed alone, not on its batch companions
    assert np.abs(pixels(batched) - pixels(single)).max() <= 1


def test_full_queue_answers_429_with_retry_after(nano_turbo, tmp_path):
    from fastapi.testclient import TestClient

    from weightshop.serve.api import create_app
    from weightshop.serve.engine import Engine, model_facts

    engine = Engine(make_config(tmp_path, nano_turbo, max_queue=2, keys=None))
    engine.facts = model_facts(nano_turbo, engine.config)  # no worker started: the queue only fills
    with TestClient(create_app(engine, manage_engine=False)) as c:
        assert [c.post("/v1/jobs", json={"prompt": "a"}).status_code for _ in range(2)] == [202, 202]
        full = c.post("/v1/jobs", json={"prompt": "a"})
        assert full.status_code == 429 and int(full.headers["retry-after"]) >= 1
        assert full.json()["error"]["code"] == "queue_full"
        assert c.get("/readyz").status_code == 503


def test_served_images_equal_generate(nano_turbo, client):
    """The worker renders through `generate`'s own path (trimmed text, weightshop's loop): the same pixels."""
    from weightshop.generate import GenerateRequest, generate

    r = client.post("/v1/jobs", json={"prompt": "a blue circle", "seed": 3, **SMALL}, headers=auth("alice"))
    job = wait_done(client, r.json()["id"])
    served = pixels(client.get(f"/v1/jobs/{job['id']}/images/0", headers=auth("alice")).content)
    made = generate(nano_turbo, GenerateRequest(prompts=["a blue circle"], seeds=[3], width=32, height=32, steps=2))
    assert np.abs(served - np.asarray(made[0].image, dtype=np.int16)).max() <= 1  # float images within 1e-3
