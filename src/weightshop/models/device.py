"""How weightshop uses the machine it runs on: CPU threads that do not oversubscribe it."""

from __future__ import annotations

import torch


def cpu_threads() -> int:
    """Intra-op threads for work on the CPU: OMP_NUM_THREADS when set, else one fewer than the cores this process may
    use (at least one). torch's default (every core) oversubscribes a machine that does anything else: on a busy
    2-core box training steps ran about 6x slower, with stalls of seconds, than with one thread."""
    import os

    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, usable - 1)


def use_cpu_threads() -> int:
    """Lower torch's intra-op threads to `cpu_threads()` (never raise them: a caller that chose fewer keeps them)."""
    threads = min(torch.get_num_threads(), cpu_threads())
    torch.set_num_threads(threads)
    return threads
