"""The durable job store and the engine's pure parts: admission, batching keys, validation, rate limits."""

from __future__ import annotations

import pytest

from weightshop.errors import WeightshopError
from weightshop.serve import ServeConfig
from weightshop.serve.engine import ModelFacts, RateLimited, RateLimiter, batch_key, check_params
from weightshop.serve.store import JobStore, QueueFull

FACTS = ModelFacts(size_multiple=8, default_size=64, max_side=128, preset_steps=8, preset_guidance=0.0,
                   max_tokens=8, count_tokens=lambda text: len(text.split()))


def params(prompt="a", **kw):
    base = {"prompt": prompt, "negative_prompt": None, "n": 1, "width": 64, "height": 64, "steps": 2,
            "guidance": 0.0, "seed": 0, "loras": []}
    return {**base, **kw}


def submit(store, owner="alice", max_active=100, **kw):
    p = params(**kw)
    return store.submit(owner, p, p["n"], batch_key(p), max_active)


def test_store_is_wal_and_ids_are_unguessable(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    assert store.journal_mode() == "wal"
    ids = {submit(store).id for _ in range(50)}
    assert len(ids) == 50 and all(len(i) == 24 for i in ids)


def test_claim_batches_compatible_jobs_up_to_max_images(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    a = submit(store, prompt="a", n=2)
    other = submit(store, prompt="b", width=32)  # another size: never in a's batch
    c = submit(store, prompt="c", n=2)
    d = submit(store, prompt="d", n=2)
    batch = store.claim(max_images=4)
    assert [j.id for j in batch] == [a.id, c.id] and all(j.status == "running" and j.attempts == 1 for j in batch)
    assert [j.id for j in store.claim(4)] == [other.id]
    assert [j.id for j in store.claim(4)] == [d.id]
    assert store.claim(4) == []


def test_complete_is_exactly_once_across_recover(tmp_path):
    """A job reclaimed after a crash completes once; the stale first attempt cannot complete it again."""
    store = JobStore(tmp_path / "jobs.sqlite3")
    job = submit(store)
    first = store.claim(1)[0]
    assert store.recover() == 1  # the process died mid-render
    second = store.claim(1)[0]
    assert second.attempts == 2
    assert store.complete(second, {"images": ["0.png"]})
    assert not store.complete(first, {"images": ["stale"]}) and not store.complete(second, {"images": ["again"]})
    done = store.get(job.id)
    assert (done.status, done.completions, done.result) == ("done", 1, {"images": ["0.png"]})
    reopened = JobStore(tmp_path / "jobs.sqlite3")  # durable: a new process sees the same
    assert reopened.get(job.id).completions == 1


def test_cancel_only_own_and_unfinished_jobs(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    queued, running = submit(store), submit(store, prompt="b", width=32)
    store.claim(1)
    assert store.cancel(queued.id, "bob") is None  # another owner's job looks missing
    assert store.cancel(queued.id, "alice").status == "cancelled"
    claimed = store.get(running.id)
    store.claim(1)
    claimed = store.get(running.id)
    assert store.cancel(running.id, "alice").status == "cancelled"
    assert not store.complete(claimed, {"images": []})  # the render's result is dropped
    assert store.get(running.id).completions == 0


def test_queue_is_bounded(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    for _ in range(3):
        submit(store, max_active=3)
    with pytest.raises(QueueFull) as e:
        submit(store, max_active=3)
    assert e.value.depth == 3 and store.depth() == 3


def test_batch_key_ignores_prompt_seed_and_n_only():
    assert batch_key(params("a", seed=1, n=2)) == batch_key(params("b", seed=7, n=1))
    assert batch_key(params(steps=2)) != batch_key(params(steps=3))
    assert batch_key(params(loras=[{"name": "x", "strength": 1.0}])) != batch_key(params())
    # the negative prompt matters only with guidance
    assert batch_key(params(negative_prompt="x")) == batch_key(params())
    assert batch_key(params(negative_prompt="x", guidance=4.0)) != batch_key(params(guidance=4.0))


@pytest.mark.parametrize("spec, field", [
    ({"prompt": ""}, "prompt"), ({"prompt": "one two three four five six seven eight nine"}, "tokens"),
    ({"prompt": "a", "n": 9}, "n:"), ({"prompt": "a", "width": 60}, "multiple of 8"),
    ({"prompt": "a", "height": 8}, "height"), ({"prompt": "a", "width": 4096}, "width"),
    ({"prompt": "a", "steps": 99}, "steps"), ({"prompt": "a", "guidance": -1.0}, "guidance"),
    ({"prompt": "a", "guidance": float("nan")}, "guidance"), ({"prompt": "a", "seed": -1}, "seed"),
    ({"prompt": "a", "loras": [{"name": "../style"}]}, "unknown LoRA"),
    ({"prompt": "a", "loras": [{"name": "/abs/style.safetensors"}]}, "unknown LoRA"),
    ({"prompt": "a", "loras": [{"name": "style", "strength": 9.0}]}, "strength"),
    ({"prompt": "a", "loras": [{"name": "style"}, {"name": "style"}]}, "twice"),
])
def test_bad_parameters_are_named(spec, field, tmp_path):
    config = ServeConfig(data_dir=tmp_path, max_steps=4)
    with pytest.raises(WeightshopError, match=field):
        check_params(spec, FACTS, config, {"style": tmp_path / "style.safetensors"})


def test_defaults_resolve_and_seed_is_drawn_once(tmp_path):
    resolved = check_params({"prompt": "a"}, FACTS, ServeConfig(data_dir=tmp_path, max_steps=8), {})
    assert (resolved["width"], resolved["height"], resolved["steps"], resolved["guidance"]) == (64, 64, 8, 0.0)
    assert isinstance(resolved["seed"], int)


def test_rate_limiter_refills_and_says_when():
    now = [0.0]
    limiter = RateLimiter(per_minute=2, clock=lambda: now[0])
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimited) as e:
        limiter.take("a")
    assert 0 < e.value.retry_after <= 30
    limiter.take("b")  # keys are limited separately
    now[0] += 30.0
    limiter.take("a")
