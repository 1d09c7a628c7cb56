"""What every command shares: a stderr console, JSON on stdout, errors without tracebacks."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from weightshop.errors import WeightshopError

# Progress, tables and messages go to stderr, so stdout carries only the --json object.
console = Console(stderr=True)

JSON_OPTION = typer.Option(False, "--json", help="Print the result as one JSON object on stdout.")


def quiet_libraries() -> None:
    """Silence the libraries' own progress bars and chatter; weightshop shows its own progress."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    try:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        for lib in (dlog, tlog):
            lib.set_verbosity_error()
            lib.disable_progress_bar()
    except Exception:
        pass
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def emit(result: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, default=str) + "\n")
        sys.stdout.flush()


def guarded(fn: Callable) -> Callable:
    """Turn WeightshopError into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except WeightshopError as e:
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _metrics(metrics: dict | None) -> str:
    return " ".join(f"{k} {v:.4g}" for k, v in (metrics or {}).items() if isinstance(v, (int, float)))


@contextmanager
def step_progress(description: str, every_s: float = 30.0) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar driven by (label, done, total) callbacks; one task per label.

    When stderr is not a terminal (a log file, CI), a plain line per label every `every_s` seconds and at
    completion replaces the live bar, so long runs stay observable in their logs.
    """
    if not console.is_terminal:
        import time

        last: dict[str, float] = {}
        start = time.monotonic()

        def log(label: str, done: int, total: int, metrics: dict | None = None) -> None:
            now = time.monotonic()
            if done >= total or now - last.get(label, 0.0) >= every_s:
                last[label] = now
                line = f"[{now - start:7.0f}s] {description} {label}: {done}/{total} {_metrics(metrics)}"
                console.print(" ".join(line.split()), highlight=False, soft_wrap=True)

        yield log
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as progress:
        tasks: dict[str, int] = {}

        def update(label: str, done: int, total: int, metrics: dict | None = None) -> None:
            text = " ".join(f"{description} {label} {_metrics(metrics)}".split())
            if label not in tasks:
                tasks[label] = progress.add_task(text, total=total)
            progress.update(tasks[label], completed=done, total=total, description=text)

        yield update
