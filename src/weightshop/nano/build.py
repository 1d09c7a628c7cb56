"""`weightshop nano build`: the recipe that reproduces krea2-nano, stage by stage, resumable.

world -> vae -> text -> probe -> raw -> turbo -> package -> card

Every stage writes its result under workdir/final/ and records itself in workdir/build.json; a finished
stage is skipped on the next run, an unfinished one resumes from its own state file (saved every few
minutes, atomically). `--hours` bounds one sitting: the long stages stop at the deadline and the next
run continues. `smoke=True` runs every stage for a few steps at toy sizes (the test suite does this).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from weightshop.io import atomic_save_safetensors, atomic_write_json
from weightshop.models import builtin
from weightshop.nano import world
from weightshop.nano.distill import DistillRecipe, distill_turbo
from weightshop.nano.pretrain import (TransformerRecipe, build_transformer, pretraining_scenes, scene_from_json,
                                      train_raw)
from weightshop.nano.probe import ProbeRecipe, clean_accuracy, train_probe
from weightshop.nano.text import TextRecipe, build_tokenizer, train_text_encoder
from weightshop.nano.vae import VaeRecipe, latent_stats, psnr, render_batch, train_vae

STAGES = ("world", "vae", "text", "probe", "raw", "turbo", "package", "card")
Progress = Callable[[str, int, int, dict], None]
# Which part of the recipe each stage's result depends on.
STAGE_RECIPE = {"vae": "vae", "text": "text", "probe": "probe", "raw": "transformer", "turbo": "distill",
                "card": "eval_prompts"}
# The stages `weightshop nano seed` takes from a packaged family, and where it puts that family's Raw weights.
SEEDED_STAGES = ("world", "vae", "text", "probe")
WARM_START = "warm_start"
# The sha256 of earlier families' Raw weights, which a later family's Raw continues from (v2 continued v1; the
# current recipe continues v2 on the text encoder trained for binding, TextRecipe.steps). Their history and
# measurements: README, "krea2-nano"; their build records: docs/benchmarks/nano-build-v*.json.
V1_RAW_SHA256 = "443d44e9c8eafe6fcf0e335a874be3039c84006a2fd9fe4d4410ef5c91446ee4"
V2_RAW_SHA256 = "cdbca4060e33ab124b1fd67c011d013bd626d940803752296c89a5934ff1e903"
# A commit whose src/weightshop/nano/weights holds each of those families (the missing-warm-start error names it).
CHECKOUTS = {V1_RAW_SHA256: "4371eb6", V2_RAW_SHA256: "f998d63"}


def continued_raw() -> TransformerRecipe:
    """Raw v3: 4000 more steps from v2's weights on the binding text encoder, short warmup, the same objective."""
    return TransformerRecipe(steps=4000, lr=3e-4, warmup=200, warm_start=V2_RAW_SHA256)


@dataclass(frozen=True)
class NanoRecipe:
    vae: VaeRecipe = field(default_factory=VaeRecipe)
    text: TextRecipe = field(default_factory=TextRecipe)
    transformer: TransformerRecipe = field(default_factory=continued_raw)
    distill: DistillRecipe = field(default_factory=DistillRecipe)
    probe: ProbeRecipe = field(default_factory=ProbeRecipe)
    eval_prompts: int = 100
    eval_seeds: tuple[int, ...] = (0, 1)
    size: int = 64
    weights_dtype: str = "bf16"  # transformers are stored in bf16 to keep the family under 40 MB


def smoke_recipe() -> NanoRecipe:
    """Every stage for a few steps at toy sizes: proves the recipe runs end to end in seconds."""
    return NanoRecipe(
        vae=VaeRecipe(base_dim=8, z_dim=4, steps=2, batch=4),
        text=TextRecipe(hidden=32, layers=2, heads=2, kv_heads=1, select_layers=(1, 2), corpus_scenes=200,
                        steps=2, batch=4, vocab_size=600),
        transformer=TransformerRecipe(hidden_heads=2, head_dim=16, layers=1, intermediate=64,
                                      axes_dims_rope=(4, 6, 6), timestep_embed_dim=32, text_heads=2,
                                      text_intermediate=32, fusion_blocks=(1, 1), dataset_scenes=32, batch=4,
                                      steps=2, warmup=1),
        distill=DistillRecipe(substeps=1, batch=2, trajectories=1),
        probe=ProbeRecipe(width=8, batch=8, steps=2),
        eval_prompts=2, eval_seeds=(0,),
    )


