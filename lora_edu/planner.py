"""The planner of notebook 11_choosing_a_strategy: for a model size, a number of tasks, a GPU's memory and a latency
need, which fine-tuning methods fit and what each costs.

Every number comes from the package's own estimators: training memory from
`lora_edu.counting.finetuning_memory_bytes` (notebook 10), parameter and checkpoint counts from
`lora_edu.counting` (notebook 03). Storage for ``n_tasks`` tasks: full fine-tuning keeps one bf16 copy of the
model per task; LoRA and QLoRA keep one base and one bf16 adapter per task (notebook 07). Latency: a merged LoRA
adds nothing at inference (notebook 04); serving several tasks from one base at once needs the adapters unmerged
(notebook 07); serial adapters always add layers to the forward pass (notebook 05).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import _validate
from .counting import (LLAMA2_7B, LLAMA2_13B, LLAMA2_70B, checkpoint_bytes, count_model_params,
                       finetuning_memory_bytes, lora_trainable_params)

__all__ = ["MODELS", "LATENCY_NEEDS", "PLAN_METHODS", "PlanRow", "plan"]

MODELS = {"7B": LLAMA2_7B, "13B": LLAMA2_13B, "70B": LLAMA2_70B}
LATENCY_NEEDS = ("any", "no added latency")
PLAN_METHODS = ("full", "lora", "qlora")
LORA_R, LORA_TARGETS = 8, ("q", "v")  # the estimator's defaults (notebook 10)


@dataclass
class PlanRow:
    """One method's line: training memory and storage in bytes, trainable parameters, and whether it fits."""
    method: str
    train_bytes: int
    storage_bytes: int
    trainable: int
    fits_memory: bool
    latency_ok: bool
    note: str

    @property
    def fits(self) -> bool:
        return self.fits_memory and self.latency_ok


def plan(model: str = "7B", n_tasks: int = 1, gpu_gib: float = 24.0, latency: str = "any",
         seq_len: int = 512, checkpointing: bool = True) -> list[PlanRow]:
    """One `PlanRow` per method of `PLAN_METHODS` for Llama-2 ``model`` (``"7B"``, ``"13B"``, ``"70B"``).

    - training memory: `finetuning_memory_bytes(shape, method, r=8, targets=("q", "v"), batch=1, seq_len,
      checkpointing)["total"]`; it fits when ≤ ``gpu_gib`` GiB;
    - storage: full, ``n_tasks · checkpoint_bytes(total)``; LoRA/QLoRA, ``checkpoint_bytes(total) + n_tasks ·
      checkpoint_bytes(adapter)`` (bf16, 2 bytes per number);
    - latency ``"no added latency"``: LoRA and QLoRA pass merged for one task; with several tasks served at once
      they stay unmerged (a small extra matmul per adapted layer) and so do not pass; full fine-tuning passes.
    """
    if model not in MODELS:
        raise ValueError(f"model={model!r} is not allowed; allowed values: {', '.join(map(repr, MODELS))}")
    n_tasks = _validate.integer("n_tasks", n_tasks, 1)
    gpu_gib = _validate.positive("gpu_gib", gpu_gib)
    latency = _validate.choice("latency", latency, LATENCY_NEEDS)
    shape = MODELS[model]
    total = count_model_params(shape)
    adapter = lora_trainable_params(shape, LORA_R, LORA_TARGETS)
    rows = []
    for method in PLAN_METHODS:
        memory = finetuning_memory_bytes(shape, method, r=LORA_R, targets=LORA_TARGETS, seq_len=seq_len,
                                         checkpointing=checkpointing)["total"]
        if method == "full":
            storage, trainable = n_tasks * checkpoint_bytes(total), total
            latency_ok, note = True, "one full copy per task; no added latency"
        else:
            storage, trainable = checkpoint_bytes(total) + n_tasks * checkpoint_bytes(adapter), adapter
            merged = n_tasks == 1
            latency_ok = latency == "any" or merged
            note = ("merge for zero added latency" if merged else
                    "one base, adapters swapped or batched unmerged (extra matmuls per layer)")
        rows.append(PlanRow(method, memory, storage, trainable, memory <= gpu_gib * 2 ** 30, latency_ok, note))
    return rows
