"""`weightshop serve --ray`: the same API rendered by 2 Ray Serve replicas on CPU, on 127.0.0.1 only; one replica is
killed (SIGKILL) under load and every accepted job still completes exactly once (counted in the store).

Skipped, with the reason, when Ray Serve is not installed (`pip install -c constraints.txt -e ".[serve,ray]"`). A local Ray
of 2 CPUs without dashboard is started for this module and always shut down; every wait is bounded in time.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import sqlite3
import sys
import threading
import time
import urllib.request

import pytest

from tests.serve.conftest import KEYS, auth, make_config
from weightshop.errors import WeightshopError
from weightshop.serve import ServeConfig
from weightshop.serve.ray_app import replica_plan, require_ray
from weightshop.serve.server import post_json

EXTRA = "Ray Serve is an optional extra: pip install -c constraints.txt -e \".[serve,ray]\""
JOB = {"prompt": "a red circle", "steps": 4, "width": 128, "height": 128}  # about a second a render


def test_without_ray_the_flag_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(WeightshopError, match=r"\.\[serve,ray\]"):
        require_ray()


def test_one_replica_per_gpu_or_as_many_as_asked_on_cpu():
    assert replica_plan(ServeConfig(devices=["cuda"]), {"GPU": 4.0, "CPU": 32.0}) == (4, {"num_cpus": 1.0,
                                                                                         "num_gpus": 1})
    assert replica_plan(ServeConfig(devices=["cuda"], ray_replicas=2), {"GPU": 4.0})[0] == 2
    assert replica_plan(ServeConfig(ray_replicas=3, ray_cpus_per_replica=0.5), {"CPU": 2.0}) == (3, {"num_cpus": 0.5})
    assert replica_plan(ServeConfig(), {"CPU": 2.0})[0] == 1
    with pytest.raises(WeightshopError, match="no GPU"):
        replica_plan(ServeConfig(devices=["cuda:0"]), {"CPU": 8.0})


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason=EXTRA, exc_type=ImportError)
    serve = pytest.importorskip("ray.serve", reason=EXTRA, exc_type=ImportError)
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
             object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        yield ray
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


@pytest.fixture(scope="module")
def ray_server(ray_cluster, lora_dir, tmp_path_factory):
    from weightshop.serve import Server

    config = make_config(tmp_path_factory.mktemp("ray"), "krea2-nano-turbo", lora_dir, dtype="fp32", ray=True,
                         ray_replicas=2, ray_cpus_per_replica=0.5, max_batch=1, max_queue=100)
    server = Server(config).start(timeout=180)
    try:
        yield server
    finally:
        server.stop()


def get(url: str, headers: dict | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rows(server) -> dict[str, tuple]:
    db = sqlite3.connect(server.config.db_path, timeout=10)
    try:
        return {r[0]: r[1:] for r in db.execute("SELECT id, status, completions, attempts, result, started FROM jobs")}
    finally:
        db.close()


def test_ray_replicas_serve_the_same_api(ray_server):
    url = ray_server.url
    status, body = get(f"{url}/readyz")
    assert status == 200 and json.loads(body)["workers"] == 2
    info = json.loads(get(f"{url}/v1/info", auth("alice"))[1])
    assert info["model"] and info["size_multiple"]  # facts from a replica: the head never loads the model

    body = {"prompt": "a red circle", "size": "64x64", "steps": 2, "seed": 7,
            "loras": [{"name": "style", "strength": 0.5}]}
    status, answer = post_json(f"{url}/v1/images/generations", body, key=KEYS["alice"], timeout=60)
    assert status == 200, answer
    png = base64.b64decode(answer["data"][0]["b64_json"])
    job_id = answer["weightshop"]["id"]
    assert answer["weightshop"]["seeds"] == [7] and answer["weightshop"]["cost_per_image"] > 0
    assert get(f"{url}/v1/jobs/{job_id}/images/0", auth("alice")) == (200, png)
    assert get(f"{url}/v1/jobs/{job_id}", auth("bob"))[0] == 404  # another key's job
    record = json.loads((ray_server.config.results_dir / job_id / "0.json").read_text())
    assert record["seed"] == 7 and [x["path"] for x in record["loras"]] == ["style.safetensors"]

    status, answer = post_json(f"{url}/v1/jobs", {**JOB, "loras": [{"name": "../secret", "strength": 1}]},
                               key=KEYS["alice"], timeout=10)
    assert status == 400 and "lora" in answer["error"]["message"].lower()
    metrics = get(f"{url}/metrics")[1].decode()
    assert 'weightshop_stage_seconds_count{stage="render"}' in metrics  # replayed from the replica
    assert "weightshop_images_total 1.0" in metrics


def test_progress_of_a_render_on_a_replica_reaches_the_api(ray_server):
    """A replica posts its jobs' progress to the head's board; GET /v1/jobs/ID shows it while the job runs (4
    images of 4 steps, one at a time: about 4 s)."""
    url = ray_server.url
    status, body = post_json(f"{url}/v1/jobs", {**JOB, "n": 4, "seed": 3}, key=KEYS["alice"], timeout=10)
    assert status == 202, body
    seen, final = [], None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # bounded: 90 s, a poll every 0.1 s
        final = json.loads(get(f"{url}/v1/jobs/{body['id']}", auth("alice"))[1])
        if final["status"] == "running":
            seen.append(final["progress"])
        if final["status"] not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert final["status"] == "done" and final["progress"] == 1.0
    partial = [p for p in seen if 0 < p < 1]
    assert partial and partial == sorted(partial), seen  # seen mid-render, and only ever forward
    assert body["id"] not in ray_server.engine.progress  # forgotten once the job ended


def test_a_replica_killed_under_load_loses_no_job_and_runs_none_twice(ray_server):
    url = ray_server.url
    accepted: list[str] = []
    stop = threading.Event()

    def client():
        for i in range(12):  # bounded: at most 12 submissions, each with a timeout
            if stop.is_set():
                return
            status, body = post_json(f"{url}/v1/jobs", {**JOB, "prompt": f"a red circle {i % 4}", "seed": 100 + i},
                                     key=KEYS["bob"], timeout=10)
            if status == 202:
                accepted.append(body["id"])
            time.sleep(0.05)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    victim, seen = None, []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for both replicas mid-render, and a replica's pid from a finished job
        now = rows(ray_server)
        done = [json.loads(r[3])["device"] for r in now.values() if r[0] == "done"]
        rendering = [r for r in now.values() if r[0] == "running" and time.time() - r[4] > 0.2]
        seen.append((round(time.monotonic() - deadline + 60, 2), len(done), len(rendering),
                     sum(r[0] == "queued" for r in now.values())))
        if done and len(rendering) >= 2:  # two jobs claimed 0.2 s ago: each replica has one (one at a time each)
            victim = int(done[-1].split(":")[1])
            break
        time.sleep(0.02)
    changes = [s for i, s in enumerate(seen) if i == 0 or s[1:] != seen[i - 1][1:]]
    assert victim, f"the load never kept both replicas busy: (s, done, rendering > 0.2 s, queued) {changes[:40]}"
    os.kill(victim, signal.SIGKILL)  # a replica dies mid-render: no shutdown code runs in it
    thread.join(30)
    stop.set()

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        final = rows(ray_server)
        if all(r[0] not in ("queued", "running") for r in final.values()):
            break
        time.sleep(0.1)
    final = rows(ray_server)
    mine = {job_id: final[job_id] for job_id in accepted}
    assert len(accepted) == 12 and len(mine) == 12  # no accepted job lost
    assert all(status == "done" and completions == 1 for status, completions, _, _, _ in final.values()), final
    lost = sum(d.lost for d in ray_server.engine.workers)
    rendered_again = [job_id for job_id, r in mine.items() if r[2] >= 2]
    assert lost >= 1 and rendered_again  # the killed replica had a render in flight: queued again, completed once
    for job_id in mine:
        assert [p.name for p in (ray_server.config.results_dir / job_id).glob("*.png")] == ["0.png"]
    devices = {json.loads(r[3])["device"] for r in mine.values()}
    assert any(f":{victim}:" not in d for d in devices)  # the other replica kept rendering
    assert get(f"{url}/readyz")[0] == 200

    from ray import serve

    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:  # Serve replaces the dead replica: two running again
        states = serve.status().applications["weightshop"].deployments["Renderer"].replica_states
        if states.get("RUNNING", 0) == 2:
            break
        time.sleep(0.5)
    assert states.get("RUNNING", 0) == 2, states
