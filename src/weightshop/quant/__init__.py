"""Quantized weights: the formats, the Linear types that hold them, and the files that carry them.

Generic and model-agnostic: nothing here knows Krea 2's module names. Callers (`weightshop.models` for files of a
Krea 2 transformer, `weightshop.train` for the frozen base) say which layers to quantize and under what names.

- `numerics`: quantize / dequantize / error bound of each format (pure functions).
- `layers`: the quantized `torch.nn.Linear` types, used by training and inference.
- `formats`: the registry of file formats (name, container, bits per weight).
- `comfy`: ComfyUI's comfy_quant and legacy fp8_scaled safetensors layouts.
- `gguf_file`: GGUF files (Q8_0, Q4_0, Q4_K) as diffusers' GGUF loader and ComfyUI-GGUF read them (not named `gguf`,
  which would shadow the gguf package).
"""
