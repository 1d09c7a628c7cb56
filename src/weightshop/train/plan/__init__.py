"""Predict the peak memory of a LoRA training run before starting it, and what to change when it won't fit.

The prediction adds up what lives on the GPU at the worst moment of a step (the start of the backward pass):

  frozen base weights     counted on the meta device from the real config (no weights read), by dtype:
                          norms stay fp32 (diffusers' _keep_in_fp32_modules, as loading.py keeps them),
                          the blocks' Linear weights in memory.base_dtype (fp8/int8/nf4, plus their scales)
  LoRA, grads, optimizer  LoRA parameters (peft, on the meta model) in fp32, their fp32 grads, the optimizer
                          state (AdamW 2 x fp32, adamw8bit 2 x 1 byte, Prodigy 4 x fp32) and an EMA copy
  activations             the tensors autograd saves for backward, per token, term by term
                          (`block_activation_bytes`), for every block, or with gradient checkpointing only each
                          block's input plus one recomputed block; plus the backward working set
  overhead                CUDA context and library workspaces, and the caching allocator's fragmentation

The activation terms were read off the saved tensors of diffusers 0.42.1's Krea2TransformerBlock under peft
0.21 (torch.autograd.graph.saved_tensors_hooks) and are checked against real peaks by `measure_step_peak`
on CPU in tests/train/test_plan.py; docs/memory.md has the calibration table. The model's shape comes from
weightshop.models.shape; the run is the trainer's own `TrainConfig`, and the parameters are counted with the
trainer's own LoRA setup, so the plan sees exactly the run that will train.

Modules, by job: `params` (parameters and stored bytes), `activations` (saved tensors), `predict` (the sum,
whether it fits, suggestions, and the step's FLOPs with the FLOP-limited lower bound on a card from `models.flops`,
the benchmarks' FLOP model), `measure` (a real step's peak, the calibration).
"""

from __future__ import annotations

from weightshop.train.plan.activations import (ActivationDtypes, activation_bytes, activation_dtypes,
                                               backward_working_bytes, block_activation_bytes, lora_input_bytes)
from weightshop.train.plan.measure import calibrate, measure_step_peak, measure_training_step, tensor_bytes
from weightshop.train.plan.params import (DTYPE_BYTES, OPTIMIZER_BYTES, ParamCounts, base_weight_bytes,
                                          count_parameters, dequantized_weight_bytes)
from weightshop.train.plan.predict import (CUDA_OVERHEAD, FRAGMENTATION, GPUS_MIB, OVERHEAD_PARTS, GiB, MemoryPlan,
                                           Suggestion, memory_settings, parse_gpu, plan, predict, suggest)

__all__ = ["CUDA_OVERHEAD", "DTYPE_BYTES", "FRAGMENTATION", "GPUS_MIB", "OPTIMIZER_BYTES", "OVERHEAD_PARTS",
           "ActivationDtypes", "GiB", "MemoryPlan", "ParamCounts", "Suggestion", "activation_bytes",
           "activation_dtypes", "backward_working_bytes", "base_weight_bytes", "block_activation_bytes", "calibrate",
           "count_parameters", "dequantized_weight_bytes", "lora_input_bytes",
           "measure_step_peak", "measure_training_step", "memory_settings", "parse_gpu", "plan",
           "predict", "suggest", "tensor_bytes"]
