"""The file helpers every layer shares: atomic writes (bytes, text, JSON, safetensors), safe reads of JSON and
safetensors headers, and content hashes. Every file weightshop writes goes through one of the writers here."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def _replacing(path: Path) -> Iterator[str]:
    """A temporary file beside `path` to write; on success it is synced, given the usual permissions and renamed over
    `path` (readers see the old file or the whole new one), on failure removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """For writers that insist on a path of their own (the gguf package's GGUFWriter): a temporary file beside
    `path` to write, renamed over `path` when the block succeeds (readers see the old file or the whole new one),
    removed when it fails."""
    with _replacing(Path(path)) as tmp:
        yield Path(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write data so that readers see either the old file or the whole new one, never a torn write."""
    path = Path(path)
    with _replacing(path) as tmp:
        Path(tmp).write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save_safetensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None) -> Path:
    """Save torch tensors as one safetensors file, atomically: written to a temporary file beside it, synced, then
    renamed over `path`, so a reader (or a resume after a kill) sees the old file or the whole new one.

    Tensors are moved to the CPU and made contiguous first, so callers can pass parameters or views as they are.
    Streamed to disk rather than serialised in memory: a merged 12.8 B transformer must not be held twice."""
    from safetensors.torch import save_file

    path = Path(path)
    with _replacing(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    return path


_NO_FILE = object()


def read_json(path: str | os.PathLike, missing: Any = _NO_FILE) -> Any:
    """A JSON file's content; `missing` (default {}) when the file does not exist; a clear error when it is not JSON."""
    from weightshop.errors import WeightshopError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {} if missing is _NO_FILE else missing
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        where = f" at line {e.lineno}" if isinstance(e, json.JSONDecodeError) else ""
        reason = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
        raise WeightshopError(f"{path} is not valid JSON ({reason}{where})") from None


def safetensors_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from a safetensors file's header only (no weights read, nothing unpickled)."""
    from safetensors import safe_open

    from weightshop.errors import WeightshopError

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:
        raise WeightshopError(
            f"{path} is not a readable safetensors file ({type(e).__name__}: {e}); it may be truncated "
            "or in another format (weightshop never unpickles .bin/.pt/.ckpt files)"
        ) from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for the life of the process.

    Model files are large (25 GB for Krea 2's transformer); generation records their hash in every
    image, so a run hashes each file once, not once per image.
    """
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = sha256_file(path)
    return _HASH_CACHE[key]
