"""LoRA files in every layout Krea 2 LoRAs ship in: one key map and canonical form (formats), loading with
every module verified (apply), inspection (inspect), and combine / resize / extract / merge (ops)."""

from weightshop.lora.apply import AppliedLora, LoraRequest, apply_loras, read_lora_file
from weightshop.lora.formats import (
    FORMATS,
    CanonicalLora,
    LoraModule,
    convert_file,
    detect_format,
    from_canonical,
    load_canonical,
    save_canonical,
    to_canonical,
)

__all__ = ["FORMATS", "AppliedLora", "CanonicalLora", "LoraModule", "LoraRequest", "apply_loras", "convert_file",
           "detect_format", "from_canonical", "load_canonical", "read_lora_file", "save_canonical", "to_canonical"]
