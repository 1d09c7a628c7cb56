"""Generation: sampler presets applied, text encoded once, images written with their provenance."""

from weightshop.generate.fast import FastPath, speed_up
from weightshop.generate.metadata import read_image_record, save_image
from weightshop.generate.run import GeneratedImage, GenerateRequest, expected_sigmas, generate, plan

__all__ = ["FastPath", "GenerateRequest", "GeneratedImage", "expected_sigmas", "generate", "plan", "read_image_record",
           "save_image", "speed_up"]
