"""weightshop's own denoising loop: what Krea2Pipeline.__call__ computes, with less work per step.

Each change is measured by `weightshop bench generate` against stock diffusers in the same run:

- text trimmed to the prompt's real length (`generate.text`): images within 1e-3 of the padded ones; on by default.
- the blocks run as one function each (`generate.blocks`: the same operations, bit-identical, without the module
  wrappers' per-call costs).
- the text features (text fusion + txt_in) computed once per generation instead of at every step: they do not
  depend on the timestep, so this is exact; and RoPE tables once. On whenever this loop runs.
- Raw's guidance branches batched into one forward (positive and negative side by side, padded to a common text
  length): the same math over a batch of two, equal within float rounding; on by default.
- a text mask that masks nothing is dropped, so attention may take the unmasked kernels (flash on CUDA).
- regional compile of the repeated block (`models.compiled`), optionally with CUDA graphs (reduce-overhead), and
  float8 or int8 matmuls (`quant.layers.Float8MatmulLinear` / `Int8MatmulLinear` on the 28 blocks' Linears) on
  request: `speed_up(model, ...)`, once per loaded model. fp8 and int8 matmuls change the output.
- step caching (first-block cache, TeaCache-style) for Raw's many guided steps: the first block always runs; when
  its output changed by less than `step_cache` (relative L1, accumulated since the last full step) the other
  blocks' residual of the last full step is reused. Off by default (0): it changes the output, and its speed-up and
  drift are measured by the bench.

The loop calls the transformer's parts itself, so it runs only with every model resident on the device (offload
"none") and a transformer without hooks or compile of its own (`runs_own_loop`: a diffusers cache or an accelerate
hook on the whole transformer lives in the forward the loop never calls); otherwise `generate` keeps the stock
call, with trimmed text. Blocks with hooks run as modules (`generate.blocks.plain`).
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from weightshop.generate.blocks import prepare, run_block


@dataclass(frozen=True)
class FastPath:
    """How `generate` renders. The defaults change no image beyond float rounding (1e-3)."""

    trim_text: bool = True
    own_loop: bool = True  # weightshop's loop (cached text features, dropped no-op masks); False: stock __call__
    batch_guidance: bool = True
    step_cache: float = 0.0  # first-block cache threshold (relative L1 change); 0: off

    def validate(self) -> None:
        import math

        from weightshop.errors import WeightshopError

        if not (math.isfinite(self.step_cache) and self.step_cache >= 0):
            raise WeightshopError(f"step cache threshold {self.step_cache}: expected a number >= 0 (0 turns it off)")

    def to_dict(self) -> dict:
        return asdict(self)


STOCK = FastPath(trim_text=False, own_loop=False, batch_guidance=False)  # what Krea2Pipeline.__call__ does


def speed_up(model, *, compile: bool = False, fp8_matmul: bool = False, int8_matmul: bool = False,
             cuda_graphs: bool = False) -> dict:
    """Make a loaded model faster in place, once: float8 or int8 matmuls on the blocks' Linears (Krea's keep
    pattern: the embeddings, text fusion and final layer stay high precision), then regional compile, or regional
    compile with CUDA graphs (`cuda_graphs`: torch.compile's reduce-overhead mode on the repeated block, which
    replays each block's kernels as one graph: the launch overhead goes, which is what is left at small batch on a
    fast GPU). Options the device cannot run are refused before anything changes. Returns what was done."""
    from weightshop.errors import WeightshopError

    from weightshop.models.placement import execution_device

    transformer = model.pipeline.transformer
    device = execution_device(model.pipeline)  # under offload the weights sit on the CPU between calls
    check_speed_options(device, fp8_matmul=fp8_matmul, int8_matmul=int8_matmul, cuda_graphs=cuda_graphs)
    done = dict(getattr(model.pipeline, "_weightshop_speed", {}))
    quantized = "fp8_matmul" if done.get("fp8_matmul") else "int8_matmul" if done.get("int8_matmul") else None
    wanted = "fp8_matmul" if fp8_matmul else "int8_matmul" if int8_matmul else None
    if wanted and quantized and wanted != quantized:
        raise WeightshopError(f"this model already has {quantized.replace('_', ' ')}s: load it again for the other")
    if wanted and not quantized:
        from weightshop.models.quantized import quantize_in_memory

        done[wanted] = len(quantize_in_memory(transformer, "fp8-mm" if fp8_matmul else "int8-mm"))
    if cuda_graphs and not done.get("cuda_graphs"):
        if done.get("compile"):
            raise WeightshopError("the blocks are already compiled without CUDA graphs: load the model again")
        from weightshop.models.compiled import compile_blocks

        done["cuda_graphs"] = compile_blocks(transformer, dynamic=False, mode="reduce-overhead")
        # A stock pipeline call runs the graphed blocks too, without marking its steps: each of its forwards begins
        # a step here, or a block would read an output the next replay overwrote. (weightshop's loop marks its own.)
        handle = transformer.register_forward_pre_hook(lambda *_: torch.compiler.cudagraph_mark_step_begin())
        model.pipeline._weightshop_step_mark_hook = handle.id
    elif compile and not done.get("compile") and not done.get("cuda_graphs"):
        from weightshop.models.compiled import compile_blocks

        done["compile"] = compile_blocks(transformer, dynamic=None)
    model.pipeline._weightshop_speed = done
    return done


def runs_own_loop(model, fast: FastPath) -> bool:
    """Whether `generate` renders with weightshop's loop: asked for; every model resident (offload "none": the loop
    calls modules that offload hooks would miss); and the transformer called as diffusers wrote it (a hook or a
    compile on the whole transformer, such as diffusers' caches, would be skipped by the loop). Else the stock
    pipeline call renders, with trimmed text."""
    from weightshop.generate.blocks import hooked

    mark = getattr(model.pipeline, "_weightshop_step_mark_hook", None)  # speed_up's own, for stock calls
    ours = () if mark is None else (mark,)
    return fast.own_loop and model.placement.offload == "none" and not hooked(model.pipeline.transformer, ours)


def check_speed_options(device: torch.device | str, *, fp8_matmul: bool = False, int8_matmul: bool = False,
                        cuda_graphs: bool = False) -> None:
    """Refuse, with the reason, speed options the device lacks kernels for (the CLI calls this before loading)."""
    from weightshop.errors import WeightshopError

    device = torch.device(device)
    if fp8_matmul and int8_matmul:
        raise WeightshopError("float8 and int8 matmuls are alternatives: pick one")
    if fp8_matmul and not fp8_matmul_available(device):
        raise WeightshopError("float8 matmuls need a CUDA GPU of compute capability 8.9 or newer (Ada, Hopper)")
    if int8_matmul and not int8_matmul_available(device):
        raise WeightshopError(f"int8 matmuls (torch._int_mm) need the CPU or a CUDA GPU of compute capability 7.5 or "
                              f"newer (Turing and later); {device} has none")
    if cuda_graphs and device.type != "cuda":
        raise WeightshopError(f"CUDA graphs replay recorded GPU kernels: they need a CUDA device, not {device.type}")


def fp8_matmul_available(device: torch.device | str) -> bool:
    """torch._scaled_mm's float8 tensor cores: CUDA compute capability 8.9+ (Ada, Hopper, Blackwell)."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def int8_matmul_available(device: torch.device | str) -> bool:
    """torch._int_mm: a CPU kernel everywhere; on CUDA cuBLASLt's int8 GEMM from compute capability 7.5 (Turing:
    every GeForce RTX card). Shapes it refuses fall back per layer (`quant.layers.int8_mm_refusal`)."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (7, 5)


# ---------------------------------------------------------------------------------------------------
# Stage clock: the bench reads how long each stage took without the stages knowing about the bench.

_CLOCK: contextvars.ContextVar[StageClock | None] = contextvars.ContextVar("weightshop_stage_clock", default=None)


@dataclass
class StageClock:
    """Seconds per stage of the generations run inside `stage_clock()`: encode, each step, decode."""

    encode: list[float] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)
    decode: list[float] = field(default_factory=list)
    cached_steps: int = 0  # steps the first-block cache answered
    _device: torch.device | None = None

    def sync(self) -> None:
        if self._device is not None and self._device.type == "cuda":
            torch.cuda.synchronize(self._device)


@contextlib.contextmanager
def stage_clock(device: str | torch.device = "cpu"):
    clock = StageClock(_device=torch.device(device))
    token = _CLOCK.set(clock)
    try:
        yield clock
    finally:
        _CLOCK.reset(token)


@contextlib.contextmanager
def timed(stage: str):
    """Time a stage into the active clock (a no-op without one, so no synchronisation outside the bench)."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    clock.sync()
    began = time.perf_counter()
    yield
    clock.sync()
    getattr(clock, stage).append(time.perf_counter() - began)


# ---------------------------------------------------------------------------------------------------
# The transformer's forward, taken apart


@dataclass
class TextFeatures:
    """Text conditioning after the transformer's text fusion and txt_in, with its key mask (None: no padding)."""

    states: torch.Tensor
    mask: torch.Tensor | None


def text_features(transformer, embeds: torch.Tensor, mask: torch.Tensor) -> TextFeatures:
    """What Krea2Transformer2DModel.forward computes from the text before its blocks: the same at every step."""
    states = transformer.text_fusion(embeds, attention_mask=mask[:, None, None, :])
    return TextFeatures(transformer.txt_in(states), None if bool(mask.all()) else mask)


def join(a: TextFeatures, b: TextFeatures) -> TextFeatures:
    """Two conditionings as one batch, the shorter right-padded with masked zeros (padded keys change nothing)."""
    from weightshop.generate.text import pad_to

    length = max(a.states.shape[1], b.states.shape[1])
    masks = [t.mask if t.mask is not None else torch.ones(t.states.shape[:2], dtype=torch.bool,
                                                          device=t.states.device) for t in (a, b)]
    (sa, ma), (sb, mb) = pad_to(a.states, masks[0], length), pad_to(b.states, masks[1], length)
    mask = torch.cat([ma, mb])
    return TextFeatures(torch.cat([sa, sb]), None if bool(mask.all()) else mask)


class FirstBlockCache:
    """The first-block step cache: reuse the other blocks' residual while the first block's output barely moves.

    With guidance branches run one after the other, the negative branch's cache follows the positive one's
    decision (`leader`): both reuse at the same steps, so a guided step never mixes a stale and a fresh branch."""

    def __init__(self, threshold: float, leader: FirstBlockCache | None = None):
        self.threshold = threshold
        self.leader = leader
        self.previous: torch.Tensor | None = None
        self.residual: torch.Tensor | None = None
        self.accumulated = 0.0
        self.hits = 0
        self.decision = False  # this step's answer, for a follower

    def reuse(self, first: torch.Tensor) -> bool:
        self.decision = self._decide(first)
        return self.decision

    def _decide(self, first: torch.Tensor) -> bool:
        if self.residual is None or self.residual.shape != first.shape:
            return False
        if self.leader is not None:
            return self.leader.decision
        if self.previous is None:
            return False
        change = ((first - self.previous).abs().mean() / self.previous.abs().mean().clamp_min(1e-12)).item()
        self.previous = first.clone()  # a CUDA graph's output buffer is overwritten by its next replay
        self.accumulated += change
        if self.accumulated < self.threshold:
            self.hits += 1
            return True
        return False

    def store(self, first: torch.Tensor, last: torch.Tensor) -> None:
        self.previous, self.residual, self.accumulated = first.clone(), last - first, 0.0


def velocity(transformer, latents: torch.Tensor, text: TextFeatures, timestep: torch.Tensor, rope,
             cache: FirstBlockCache | None = None, blocks: list | None = None) -> torch.Tensor:
    """Krea2Transformer2DModel.forward from the image tokens on, with precomputed text features and RoPE tables;
    `blocks`: the transformer's blocks as `generate.blocks.prepare` makes them (once per generation)."""
    batch, image_len, _ = latents.shape
    text_len = text.states.shape[1]
    temb = transformer.time_embed(timestep, dtype=latents.dtype)
    temb_mod = transformer.time_mod_proj(F.gelu(temb, approximate="tanh"))
    mask = None
    if text.mask is not None:
        mask = torch.cat([text.mask, text.mask.new_ones((batch, image_len))], dim=1)[:, None, None, :]
    hidden = torch.cat([text.states, transformer.img_in(latents)], dim=1)
    blocks = prepare(transformer.transformer_blocks) if blocks is None else blocks
    hidden = run_block(blocks[0], hidden, temb_mod, rope, mask)
    if cache is not None and cache.reuse(hidden):
        hidden = hidden + cache.residual
    else:
        first = hidden
        for block in blocks[1:]:
            hidden = run_block(block, hidden, temb_mod, rope, mask)
        if cache is not None:
            cache.store(first, hidden)
    return transformer.final_layer(hidden[:, text_len:], temb)


def timesteps_for(pipe, steps: int, mu: float, device):
    """The timesteps Krea2Pipeline.__call__ sets on its scheduler, for the plan's mu (`models.spec`'s rule; a pinned
    mu lives in the scheduler's config, which then ignores this one)."""
    import numpy as np
    from diffusers.pipelines.krea2.pipeline_krea2 import retrieve_timesteps

    timesteps, _ = retrieve_timesteps(pipe.scheduler, steps, device, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    pipe.scheduler.set_begin_index(0)
    return timesteps


@torch.no_grad()
def sample(pipe, embeds: torch.Tensor, mask: torch.Tensor, *, height: int, width: int, steps: int, guidance: float,
           mu: float,
           generators: list[torch.Generator], negative: tuple[torch.Tensor, torch.Tensor] | None = None,
           fast: FastPath = FastPath(), on_step=None) -> torch.Tensor:
    """Denoise and decode one batch on the device `embeds` is on; returns images as floats in [0, 1], (B, 3, H, W),
    exactly as the pipeline's postprocessing makes them before the PIL conversion."""
    transformer = pipe.transformer
    device = embeds.device
    dtype = next(transformer.parameters()).dtype  # (the `dtype` property walks every module)
    batch = embeds.shape[0]
    channels = transformer.config.in_channels // (pipe.patch_size ** 2)
    latents = pipe.prepare_latents(batch, channels, height, width, embeds.dtype, device, generators)
    guided = guidance > 0
    cond = text_features(transformer, embeds.to(device, dtype), mask.to(device))
    uncond = text_features(transformer, negative[0].to(device, dtype), negative[1].to(device)) if guided else None
    grid = (height // (pipe.vae_scale_factor * pipe.patch_size), width // (pipe.vae_scale_factor * pipe.patch_size))

    def rope(text_len: int):
        return transformer.rotary_emb(pipe.prepare_position_ids(text_len, *grid, device))

    both = join(cond, uncond) if guided and fast.batch_guidance else None
    ropes = {t.states.shape[1]: None for t in (cond, uncond, both) if t is not None}
    ropes = {n: rope(n) for n in ropes}
    cache = FirstBlockCache(fast.step_cache) if fast.step_cache > 0 else None
    neg_cache = FirstBlockCache(fast.step_cache, leader=cache) if cache is not None else None
    blocks = prepare(transformer.transformer_blocks)
    clock = _CLOCK.get()
    graphs = bool(getattr(pipe, "_weightshop_speed", {}).get("cuda_graphs"))
    for i, t in enumerate(timesteps_for(pipe, steps, mu, device)):
        with timed("steps"):
            if graphs:  # a new step: the graphs' earlier outputs may be overwritten (torch's cudagraph trees)
                torch.compiler.cudagraph_mark_step_begin()
            timestep = (t / pipe.scheduler.config.num_train_timesteps).expand(batch).to(latents.dtype)
            if both is not None:
                pair = velocity(transformer, torch.cat([latents, latents]), both, timestep.repeat(2),
                                ropes[both.states.shape[1]], cache, blocks)
                pred, neg = pair[:batch], pair[batch:]
            else:
                pred = velocity(transformer, latents, cond, timestep, ropes[cond.states.shape[1]], cache, blocks)
                neg = (velocity(transformer, latents, uncond, timestep, ropes[uncond.states.shape[1]], neg_cache,
                                blocks) if guided else None)
            if neg is not None:
                pred = pred + guidance * (pred - neg)
            latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
        if on_step:
            on_step(i)
    if clock is not None and cache is not None:
        clock.cached_steps += cache.hits
    with timed("decode"):
        return decode(pipe, latents, height, width)


def decode(pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Krea2Pipeline.__call__'s decode: unpack, undo the latent normalisation, VAE, postprocess to [0, 1]."""
    vae = pipe.vae
    latents = pipe._unpack_latents(latents, height, width).to(vae.dtype)
    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
    inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
    image = vae.decode(latents / inv_std + mean, return_dict=False)[0][:, :, 0]
    return pipe.image_processor.postprocess(image, output_type="pt")


def to_pil(pipe, images: torch.Tensor):
    return pipe.image_processor.numpy_to_pil(pipe.image_processor.pt_to_numpy(images))