class Build:
    def __init__(self, workdir: Path, out: Path = builtin.WEIGHTS, recipe: NanoRecipe | None = None,
                 progress: Progress | None = None, deadline: float | None = None, compile: bool = False,
                 redo: str | None = None):
        self.workdir = Path(workdir)
        self.final = self.workdir / "final"
        self.out = Path(out)
        self.recipe = recipe or NanoRecipe()
        self.progress = progress or (lambda *_: None)
        self.deadline = deadline
        self.compile = compile
        self.final.mkdir(parents=True, exist_ok=True)
        self.record_path = self.workdir / "build.json"
        self.record = json.loads(self.record_path.read_text()) if self.record_path.is_file() else {"stages": {}}
        self.record.setdefault("started", {})
        self.record["recipe"] = json.loads(json.dumps(asdict(self.recipe)))
        if redo:
            self.redo(redo)
        for stage, part in self.record["started"].items():
            if part != self.stage_recipe(stage):
                from weightshop.errors import WeightshopError

                raise WeightshopError(
                    f"{self.workdir}: stage {stage!r} was started with another recipe ({part} vs "
                    f"{self.stage_recipe(stage)}); use a fresh --workdir or delete its state to redo it"
                )

    def stage_recipe(self, stage: str) -> dict | None:
        """The part of the recipe a stage's result depends on (compared when resuming)."""
        key = STAGE_RECIPE.get(stage)
        if key is None:
            return None
        value = getattr(self.recipe, key)
        return json.loads(json.dumps(asdict(value) if hasattr(value, "__dataclass_fields__") else value))

    # -- bookkeeping ---------------------------------------------------------------------------------
    def done(self, stage: str) -> bool:
        return stage in self.record["stages"]

    def finish(self, stage: str, result: dict) -> None:
        self.record["stages"][stage] = {"finished": time.time(), **result}
        atomic_write_json(self.record_path, self.record)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    def run(self, stages: tuple[str, ...] = STAGES) -> dict:
        for stage in STAGES:
            if stage not in stages or self.done(stage):
                continue
            if self.out_of_time():
                break
            self.record["started"][stage] = self.stage_recipe(stage)
            atomic_write_json(self.record_path, self.record)
            result = getattr(self, f"stage_{stage}")()
            if result is None:  # stopped at the deadline; the next run resumes
                break
            self.finish(stage, result)
        return self.record

    # -- stages --------------------------------------------------------------------------------------
    def stage_world(self) -> dict:
        """A preview sheet and the concept census of the pretraining distribution."""
        rng = np.random.default_rng(0)
        scenes = [world.sample_scene(rng) for _ in range(16)] + [
            world.sample_scene(rng, heldout=h) for h in world.HELDOUT_CONCEPTS for _ in range(4)]
        from weightshop.report import image_grid

        sheet = image_grid([[world.render(s) for s in scenes[i:i + 8]] for i in range(0, len(scenes), 8)], cell=64)
        sheet.save(self.final / "world_preview.png")
        return {"preview": "world_preview.png", "attributes": world.label_space()}

    def stage_vae(self) -> dict | None:
        r = self.recipe.vae
        vae, info = train_vae(self.workdir, r, deadline=self.deadline, progress=self.progress)
        if info["step"] < r.steps:
            return None
        mean, std = latent_stats(vae, size=self.recipe.size)
        vae.register_to_config(latents_mean=mean, latents_std=std)
        vae.save_pretrained(self.final / "vae")
        quality = psnr(vae, render_batch(np.random.default_rng(1234), 256, self.recipe.size, 0.2))
        return {"steps": info["step"], "psnr_db": quality, "latents_mean": mean, "latents_std": std}

    def stage_text(self) -> dict | None:
        r = self.recipe.text
        tokenizer = build_tokenizer(r)
        tokenizer.save_pretrained(self.final / "tokenizer")
        encoder, info = train_text_encoder(self.workdir, tokenizer, r, progress=self.progress)
        encoder.save_pretrained(self.final / "text_encoder")
        return {"steps": info["step"], "final_readout_loss": info["history"][-1]["loss"] if info["history"] else None,
                "heldout_readout_accuracy": info.get("heldout_readout_accuracy"), "vocab": len(tokenizer)}

    def components(self):
        """The trained VAE, text encoder and tokenizer as weightshop SharedComponents."""
        from diffusers import AutoencoderKLQwenImage
        from transformers import AutoTokenizer, Qwen3VLModel

        from weightshop.models.loading import SharedComponents

        from weightshop.models.qwen_vae import use_fast_paths

        vae = AutoencoderKLQwenImage.from_pretrained(self.final / "vae").eval()
        use_fast_paths(vae)
        encoder = Qwen3VLModel.from_pretrained(self.final / "text_encoder").eval()
        tokenizer = AutoTokenizer.from_pretrained(self.final / "tokenizer")
        return SharedComponents(vae, encoder, tokenizer, self.recipe.text.select_layers, self.final)

    def _pipeline(self, transformer, checkpoint: str = "raw", shared=None):
        from weightshop.models.loading import build_pipeline
        from weightshop.models.spec import KREA2

        return build_pipeline(transformer, shared or self.components(), KREA2.checkpoint(checkpoint))

    def _fresh_transformer(self, shared=None):
        shared = shared or self.components()
        torch.manual_seed(self.recipe.transformer.seed)  # the initial weights are part of the recipe
        return build_transformer(shared.vae.config.z_dim * 4, shared.text_encoder.config.text_config.hidden_size,
                                 len(shared.select_layers), self.recipe.transformer)

    def _warm_start(self):
        """The Raw weights the recipe continues from, checked against its sha256."""
        from diffusers import Krea2Transformer2DModel

        from weightshop.errors import WeightshopError
        from weightshop.io import sha256_file

        expected = self.recipe.transformer.warm_start
        weights = self.workdir / WARM_START / "diffusion_pytorch_model.safetensors"
        if not weights.is_file():
            raise WeightshopError(
                f"{weights.parent}: the recipe's Raw continues from weights with sha256 {expected[:12]}..., which are "
                f"not here: run `weightshop nano seed FAMILY --record BUILD_JSON --workdir {self.workdir}` with the "
                "family that holds them" + (f" (git checkout {CHECKOUTS[expected]} -- src/weightshop/nano/weights)"
                                            if expected in CHECKOUTS else ""))
        actual = sha256_file(weights)
        if actual != expected:
            raise WeightshopError(f"{weights}: sha256 {actual[:12]}... but the recipe continues from {expected[:12]}...; "
                                  "seed this workdir from the family the recipe names")
        return Krea2Transformer2DModel.from_pretrained(weights.parent).float()

    def raw_start(self, shared=None):
        """Raw's initial transformer: the recipe's warm start, or the seeded fresh init."""
        return self._warm_start() if self.recipe.transformer.warm_start else self._fresh_transformer(shared)

    def seed_from(self, family_root: Path, record: dict) -> list[str]:
        """Begin this (fresh) build from a packaged family: of its world, VAE, text encoder (with tokenizer) and
        probe, each one `record` (the build record that made the family) made with this build's recipe becomes a
        finished stage with the result the record gives it; a stage whose recipe changed is left for this build to
        redo. The family's Raw transformer goes to workdir/warm_start for a recipe that continues it. Returns the
        seeded stages."""
        import shutil

        from weightshop.errors import WeightshopError
        from weightshop.io import sha256_file

        root = Path(family_root)
        raw = root / "krea2-nano-raw"
        missing = [p for p in (raw / "transformer", raw / "vae", raw / "text_encoder", raw / "tokenizer",
                               root / "probe", root / "world_preview.png") if not p.exists()]
        if missing:
            raise WeightshopError(f"{root}: not a packaged nano family ({missing[0]} is missing); pass the out "
                                  "directory of a `weightshop nano build` (default src/weightshop/nano/weights)")
        if self.record["started"]:
            raise WeightshopError(f"{self.workdir}: a build has started here ({', '.join(self.record['started'])}); "
                                  "seed a fresh --workdir")
        for stage in SEEDED_STAGES:
            if stage not in record.get("stages", {}):
                raise WeightshopError(f"build record: stage {stage!r} is not finished in it; expected the build.json "
                                      "of the build that packaged the family")
        seeded = [stage for stage in SEEDED_STAGES if STAGE_RECIPE.get(stage) is None
                  or record.get("recipe", {}).get(STAGE_RECIPE[stage]) == self.stage_recipe(stage)]
        if "vae" not in seeded:
            raise WeightshopError("build record: its 'vae' recipe differs from this build's; a family whose VAE "
                                  "changed cannot seed it (every latent would change): build from scratch")
        copies = {"vae": [(raw / "vae", self.final / "vae")], "probe": [(root / "probe", self.final / "probe")],
                  "text": [(raw / part, self.final / part) for part in ("text_encoder", "tokenizer")]}
        for stage in seeded:
            for src, dst in copies.get(stage, []):
                shutil.copytree(src, dst, dirs_exist_ok=True)
        shutil.copy2(root / "world_preview.png", self.final / "world_preview.png")
        shutil.copytree(raw / "transformer", self.workdir / WARM_START, dirs_exist_ok=True)
        for stage in seeded:
            self.record["stages"][stage] = record["stages"][stage]
            self.record["started"][stage] = self.stage_recipe(stage)
        self.record["seeded_from"] = {
            "family": str(root), "stages": seeded,
            "raw_sha256": sha256_file(self.workdir / WARM_START / "diffusion_pytorch_model.safetensors")}
        atomic_write_json(self.record_path, self.record)
        return seeded

    def stage_raw(self) -> dict | None:
        r = self.recipe.transformer
        shared = self.components()
        pipe = self._pipeline(self.raw_start(shared), shared=shared)
        ema, info = train_raw(self.workdir, pipe, self.recipe.text.max_sequence_length, r, self.recipe.size,
                              deadline=self.deadline,
                              progress=self.progress, compile=self.compile)
        if info["step"] < r.steps:
            return None
        ema.save_pretrained(self.final / "raw_transformer")
        return {"steps": info["step"], "samples": info["step"] * r.batch,
                "final_loss": info["history"][-1]["loss"] if info["history"] else None}

    def redo(self, stage: str) -> list[str]:
        """Forget `stage` and every stage after it (their saved state too), so the next run redoes them."""
        from weightshop.errors import WeightshopError

        if stage not in STAGES:
            raise WeightshopError(f"--redo {stage!r}: expected one of {', '.join(STAGES)}")
        later = list(STAGES[STAGES.index(stage):])
        for name in later:
            self.record["stages"].pop(name, None)
            self.record["started"].pop(name, None)
            for suffix in (".json", ".safetensors"):
                (self.workdir / f"{name}_state{suffix}").unlink(missing_ok=True)
        atomic_write_json(self.record_path, self.record)
        return later

    def carry(self, dest: Path) -> list[str]:
        """Copy what another machine needs to go on with this build into `dest`: the record, every finished
        stage's result and the saved state of the stage in progress; not the caches (raw_latents and
        raw_scenes, hundreds of MB, made again from the recipe) nor finished stages' training state. Running the
        build on `dest` continues where this one stopped. Returns the copied paths, relative to `dest`."""
        import shutil

        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        copied = []

        def copy_tree(name: str) -> None:
            shutil.copytree(self.workdir / name, dest / name, symlinks=True, dirs_exist_ok=True)
            copied.extend(str(p.relative_to(dest)) for p in sorted((dest / name).rglob("*")) if p.is_file())

        copy_tree(self.final.name)
        in_progress = [s for s in self.record["started"] if s not in self.record["stages"]]
        if "raw" not in self.record["stages"] and (self.workdir / WARM_START).is_dir():
            copy_tree(WARM_START)
        for stage in in_progress:
            for suffix in (".json", ".safetensors"):
                path = self.workdir / f"{stage}_state{suffix}"
                if path.is_file():
                    shutil.copy2(path, dest / path.name)
                    copied.append(path.name)
        shutil.copy2(self.record_path, dest / self.record_path.name)
        return copied + [self.record_path.name]

    def _load_transformer(self, name: str):
        from diffusers import Krea2Transformer2DModel

        return Krea2Transformer2DModel.from_pretrained(self.final / name).eval()

    def _scenes(self) -> list:
        """Raw's pretraining scenes: the cached list, or the same list sampled again (a workdir carried to another
        machine without its caches)."""
        path = self.workdir / "raw_scenes.json"
        if path.is_file():
            return [scene_from_json(d) for d in json.loads(path.read_text())]
        r = self.recipe.transformer
        return pretraining_scenes(r.dataset_scenes, r.seed)

    def stage_turbo(self) -> dict | None:
        r = self.recipe.distill
        teacher = self._load_transformer("raw_transformer")
        pipe = self._pipeline(teacher)
        scale = pipe.vae_scale_factor
        shape = (pipe.vae.config.z_dim, self.recipe.size // scale, self.recipe.size // scale)
        ema, info = distill_turbo(self.workdir, pipe, teacher, self.recipe.text.max_sequence_length, self._scenes(),
                                  shape, r, deadline=self.deadline, progress=self.progress, compile=self.compile)
        if info["trajectory"] < r.trajectories:
            return None
        ema.save_pretrained(self.final / "turbo_transformer")
        return {"trajectories": info["trajectory"], "student_updates": info["trajectory"] * r.student_steps,
                "final_loss": info["history"][-1]["loss"] if info["history"] else None}

    def stage_probe(self) -> dict:
        r = self.recipe.probe
        vae = self.components().vae
        probe, info = train_probe(self.workdir, r, vae=vae, progress=self.progress)
        atomic_save_safetensors(self.final / "probe" / "probe.safetensors", probe.state_dict())
        atomic_write_json(self.final / "probe" / "config.json", {"width": r.width, "attributes": world.label_space()})
        accuracy = clean_accuracy(probe, n=2000 if r.steps > 100 else 20)
        atomic_write_json(self.final / "probe" / "accuracy.json", accuracy)
        return {"steps": info["step"], "clean_accuracy": accuracy}

    def stage_package(self) -> dict:
        """Write the two diffusers directories, the probe and the sha256 manifest into `out`."""
        import shutil

        from weightshop.models.loading import MODEL_DEFAULTS

        dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[self.recipe.weights_dtype]
        if self.out.exists():
            shutil.rmtree(self.out)
        for checkpoint, name in (("raw", "raw_transformer"), ("turbo", "turbo_transformer")):
            target = self.out / f"krea2-nano-{checkpoint}"
            pipe = self._pipeline(self._load_transformer(name), checkpoint)
            pipe.transformer.to(dtype)
            pipe.save_pretrained(target)
            atomic_write_json(target / MODEL_DEFAULTS, {
                "family": "krea2", "name": f"krea2-nano-{checkpoint}", "checkpoint": checkpoint,
                "default_size": self.recipe.size, "max_sequence_length": self.recipe.text.max_sequence_length,
                "text_encoder_select_layers": list(self.recipe.text.select_layers),
                "about": "krea2-nano: Krea 2's architecture at nano size, trained on the shapes world",
            })
        # Raw and Turbo share the VAE, text encoder, tokenizer and scheduler, as in the real release: Turbo's
        # are relative links to Raw's, so the family stores them once (diffusers follows the links).
        turbo = self.out / "krea2-nano-turbo"
        for part in ("vae", "text_encoder", "tokenizer", "scheduler"):
            shutil.rmtree(turbo / part)
            (turbo / part).symlink_to(Path("..") / "krea2-nano-raw" / part, target_is_directory=True)
        shutil.copytree(self.final / "probe", self.out / "probe")
        shutil.copy(self.final / "world_preview.png", self.out / "world_preview.png")
        manifest = builtin.write_checksums(self.out)
        return {"total_bytes": manifest["total_bytes"], "files": len(manifest["files"])}

    def stage_card(self) -> dict:
        from weightshop.nano.card import write_card

        return write_card(self.out, self.record, self.recipe, progress=self.progress)


def run_build(workdir: str | Path, out: str | Path | None = None, stages: tuple[str, ...] = STAGES,
              smoke: bool = False, hours: float | None = None, progress: Progress | None = None,
              redo: str | None = None) -> dict:
    recipe = smoke_recipe() if smoke else NanoRecipe()
    deadline = time.time() + hours * 3600 if hours else None
    # torch.compile pays off over hours of training, never in a few smoke steps.
    build = Build(Path(workdir), Path(out) if out else builtin.WEIGHTS, recipe, progress, deadline, compile=not smoke,
                  redo=redo)
    return build.run(stages)

