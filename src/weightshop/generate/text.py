"""Text conditioning, encoded once per (encoder, prompt) within a run.

The real text encoder is a 4 B model: a run of many seeds over few prompts should run it once per
prompt, and a memory-tight run can drop it after encoding (`release_encoder`), since the denoising loop
only needs the cached hidden states.
"""

from __future__ import annotations

import gc

import torch


class PromptCache:
    def __init__(self, pipeline, max_sequence_length: int, encoder_id: str = "text_encoder"):
        self.pipeline = pipeline
        self.max_sequence_length = max_sequence_length
        self.encoder_id = encoder_id
        self._cache: dict[tuple[str, str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.encoded = 0  # encoder calls made, for tests and reports

    def _key(self, prompt: str) -> tuple[str, str, int]:
        return (self.encoder_id, prompt, self.max_sequence_length)

    def warm(self, prompts: list[str]) -> None:
        todo = list(dict.fromkeys(p for p in prompts if self._key(p) not in self._cache))
        if not todo:
            return
        if self.pipeline.text_encoder is None:
            raise RuntimeError("the text encoder was released before every prompt was encoded")
        embeds, mask = self.pipeline.encode_prompt(todo, max_sequence_length=self.max_sequence_length)
        self.encoded += len(todo)
        for i, prompt in enumerate(todo):
            self._cache[self._key(prompt)] = (embeds[i:i + 1], mask[i:i + 1])

    def get(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.warm(prompts)
        pairs = [self._cache[self._key(p)] for p in prompts]
        return torch.cat([e for e, _ in pairs]), torch.cat([m for _, m in pairs])

    def release_encoder(self) -> None:
        """Drop the pipeline's text encoder to free its memory; cached prompts keep working."""
        self.pipeline.text_encoder = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
