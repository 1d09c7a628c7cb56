"""LoRA files: applying them to a pipeline with every tensor accounted for (interop and conversion arrive with
the LoRA interop stage)."""

from weightshop.lora.apply import AppliedLora, LoraRequest, apply_loras, read_lora_file

__all__ = ["AppliedLora", "LoraRequest", "apply_loras", "read_lora_file"]
