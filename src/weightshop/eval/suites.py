"""Prompt suites: what an evaluation renders, in YAML, validated like a run config.

    name: krea2-products
    about: catalogue shots a product LoRA must keep right
    seeds: [0, 1, 2]            # every prompt, unless it names its own
    width: 1024                 # optional; default the model's size
    height: 1024
    prompts:
      - id: bottle-studio       # unique; images pair across runs by (id, seed position)
        prompt: a glass perfume bottle on a marble table, studio light
        tags: [subject, no-text]
      - id: plain-street
        prompt: a street in the rain at night
        tags: [no-trigger, no-text, composition]
        seeds: [3, 4]
        scene: {...}            # optional ground truth (krea2-nano suites: a shapes-world scene)

Tags say what a prompt tests: `subject` / `style` (the LoRA's concept: the LoRA's trigger is put in front of these),
`no-trigger` (must not show the concept: concept bleed), `no-text` (asks for no text: a learned watermark shows up
there), `composition`, `held-out`, or any other lower-case word. Shipped suites: `krea2` (real Krea 2 domains) and
`krea2-nano-star` / `krea2-nano-striped` (the shapes world, with ground truth), in weightshop/eval/suites/.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from weightshop.errors import WeightshopError
from weightshop.io import atomic_write_text, sha256_bytes

SHIPPED = Path(__file__).parent / "suites"
KNOWN_TAGS = ("subject", "style", "no-trigger", "no-text", "composition", "held-out")
CONCEPT_TAGS = ("subject", "style")
_TAG = re.compile(r"^[a-z0-9][a-z0-9-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuitePrompt(_Strict):
    id: str = Field(..., min_length=1)
    prompt: str = Field(..., min_length=1)
    tags: list[str] = Field(default_factory=list)
    seeds: list[int] | None = None
    scene: dict | None = None

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: list[str]) -> list[str]:
        bad = [t for t in tags if not _TAG.match(t)]
        if bad:
            raise ValueError(f"tags must be lower-case words such as {', '.join(KNOWN_TAGS)}; got {bad}")
        if "no-trigger" in tags and set(CONCEPT_TAGS) & set(tags):
            raise ValueError("a prompt cannot be both no-trigger and subject/style")
        return tags


class Suite(_Strict):
    name: str = Field(..., min_length=1)
    about: str = ""
    seeds: list[int] = Field(default_factory=lambda: [0, 1], min_length=1)
    width: int | None = None
    height: int | None = None
    prompts: list[SuitePrompt] = Field(..., min_length=1)

    @model_validator(mode="after")
    def _unique_ids(self):
        seen: set[str] = set()
        dup = [p.id for p in self.prompts if p.id in seen or seen.add(p.id)]
        if dup:
            raise ValueError(f"prompt ids must be unique; repeated: {sorted(set(dup))}")
        return self

    def digest(self) -> str:
        """sha256 of the suite's content: two runs compare only on the same suite."""
        return sha256_bytes(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=True).encode())


@dataclass(frozen=True)
class EvalJob:
    """One image an evaluation makes: the suite prompt (with the trigger when it asks for the concept), its seed
    and the seed's position (what pairs images across runs made on other seed sets), tags and ground truth."""

    id: str
    prompt: str
    seed: int
    position: int
    tags: tuple[str, ...]
    scene: Any = None

    @property
    def pair_key(self) -> tuple[str, int]:
        return (self.id, self.position)


def shipped_suites() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def load_suite(suite: str | Path) -> Suite:
    """A suite file, or the name of a shipped suite."""
    path = Path(suite)
    if not path.is_file():
        named = SHIPPED / f"{suite}.yaml"
        if not named.is_file():
            raise WeightshopError(f"suite {suite!r} not found: give a YAML file or one of {', '.join(shipped_suites())}")
        path = named
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise WeightshopError(f"{path} is not valid YAML: {e}") from None
    try:
        return Suite.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'suite'}: {err['msg']}" for err in e.errors())
        raise WeightshopError(f"{path}: {problems}") from None


def suite_jobs(suite: Suite, trigger: str | None = None, seed_offset: int = 0) -> list[EvalJob]:
    """Every (prompt, seed) of the suite. `trigger` goes in front of subject/style prompts that lack it (as the
    training captions got it); `seed_offset` shifts every seed (a second seed set: the noise floor, A/A runs)."""
    from weightshop.data.captions import apply_trigger, has_trigger

    jobs = []
    for p in suite.prompts:
        text = p.prompt
        if trigger and set(CONCEPT_TAGS) & set(p.tags) and not has_trigger(text, trigger):
            text = apply_trigger(text, trigger)
        scene = _scene(p.scene) if p.scene else None
        for position, seed in enumerate(p.seeds or suite.seeds):
            jobs.append(EvalJob(p.id, text, seed + seed_offset, position, tuple(p.tags), scene))
    return jobs


def _scene(data: dict):
    from weightshop.nano.pretrain import scene_from_json

    return scene_from_json(data)


def nano_suite(concept: str, subject: int = 24, plain: int = 12) -> Suite:
    """The krea2-nano suite of a held-out concept: `subject` shapes-world prompts showing it (tagged subject,
    held-out, and composition when two objects are placed) and `plain` prompts without it (no-trigger: the concept
    must not bleed into them), all no-text, each with its scene as ground truth for the judges."""
    from weightshop.nano import world
    from weightshop.nano.pretrain import scene_to_json

    prompts = []
    for i, (scene, text) in enumerate(world.prompt_suite(subject, seed=7, heldout=concept)):
        tags = ["subject", "held-out", "no-text"] + (["composition"] if len(scene.objects) == 2 else [])
        prompts.append(SuitePrompt(id=f"{concept}-{i:03d}", prompt=text, tags=tags, scene=scene_to_json(scene)))
    for i, (scene, text) in enumerate(world.prompt_suite(plain, seed=8)):
        tags = ["no-trigger", "no-text"] + (["composition"] if len(scene.objects) == 2 else [])
        prompts.append(SuitePrompt(id=f"plain-{i:03d}", prompt=text, tags=tags, scene=scene_to_json(scene)))
    return Suite(name=f"krea2-nano-{concept}", seeds=[0, 1],
                 about=f"krea2-nano: {subject} shapes-world prompts with the held-out {concept} and {plain} without it",
                 prompts=prompts)


def write_suite(suite: Suite, path: str | Path) -> Path:
    return atomic_write_text(path, yaml.safe_dump(suite.model_dump(mode="json", exclude_none=True), sort_keys=False,
                                                  width=120))
