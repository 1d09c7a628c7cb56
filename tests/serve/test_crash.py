"""kill -9 the real server (`weightshop serve` in a subprocess) while it renders, restart it: every accepted job
completes exactly once, and results finished before the crash are still served, byte for byte."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from weightshop.serve.server import post_json

STARTUP_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class ServeProcess:
    """`weightshop serve` on 127.0.0.1 at a free port; always killed by `kill()` (the fixture's teardown)."""

    def __init__(self, data_dir, log_path, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "WEIGHTSHOP_API_KEYS": "", "OMP_NUM_THREADS": "1"}
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "weightshop.cli.main", "serve", "--model", "krea2-nano-turbo", "--device", "cpu",
             "--host", "127.0.0.1", "--port", str(self.port), "--data-dir", str(data_dir), *args],
            stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the server exited while starting"
            try:
                if get(f"{self.url}/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError("the server did not become ready in time")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture()
def processes():
    started: list[ServeProcess] = []
    yield started
    for p in started:
        p.kill()


def test_kill_9_mid_load_then_restart_completes_every_accepted_job_once(tmp_path, processes):
    data = tmp_path / "serve"
    args = ("--max-batch", "2", "--max-queue", "100", "--dollars-per-hour", "1.0")
    first = ServeProcess(data, tmp_path / "serve.log", *args)
    processes.append(first)
    first.wait_ready()

    accepted: list[str] = []
    stop = threading.Event()

    def client():
        for i in range(40):  # bounded: at most 40 submissions, each with a timeout
            if stop.is_set():
                return
            try:
                status, body = post_json(f"{first.url}/v1/jobs", {"prompt": f"a red circle {i % 5}", "steps": 4,
                                                                  "width": 64, "height": 64, "seed": i}, timeout=5)
            except OSError:
                return  # the server is gone
            if status == 202:
                accepted.append(body["id"])
            time.sleep(0.05)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        db = sqlite3.connect(data / "jobs.sqlite3", timeout=10)
        counts = dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        db.close()
        if counts.get("done", 0) >= 3 and counts.get("running", 0) >= 1:
            break
        time.sleep(0.02)
    else:
        raise AssertionError("the load never reached 3 done jobs with one running")
    first.kill()  # SIGKILL mid-render: no shutdown handler runs
    stop.set()
    thread.join(10)
    db = sqlite3.connect(data / "jobs.sqlite3", timeout=10)
    at_kill = dict(db.execute("SELECT id, status FROM jobs").fetchall())
    db.close()
    interrupted = {i for i, status in at_kill.items() if status == "running"}
    finished = [i for i, status in at_kill.items() if status == "done"]
    done_before = {i: (data / "results" / i / "0.png").read_bytes() for i in finished}
    assert accepted and finished and interrupted

    second = ServeProcess(data, tmp_path / "serve.log", *args)
    processes.append(second)
    second.wait_ready()
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        db = sqlite3.connect(data / "jobs.sqlite3", timeout=10)
        active = db.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0]
        db.close()
        if active == 0:
            break
        time.sleep(0.1)
    db = sqlite3.connect(data / "jobs.sqlite3", timeout=10)
    rows = {r[0]: r[1:] for r in db.execute("SELECT id, status, completions, attempts FROM jobs")}
    db.close()
    assert set(accepted) <= set(rows)  # no accepted job lost
    assert all(status == "done" and completions == 1 for status, completions, _ in rows.values()), rows
    assert all(rows[i][2] == 2 for i in interrupted)  # rendered again after the kill, completed once
    for job_id in rows:
        assert len(list((data / "results" / job_id).glob("*.png"))) == 1
    for job_id, png in done_before.items():  # finished results are still served, unchanged
        assert get(f"{second.url}/v1/jobs/{job_id}/images/0") == (200, png)
