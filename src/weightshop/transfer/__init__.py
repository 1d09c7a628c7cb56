"""Transfer: does a LoRA trained on Raw carry over to Turbo, and at what strength?

`run_transfer(lora, ...)` renders the same prompts x seeds on Raw + LoRA, Turbo + LoRA across a strength
sweep, Turbo alone and Raw alone; scores each setting (krea2-nano's probe, or distance to the training
images); reports the transfer ratio and the recommended Turbo strength; and writes grids, a plot,
transfer.json / transfer.html and a ComfyUI workflow. `report.headline()` gives (ratio, strength).
"""

import importlib

# Names -> the module that defines them. Loaded on first use (PEP 562), so `weightshop.transfer.sweep`'s pure
# arithmetic (the CLI's defaults) imports without torch.
_EXPORTS = {
    "Setting": "run", "SettingResult": "run", "TransferReport": "run", "run_transfer": "run", "settings_for": "run",
    "DEFAULT_STRENGTHS": "sweep", "Recommendation": "sweep", "SweepPoint": "sweep", "parse_seeds": "sweep",
    "parse_strengths": "sweep", "recommend_strength": "sweep", "transfer_ratio": "sweep",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
