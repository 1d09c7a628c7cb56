"""LoRA training on Raw from a curated, cached dataset: config, targets, the loop, checkpoints, output."""

from weightshop.train.config import PRESETS, TrainConfig, load_config
from weightshop.train.trainer import save_lora, train, verify_lora

__all__ = ["PRESETS", "TrainConfig", "load_config", "save_lora", "train", "verify_lora"]
