"""The web page in headless Chromium: submit from the page, see the image appear, keep a screenshot.

Chromium is Debian's package; the test installs it with apt-get when it is missing and it can (root), and
skips with the reason otherwise. The screenshot is kept in weightshop-out/test-artifacts/serve-page.png.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ARTIFACTS = Path("weightshop-out/test-artifacts")


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("no chromium, and not root with apt-get to install Debian's package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, timeout=600)
        if not shutil.which("chromium"):
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, capture_output=True, timeout=600)
    except subprocess.TimeoutExpired:
        pytest.skip("installing chromium with apt-get timed out")
    if not shutil.which("chromium"):
        pytest.skip("chromium could not be installed with apt-get")
    return shutil.which("chromium")


def headless(binary: str, url: str, *args: str, profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", f"--user-data-dir={profile}", "--window-size=1100,760",
                           "--virtual-time-budget=20000", *args, url],
                          capture_output=True, text=True, timeout=90)


def test_submit_from_the_page_and_see_the_image(nano_turbo, lora_dir, tmp_path):
    from tests.serve.conftest import make_config
    from weightshop.serve import Server

    binary = chromium()
    with Server(make_config(tmp_path, nano_turbo, lora_dir, keys=None)) as server:
        url = f"{server.url}/?prompt=a+red+circle&steps=2&width=64&height=64&seed=4&lora=style&submit=1"
        dom = headless(binary, url, "--dump-dom", profile=tmp_path / "profile1")
        assert 'class="card"' in dom.stdout and "blob:" in dom.stdout, dom.stderr[-2000:]
        jobs = server.engine.store.list("anonymous")
        assert jobs and jobs[0].status == "done" and jobs[0].params["loras"] == [{"name": "style", "strength": 1.0}]
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "serve-page.png"
        headless(binary, f"{server.url}/?prompt=a+blue+square&steps=2&width=64&height=64&seed=5&submit=1",
                 f"--screenshot={shot.resolve()}", profile=tmp_path / "profile2")
    assert shot.is_file() and shot.stat().st_size > 5000
