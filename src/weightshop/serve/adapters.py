"""LoRAs for a server: a catalogue of names from one directory, and an LRU of adapters loaded into a pipeline.

Clients name LoRAs, never paths: a name is looked up in the listing of the configured directory (its
`*.safetensors` files, not recursive), so `../x`, `/etc/passwd` or a symlink out of the directory can never
become a path the server opens. Loaded adapters stay in the pipeline (peft keeps each under its own name):
switching the active set is `set_adapters`, and only a LoRA not seen lately is read from disk; the model itself
is never reloaded.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

from weightshop.errors import WeightshopError
from weightshop.lora.apply import AppliedLora, LoraRequest, apply_loras

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def lora_catalog(directory: Path | None) -> dict[str, Path]:
    """name -> file for each `NAME.safetensors` directly in `directory` that resolves inside it."""
    if directory is None or not Path(directory).is_dir():
        return {}
    root = Path(directory).resolve()
    found = {}
    for path in sorted(root.glob("*.safetensors")):
        name = path.name[: -len(".safetensors")]
        real = path.resolve()
        if NAME.match(name) and ".." not in name and real.parent == root and real.is_file():
            found[name] = real
    return found


def resolve_loras(wanted: list[tuple[str, float]], catalog: dict[str, Path], max_loras: int) -> list[LoraRequest]:
    """Client (name, strength) pairs -> requests on catalogued files; every problem is a WeightshopError."""
    import math

    if len(wanted) > max_loras:
        raise WeightshopError(f"at most {max_loras} LoRAs per request, got {len(wanted)}")
    names = [name for name, _ in wanted]
    if len(set(names)) != len(names):
        raise WeightshopError("a LoRA is named twice; give each once with its strength")
    requests = []
    for name, strength in wanted:
        if not isinstance(name, str) or not NAME.match(name) or name not in catalog:
            known = ", ".join(sorted(catalog)) or "none configured"
            raise WeightshopError(f"unknown LoRA {str(name)[:80]!r}: LoRAs are named by file stem (known: {known})")
        if not math.isfinite(strength) or abs(strength) > 4:
            raise WeightshopError(f"LoRA {name}: strength must be a finite number in [-4, 4], got {strength}")
        requests.append(LoraRequest(catalog[name], float(strength)))
    return requests


class AdapterCache:
    """The adapters loaded into one pipeline, least recently used evicted first beyond `capacity`."""

    def __init__(self, pipeline, capacity: int = 4) -> None:
        self.pipeline = pipeline
        self.capacity = capacity
        self._loaded: OrderedDict[Path, AppliedLora] = OrderedDict()
        self.loads = 0  # files read from disk into the pipeline
        self.hits = 0
        self.evictions = 0
        self._active: tuple | None = ()
        present = (pipeline.get_list_adapters() or {}).get("transformer") or []
        if present:  # left by an earlier owner of this pipeline: start from a known state
            pipeline.delete_adapters(list(present))

    def activate(self, loras: list[LoraRequest]) -> list[AppliedLora]:
        """Make exactly these LoRAs active at their strengths; returns their records (as generation writes)."""
        records = []
        for lora in loras:
            path = Path(lora.path)
            if path in self._loaded:
                self._loaded.move_to_end(path)
                self.hits += 1
            else:
                self._make_room(keep={Path(x.path) for x in loras})
                applied = apply_loras(self.pipeline, [LoraRequest(path, 1.0)])[0]
                for other in [p for p, a in self._loaded.items() if a.name == applied.name]:
                    del self._loaded[other]  # same adapter name (a-b vs a_b): apply_loras replaced it
                self._loaded[path] = applied
                self.loads += 1
                self._active = None  # apply_loras activated the new adapter alone
            records.append(replace(self._loaded[path], strength=lora.strength))
        active = tuple((r.name, r.strength) for r in records)
        if active != self._active:
            if records:
                self.pipeline.enable_lora()
                self.pipeline.set_adapters([r.name for r in records], adapter_weights=[r.strength for r in records])
            elif self._loaded:
                self.pipeline.disable_lora()
            self._active = active
        return records

    def _make_room(self, keep: set[Path]) -> None:
        while len(self._loaded) >= self.capacity:
            victim = next((p for p in self._loaded if p not in keep), None)
            if victim is None:
                return
            self.pipeline.delete_adapters(self._loaded.pop(victim).name)
            self.evictions += 1

    @property
    def loaded(self) -> list[str]:
        return [a.name for a in self._loaded.values()]
