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

# Every --device option: the default "auto" is resolved when the command runs (resolve_device), so --help
# never imports torch to ask whether CUDA is there.
DEVICE_CHOICES = "auto (cuda when available, else cpu), cpu, cuda or cuda:N"
DEVICE_HELP = "auto (cuda when available, else cpu), cpu, cuda, cuda:1 ..."


# Quiet defaults for the libraries, set before they are imported (so --help imports none of them); a value the
# user already set wins. The diffusers / transformers verbosity variables, the Hub's progress bars (transformers'
# follow them), and tqdm's own default (diffusers' "Loading checkpoint shards" bar has no switch of its own;
# weightshop draws its progress with rich, never tqdm).
QUIET_ENVIRONMENT = {
    "TOKENIZERS_PARALLELISM": "false",
    "DIFFUSERS_VERBOSITY": "error",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}

# Import-time noise printed before any command's own output: torch's deprecation note on a library registering its
# Enums as pytree constants (seen with the pinned torch 2.13). Only these messages are dropped; every other record
# of these loggers (and all of weightshop's) still shows.
IMPORT_NOISE = {
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported by torch.compile",),
}


class _DropMessages(logging.Filter):
    """Drop a logger's records whose message contains one of `fragments`."""

    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        return not any(fragment in message for fragment in self.fragments)


def quiet_libraries() -> None:
    """Silence the libraries' own progress bars, chatter and import noise; weightshop shows its own progress.

    Imports none of them (the CLI calls this before --help, which must stay fast): environment variables and
    logger filters that take effect when a command imports them. Libraries already imported are set directly.
    """
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        lib = sys.modules.get(name)
        if lib is not None:
            lib.set_verbosity_error()
            lib.disable_progress_bar()
    for name, fragments in IMPORT_NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(fragments))
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def resolve_device(text: str | None, option: str = "--device") -> str:
    """The torch device a command runs on: `auto` (the default) is cuda when available, else cpu.

    Imports torch, so call it in the command's body, never for an option's default.
    """
    import torch

    value = "auto" if text is None else str(text).strip().lower()
    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise WeightshopError(f"{option} {text!r}: expected {DEVICE_CHOICES}") from None
    if device.type == "meta":
        raise WeightshopError(f"{option} {text!r}: the meta device holds no data; expected {DEVICE_CHOICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise WeightshopError(f"{option} {text!r}: CUDA is not available here (torch {torch.__version__}); "
                                  "use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise WeightshopError(f"{option} {text!r}: this machine has {torch.cuda.device_count()} CUDA "
                                  f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return str(device)


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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _pace(done: int, elapsed: float, left: int) -> str:
    """Rate and time left from this sitting's progress: "2.41 it/s, ETA 3m05s" (or s/it when slower than 1 it/s)."""
    if done <= 0 or elapsed <= 0:
        return ""
    rate = done / elapsed
    speed = f"{rate:.2f} it/s" if rate >= 1 else f"{1 / rate:.2f} s/it"
    return f"{speed}, ETA {_duration(left / rate)}" if left > 0 else speed


@contextmanager
def step_progress(description: str, every_s: float = 30.0) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress bar driven by (label, done, total) callbacks; one task per label.

    When stderr is not a terminal (a log file, CI), a plain line per label every `every_s` seconds and at
    completion replaces the live bar, so long runs stay observable in their logs.
    """
    if not console.is_terminal:
        import time

        last: dict[str, float] = {}
        first: dict[str, tuple[float, int]] = {}  # per label: when this sitting's first update came, at which count
        start = time.monotonic()

        def log(label: str, done: int, total: int, metrics: dict | None = None) -> None:
            now = time.monotonic()
            began, base = first.setdefault(label, (now, done))
            if done >= total or now - last.get(label, 0.0) >= every_s:
                last[label] = now
                pace = _pace(done - base, now - began, total - done)
                line = f"[{now - start:7.0f}s] {description} {label}: {done}/{total} {_metrics(metrics)} {pace}"
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
