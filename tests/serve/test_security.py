"""Security: LoRA names never become paths, bodies are bounded, keys are required, hashed and rate limited, and a
key sees only its own jobs."""

from __future__ import annotations

import sqlite3

import httpx
import pytest

from tests.serve.conftest import KEYS, auth


@pytest.fixture(scope="module")
def client(served):
    with httpx.Client(base_url=served.url, timeout=60) as c:
        yield c


@pytest.mark.parametrize("name", ["../style", "../../secret", "/etc/passwd", "style.safetensors", "loras/style",
                                  "linked", "secret", "..", "%2e%2e%2fstyle", "style\x00", "C:\\style"])
def test_lora_names_are_never_paths(client, name):
    r = client.post("/v1/jobs", json={"prompt": "a", "loras": [{"name": name}]}, headers=auth("alice"))
    assert r.status_code == 400 and "LoRA" in r.json()["error"]["message"]


def test_oversized_bodies_are_refused(served, client):
    big = {"prompt": "a", "negative_prompt": "x" * (served.config.max_body_bytes + 10)}
    r = client.post("/v1/jobs", json=big, headers=auth("alice"))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks():  # no Content-Length: streamed, counted as it arrives
        for _ in range(20):
            yield b"x" * 8192

    r = client.post("/v1/jobs", content=chunks(), headers={**auth("alice"), "Content-Type": "application/json"})
    assert r.status_code in (400, 413)


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer nope-nope-nope"}, {"X-API-Key": "alice"},
                                     {"Authorization": "Basic " + KEYS["alice"]}])
def test_missing_or_wrong_keys_get_401(client, headers):
    for method, path in (("post", "/v1/jobs"), ("get", "/v1/jobs"), ("get", "/v1/loras"),
                         ("post", "/v1/images/generations")):
        r = client.request(method, path, json={"prompt": "a"}, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_a_key_sees_only_its_own_jobs(client):
    job = client.post("/v1/jobs", json={"prompt": "mine", "width": 32, "height": 32, "steps": 1},
                      headers={"X-API-Key": KEYS["alice"]}).json()
    for method, path in (("get", f"/v1/jobs/{job['id']}"), ("get", f"/v1/jobs/{job['id']}/images/0"),
                         ("post", f"/v1/jobs/{job['id']}/cancel")):
        r = client.request(method, path, headers=auth("bob"))
        assert r.status_code == 404 and r.json()["error"]["message"] == "no such job"  # same as a missing one
    assert job["id"] not in [j["id"] for j in client.get("/v1/jobs", headers=auth("bob")).json()["data"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth("alice")).status_code == 200
    assert client.get("/v1/jobs/../../etc/passwd", headers=auth("alice")).status_code == 404
    assert client.get("/v1/jobs/short", headers=auth("alice")).status_code == 400


def test_keys_are_stored_hashed_only(served):
    config = served.config
    assert KEYS["alice"] not in repr(config.__dict__)
    db = sqlite3.connect(config.db_path)
    dump = "\n".join(db.iterdump())
    db.close()
    assert not any(key in dump for key in KEYS.values())


def test_rate_limit_per_key_answers_429_with_retry_after(nano_turbo, tmp_path):
    from fastapi.testclient import TestClient

    from tests.serve.conftest import make_config
    from weightshop.serve.api import create_app
    from weightshop.serve.engine import Engine, model_facts

    engine = Engine(make_config(tmp_path, nano_turbo, rate_per_minute=3))
    engine.facts = model_facts(nano_turbo, engine.config)
    with TestClient(create_app(engine, manage_engine=False)) as c:
        codes = [c.post("/v1/jobs", json={"prompt": "a"}, headers=auth("alice")).status_code for _ in range(4)]
        assert codes == [202, 202, 202, 429]
        limited = c.post("/v1/jobs", json={"prompt": "a"}, headers=auth("alice"))
        assert limited.json()["error"]["code"] == "rate_limit_exceeded" and int(limited.headers["retry-after"]) >= 1
        assert c.post("/v1/jobs", json={"prompt": "a"}, headers=auth("bob")).status_code == 202  # bob's own bucket
