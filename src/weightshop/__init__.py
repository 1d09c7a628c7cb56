"""weightshop: own an open-weight image model (Krea 2) end to end.

The loop: curate -> cache -> train (LoRA on Raw) -> transfer (to Turbo) -> evaluate -> quantize -> serve.
See ARCHITECTURE.md for which package holds which stage.
"""

__version__ = "0.1.0"
