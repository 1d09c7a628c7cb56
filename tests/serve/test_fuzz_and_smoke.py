"""schemathesis fuzzes the published OpenAPI (valid and invalid inputs): no request gets a 5xx. And `smoke`, the
function `weightshop demo` calls: a brief server, one image through the API with a LoRA, latency and cost."""

from __future__ import annotations

import pytest

from tests.serve.conftest import KEYS, make_config


def test_fuzzing_the_openapi_finds_no_5xx(nano_turbo, lora_dir, tmp_path):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis.errors import Unsatisfiable

    from weightshop.serve import Server

    config = make_config(tmp_path, nano_turbo, lora_dir, max_side=32, max_n=2, max_steps=1, rate_per_minute=1e6,
                         max_queue=1000)
    headers = {"Authorization": f"Bearer {KEYS['alice']}"}
    with Server(config) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
        seen, errors = [], []
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

                @settings(max_examples=25, deadline=None, database=None, phases=[Phase.generate],
                          suppress_health_check=list(HealthCheck), derandomize=True)
                @given(case=operation.as_strategy(generation_mode=mode))
                def probe(case):
                    response = case.call(base_url=server.url, headers=headers, timeout=60)
                    seen.append(response.status_code)
                    if response.status_code >= 500:
                        errors.append((case.method, case.formatted_path, case.body, response.text[:300]))

                try:
                    probe()
                except Unsatisfiable:
                    pass  # nothing invalid to send (an operation without parameters)
        assert not errors, errors[:3]
        assert len(seen) > 50 and any(400 <= s < 500 for s in seen) and any(s < 300 for s in seen)


def test_smoke_generates_through_the_api_with_a_lora(nano_turbo, lora_dir):
    from weightshop.serve import smoke

    result = smoke(nano_turbo, lora_dir / "style.safetensors", 0.8, size=32, steps=2, dollars_per_hour=2.0)
    assert result["lora"] == "style" and result["strength"] == 0.8
    assert 0 < result["render_s"] <= result["latency_s"] < 60
    assert result["cost_per_image"] == pytest.approx(2.0 * result["render_s"] / 3600)
    assert result["image_bytes"] > 100


def test_load_script_counts_and_bounds(nano_turbo):
    from weightshop.serve.load import percentile, serve_and_load

    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([], 95) is None
    result = serve_and_load(nano_turbo, max_batch=4, requests=8, concurrency=4,
                            body={"prompt": "a red circle", "size": "32x32", "steps": 1}, warmup_requests=1)
    assert result["ok"] == 8 and result["failures"] == 0 and result["p50_s"] <= result["p95_s"]
    assert result["images_per_s"] > 0 and result["mean_batch_images"] >= 1
