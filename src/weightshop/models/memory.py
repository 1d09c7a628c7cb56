"""Device memory facts shared by training's and inference's plans: what a card holds, what the runtime takes beyond
the tensors, how the transformer's weights are counted and stored, and how a real peak is measured.

Both `weightshop.train.plan` (a training step) and `weightshop.generate.memory` (one generation) predict a peak from
these and check it with `measure_peak`; each number lives here once.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from weightshop.errors import WeightshopError

GiB = 2**30
MiB = 2**20
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# CUDA context and kernel images (~0.4-0.6 GiB with torch 2.x on H100, outside the caching allocator) plus
# cuBLAS/cuDNN workspaces and the SDPA kernels' scratch (~0.2 GiB): memory the tensors never get.
CUDA_OVERHEAD = int(0.75 * GiB)
# The caching allocator reserves more than is allocated (block rounding, split blocks that cannot be reused):
# in training loops reserved/allocated peaks run 1.03-1.10; 5 % of the allocated peak is the margin.
FRAGMENTATION = 0.05
OVERHEAD_PARTS = ("CUDA context and workspaces", "allocator fragmentation")  # not tensors: not in max_memory_allocated
# Named cards as nvidia-smi reports their memory (MiB). GPU labels are binary: a "24 GB" RTX 4090 has 24564 MiB.
GPUS_MIB = {
    "4090": 24564, "rtx4090": 24564, "3090": 24576, "rtx3090": 24576, "5090": 32607, "rtx5090": 32607,
    "a6000": 49140, "l40s": 46068, "a100": 81920, "a100-80gb": 81920, "a100-40gb": 40960,
    "h100": 81559, "h100-80gb": 81559, "h200": 143771,
}
QUANTIZED_PREFIX = "transformer_blocks."  # only the blocks' Linears are stored quantized; the rest stays high precision


def gpu_card(text: str | None) -> str | None:
    """The card a --gpu value names (a key of GPUS_MIB: h100, 4090, a100-40gb, ...), None for a size or nothing."""
    if text is None:
        return None
    key = str(text).strip().lower().replace(" ", "").replace("_", "-")
    return key if key in GPUS_MIB else None


def parse_gpu(text: str) -> int:
    """GPU memory in bytes from "24GB", "24GiB", "24", "24564MiB", "H100" or "4090". GB means GiB here (card labels)."""
    card = gpu_card(text)
    if card is not None:
        return GPUS_MIB[card] * MiB
    key = str(text).strip().lower().replace(" ", "").replace("_", "-")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(gib|gb|g|mib|mb|m)?", key)
    if not match or float(match.group(1)) <= 0:
        cards = sorted(k for k in GPUS_MIB if "-" not in k and not k.startswith("rtx"))
        raise WeightshopError(f"--gpu {text!r}: expected a size such as 24GB, 24GiB, 80 or 24564MiB, or a card name "
                              f"({', '.join(cards)})")
    scale = MiB if (match.group(2) or "g").startswith("m") else GiB
    return int(float(match.group(1)) * scale)


@dataclass(frozen=True)
class WeightCounts:
    """Parameter numbers of a Krea 2 transformer, read off a meta-device model (no weights)."""

    total: int
    fp32_kept: int  # norms: diffusers keeps them in fp32 whatever the model dtype
    quantizable: int  # the blocks' Linear weights: what a quantized format stores quantized
    quantizable_linears: int
    quantizable_out_channels: int
    largest_quantizable: int  # the biggest such weight (formats dequantize one at a time)
    block_linear_weights: tuple[int, ...]  # per transformer block: its Linear weights' elements
    block_params: tuple[int, ...]  # per transformer block: all its parameters (what group offload moves)


@functools.lru_cache(maxsize=32)
def _counts(config_key: str) -> WeightCounts:
    import torch
    from diffusers import Krea2Transformer2DModel

    with torch.device("meta"):
        model = Krea2Transformer2DModel.from_config(json.loads(config_key))
    keep = model._keep_in_fp32_modules or []
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    quant = [m for n, m in linears if n.startswith(QUANTIZED_PREFIX)]
    blocks = range(len(model.transformer_blocks))
    per_block = tuple(sum(m.weight.numel() for n, m in linears if n.startswith(f"{QUANTIZED_PREFIX}{i}."))
                      for i in blocks)
    return WeightCounts(
        total=sum(p.numel() for p in model.parameters()),
        fp32_kept=sum(p.numel() for n, p in model.named_parameters() if any(k in n for k in keep)),
        quantizable=sum(m.weight.numel() for m in quant), quantizable_linears=len(quant),
        quantizable_out_channels=sum(m.out_features for m in quant),
        largest_quantizable=max((m.weight.numel() for m in quant), default=0), block_linear_weights=per_block,
        block_params=tuple(sum(p.numel() for p in model.transformer_blocks[i].parameters()) for i in blocks))


def weight_counts(config: dict) -> WeightCounts:
    """The transformer's parameter numbers for a Krea2Transformer2DModel config (cached per config)."""
    return _counts(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True,
                              default=list))


def stored_weight_bytes(counts: WeightCounts, model_dtype: str, fmt: str = "none") -> int:
    """Bytes of the transformer as stored: norms fp32, the rest in `model_dtype`, and with a quantized format
    `fmt` (a `weightshop.quant.formats` name) the blocks' Linear weights in that format, scales included."""
    from weightshop.quant.formats import stored_bytes

    width = DTYPE_BYTES[model_dtype]
    rest = counts.total - counts.fp32_kept
    if fmt in ("none", "bf16", None):
        return counts.fp32_kept * 4 + rest * width
    quant = stored_bytes(fmt, counts.quantizable, counts.quantizable_linears, counts.quantizable_out_channels)
    return counts.fp32_kept * 4 + (rest - counts.quantizable) * width + quant


def measure_peak(step: Callable[[], object], device: str = "cpu") -> int:
    """Peak bytes allocated while `step()` runs, above what was allocated when it started.

    CUDA: the caching allocator's own counter (torch.cuda.max_memory_allocated). CPU: torch has no allocator
    statistics, and RSS is blurred by glibc keeping freed pages, so the step runs under torch.profiler with
    profile_memory, which records every allocation and free of c10's CPU allocator with its size; summed in time
    order they give the exact live-bytes curve. Memory that bypasses c10 (oneDNN scratch) is not seen. Garbage left
    by earlier work is collected first: freed inside the window, it would lower the curve and hide the peak.
    """
    import gc

    import torch

    gc.collect()

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e for e in prof.profiler.kineto_results.events()
                     if e.name() == "[memory]" and e.device_type().name == "CPU"), key=lambda e: e.start_ns())
    live = peak = 0
    for event in events:
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def tensor_bytes(*holders) -> int:
    """Bytes of the distinct storages held by modules, optimizers (their state) and dicts of tensors."""
    import torch

    seen: dict[int, int] = {}

    def visit(obj) -> None:
        if isinstance(obj, torch.Tensor) and hasattr(type(obj), "__tensor_flatten__"):  # torchao quantized weights
            for name in obj.__tensor_flatten__()[0]:
                visit(getattr(obj, name))
        elif isinstance(obj, torch.Tensor):
            if obj.device.type == "meta":
                return
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        elif isinstance(obj, torch.nn.Module):
            for t in (*obj.parameters(), *obj.buffers()):
                visit(t)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                visit(state)
        elif isinstance(obj, dict):
            for v in obj.values():
                visit(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                visit(v)

    for holder in holders:
        visit(holder)
    return sum(seen.values())
