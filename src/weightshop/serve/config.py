"""What a server is told: the model, its devices, the limits it enforces, the keys it accepts, what a device-hour costs.

One dataclass, built by the CLI from its options and by tests and `smoke` directly. API keys are kept only as
sha256 hashes: a key given in plain text (environment or `add_key`) is hashed on arrival and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from weightshop.errors import WeightshopError

KEYS_ENV = "WEIGHTSHOP_API_KEYS"  # "name:key,name2:key2" (plain keys, hashed on arrival)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass
class ServeConfig:
    """Everything a server needs; every limit here is enforced with a 4xx that names it."""

    model: Any = "krea2-nano-turbo"  # a name/path for load_model, or an already loaded LoadedModel
    data_dir: Path = Path("weightshop-out/serve")  # jobs.sqlite3 and results/<job id>/
    lora_dir: Path | None = None
    devices: list[str] = field(default_factory=lambda: ["cpu"])  # one worker per device
    dtype: str = "auto"
    checkpoint: str | None = None
    components: Path | None = None
    offload: str = "none"
    max_queue: int = 64  # queued + running jobs; one more answers 429
    max_batch: int = 8  # images per forward pass across compatible jobs
    max_n: int = 4  # images per request
    max_side: int = 1024  # pixels; also bounded by the family's hard maximum
    max_steps: int = 64
    max_guidance: float = 20.0
    max_body_bytes: int = 64 * 1024
    max_loras: int = 4
    lora_cache: int = 4  # adapters kept loaded (LRU)
    dollars_per_hour: float = 0.0  # per device; cost per image = busy seconds x this / 3600 / images
    rate_per_minute: float = 120.0  # submissions per key per minute (token bucket, burst = one minute's worth)
    key_hashes: dict[str, str] = field(default_factory=dict)  # sha256 hex -> key name
    sync_timeout_s: float = 600.0  # how long POST /v1/images/generations waits for its images
    warmup: bool = False  # one tiny render per worker before the server reports ready
    retry_after_s: int = 2
    ray: bool = False  # render on Ray Serve replicas (serve/ray_app.py) instead of local workers
    ray_address: str | None = None  # None: a local Ray on 127.0.0.1; "auto" or host:port: a running cluster
    ray_replicas: int = 0  # 0: one per GPU of the cluster (a CUDA device), or 1 on CPU
    ray_cpus_per_replica: float = 1.0

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        self.lora_dir = Path(self.lora_dir) if self.lora_dir is not None else None
        for name in ("max_queue", "max_batch", "max_n", "max_side", "max_steps", "max_body_bytes", "lora_cache"):
            if int(getattr(self, name)) < 1:
                raise WeightshopError(f"serve config: {name} must be >= 1, got {getattr(self, name)}")
        if self.dollars_per_hour < 0 or self.rate_per_minute <= 0:
            raise WeightshopError("serve config: dollars_per_hour must be >= 0 and rate_per_minute > 0")
        if not self.devices:
            raise WeightshopError("serve config: give at least one device")
        if self.ray_replicas < 0 or self.ray_cpus_per_replica <= 0:
            raise WeightshopError("serve config: ray_replicas must be >= 0 and ray_cpus_per_replica > 0")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "jobs.sqlite3"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def open_access(self) -> bool:
        """No key configured: every caller is the one owner `anonymous` (meant for loopback use only)."""
        return not self.key_hashes

    def add_key(self, name: str, key: str) -> None:
        if not _NAME.match(name) or len(key) < 8:
            raise WeightshopError(f"API key {name!r}: names are letters, digits, _.- and keys at least 8 characters")
        self.key_hashes[hash_key(key)] = name

    def add_hashed_key(self, name: str, sha256: str) -> None:
        if not _NAME.match(name) or not _HASH.match(sha256):
            raise WeightshopError(f"API key {name!r}: expected a name and the key's sha256 as 64 hex digits")
        self.key_hashes[sha256] = name

    def keys_from_env(self, environ: dict | None = None) -> None:
        text = (environ if environ is not None else os.environ).get(KEYS_ENV, "")
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, key = item.partition(":")
            if not sep:
                raise WeightshopError(f"{KEYS_ENV}: expected name:key pairs separated by commas")
            self.add_key(name, key)

    def keys_from_file(self, path: str | Path) -> None:
        """A YAML or JSON mapping name -> sha256 of the key (`weightshop serve --hash-key` prints one)."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise WeightshopError(f"cannot read API keys file {path}: {e}") from None
        if not isinstance(data, dict):
            raise WeightshopError(f"API keys file {path}: expected a mapping name: sha256")
        for name, digest in data.items():
            self.add_hashed_key(str(name), str(digest))

    def owner_of(self, key: str | None) -> str | None:
        """The key's name, or None for a missing or unknown key; constant-time against every stored hash."""
        if self.open_access:
            return "anonymous"
        if not key:
            return None
        digest = hash_key(key)
        found = None
        for stored, name in self.key_hashes.items():
            if hmac.compare_digest(stored, digest):
                found = name
        return found
