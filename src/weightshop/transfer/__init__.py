"""Transfer: does a LoRA trained on Raw carry over to Turbo, and at what strength?

`run_transfer(lora, ...)` renders the same prompts x seeds on Raw + LoRA, Turbo + LoRA across a strength
sweep, Turbo alone and Raw alone; scores each setting (krea2-nano's probe, or distance to the training
images); reports the transfer ratio and the recommended Turbo strength; and writes grids, a plot,
transfer.json / transfer.html and a ComfyUI workflow. `report.headline()` gives (ratio, strength).
"""

from weightshop.transfer.run import Setting, SettingResult, TransferReport, run_transfer, settings_for
from weightshop.transfer.scorers import Job, ProbeScorer, Scorer, TrainingSetDistance
from weightshop.transfer.sweep import (DEFAULT_STRENGTHS, Recommendation, SweepPoint, parse_seeds, parse_strengths,
                                       recommend_strength, transfer_ratio)

__all__ = ["DEFAULT_STRENGTHS", "Job", "ProbeScorer", "Recommendation", "Scorer", "Setting", "SettingResult",
           "SweepPoint", "TrainingSetDistance", "TransferReport", "parse_seeds", "parse_strengths",
           "recommend_strength", "run_transfer", "settings_for", "transfer_ratio"]
