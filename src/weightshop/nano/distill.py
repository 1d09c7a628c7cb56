"""nano-Turbo: nano-Raw distilled to 8 steps without guidance.

Method: trajectory distillation on Turbo's own grid. The student (initialised from Raw, as Krea's Turbo
is) takes one Euler step per interval of the 8-step schedule at mu = 1.15 (exactly what the pipeline
samples with `is_distilled`). Its target for each interval is where the teacher lands: nano-Raw with
guidance 3.5, integrating the same interval with several Euler sub-steps (8 x 4 = 32 guided teacher steps
per trajectory). The regression target is the average velocity over the interval,
v* = (x_teacher(s_next) - x(s)) / (s_next - s), so the student absorbs both the step count and the
guidance (which mattered more than steps in the feasibility runs).

Why this method: it needs no data (prompts only), is deterministic given the noise (a well-posed
regression, unlike matching a distribution), and trains on exactly the states and timesteps Turbo
inference visits. Half the intervals continue from the student's own state instead of the teacher's, so
the student learns to correct its own drift (exposure bias) rather than only follow a perfect path.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weightshop.models.schedule import sampling_sigmas
from weightshop.models.spec import KREA2
from weightshop.nano import world
from weightshop.nano.pretrain import Conditioner, ema_update
from weightshop.state import load_state, save_state


@dataclass(frozen=True)
class DistillRecipe:
    student_steps: int = KREA2.checkpoint("turbo").preset.steps
    substeps: int = 4  # teacher Euler steps per student interval: 32 guided steps per trajectory
    guidance: float = KREA2.checkpoint("raw").preset.guidance  # the teacher samples as Raw's preset does
    batch: int = 16
    trajectories: int = 400  # teacher trajectories (~35 CPU minutes); each gives `student_steps` student updates
    lr: float = 1e-4
    ema_decay: float = 0.995
    own_state_fraction: float = 0.5
    seed: int = 0
    save_every_s: float = 180.0


@torch.no_grad()
def teacher_segment(teacher, x, s0: float, s1: float, substeps: int, guidance: float, cond_embeds, cond_mask,
                    uncond_embeds, uncond_mask, ids) -> torch.Tensor:
    """Integrate the guided teacher from s0 to s1 with `substeps` Euler steps (Krea convention CFG)."""
    b = x.shape[0]
    embeds = torch.cat([cond_embeds, uncond_embeds])
    mask = torch.cat([cond_mask, uncond_mask])
    grid = np.linspace(s0, s1, substeps + 1)
    for a, c in zip(grid[:-1], grid[1:]):
        t = torch.full((2 * b,), float(a))
        v = teacher(torch.cat([x, x]), embeds, t, ids, mask, return_dict=False)[0].float()
        v_cond, v_uncond = v[:b], v[b:]
        x = x + (float(c) - float(a)) * (v_cond + guidance * (v_cond - v_uncond))
    return x


def distill_turbo(workdir: Path, pipe, teacher, max_sequence_length: int, scenes: list, latent_shape: tuple,
                  recipe: DistillRecipe = DistillRecipe(), max_trajectories: int | None = None,
                  deadline: float | None = None, progress: Callable[[str, int, int, dict], None] | None = None,
                  compile: bool = False):
    """Distil (or resume distilling) `teacher` into a student; `pipe` provides encoding and packing.

    latent_shape: (C, h, w) of one image's latents. Returns the EMA student and the run info.
    """
    torch.manual_seed(recipe.seed)
    teacher = teacher.eval().requires_grad_(False)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    ema = copy.deepcopy(teacher).eval().requires_grad_(False)
    cond = Conditioner(pipe, max_sequence_length)
    opt = torch.optim.AdamW(student.parameters(), lr=recipe.lr, weight_decay=0.0, betas=(0.9, 0.99))
    student_fwd, teacher_fwd = (torch.compile(student), torch.compile(teacher)) if compile else (student, teacher)
    state_path = workdir / "turbo_state"
    info = load_state(state_path, {"student": student, "ema": ema}, opt) or {"trajectory": 0, "history": []}
    target = min(recipe.trajectories, max_trajectories) if max_trajectories else recipe.trajectories
    sigmas = sampling_sigmas(recipe.student_steps, KREA2.checkpoint("turbo").preset.mu)
    c, h, w = latent_shape
    uncond_embeds, uncond_mask = cond.text([""] * recipe.batch)
    last_save, smooth = time.monotonic(), None
    while info["trajectory"] < target:
        k = info["trajectory"]
        lr = recipe.lr * min(1.0, (k + 1) / 50) * (0.5 * (1 + math.cos(math.pi * k / recipe.trajectories)))
        for group in opt.param_groups:
            group["lr"] = lr
        rng = np.random.default_rng([recipe.seed, k, 21])  # per-trajectory randomness: exact resume
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        idx = rng.integers(len(scenes), size=recipe.batch)
        embeds, mask = cond.text([world.caption(scenes[i], int(rng.integers(2**31))) for i in idx])
        x = cond.pack(torch.randn((recipe.batch, c, h, w), generator=gen))
        ids = cond.position_ids(embeds.shape[1], h, w)
        losses = []
        for i in range(recipe.student_steps):
            s0, s1 = float(sigmas[i]), float(sigmas[i + 1])
            with torch.autocast("cpu", dtype=torch.bfloat16):
                x_next = teacher_segment(teacher_fwd, x, s0, s1, recipe.substeps, recipe.guidance, embeds, mask,
                                         uncond_embeds, uncond_mask, ids)
                v = student_fwd(x, embeds, torch.full((recipe.batch,), s0), ids, mask, return_dict=False)[0]
            loss = F.mse_loss(v.float(), (x_next - x) / (s1 - s0))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            own = x + (s1 - s0) * v.detach().float()
            x = own if rng.random() < recipe.own_state_fraction else x_next
        ema_update(ema, student, recipe.ema_decay if k > 50 else 0.0)
        info["trajectory"] = k + 1
        smooth = float(np.mean(losses)) if smooth is None else 0.95 * smooth + 0.05 * float(np.mean(losses))
        if info["trajectory"] % 10 == 0:
            info["history"].append({"trajectory": info["trajectory"], "loss": smooth, "time": time.time()})
        if progress:
            progress("turbo", info["trajectory"], target, {"loss": smooth})
        stop = deadline is not None and time.time() > deadline
        if time.monotonic() - last_save > recipe.save_every_s or info["trajectory"] == target or stop:
            save_state(state_path, {"student": student, "ema": ema}, opt, info)
            last_save = time.monotonic()
        if stop:
            break
    return ema, info
