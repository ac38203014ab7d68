"""lora_edu: the helper package of the LoRA course, one module per concept, in the order the notebooks teach it.

- ``environment`` (00): the device, seeding, the environment report.
- ``checks``, ``exercises`` (all): self-checking exercises.
- ``widgets`` (00): sliders that redraw a figure.
- ``linalg`` (01-02): rank, numerical rank, the SVD, the best rank-r approximation and rank-r factors.
- ``counting`` (03): parameter, memory and checkpoint counts for one matrix and for published models.
- ``lora`` (04): ``LoraConfig``, the LoRA layer (``LoRALinear``) with named adapters, ``add_lora`` by module name,
  merge/unmerge, ``lora_state_dict``, and the variant seam (``LoraVariant``).
- ``peft_io`` (04): saving and loading only the adapters, in PEFT's format and folder layout.
- ``data``, ``models``, ``pretrain``, ``strategies``, ``training``, ``measure`` (05): digits tasks and text corpora,
  the digits MLP and tiny GPT (shipped checkpoint), five fine-tuning strategies (``apply_strategy``), one
  training loop, and exact counts, bytes and timings; ``bench`` (``python -m lora_edu.bench``).
- ``scaling_rules``, ``batched``, ``update_analysis`` (06): α rules and LoRA's scaling (α/r, rsLoRA's α/√r); many
  LoRA runs at once (``train_lora_batch``, ``run_lora_grid``); planted rank, rsLoRA's gradient scale and the
  intrinsic rank of a full fine-tuning update.
- ``adapters`` (07): many adapters on one model: ``set_adapter``, ``disable_adapter``, ``delete_adapter`` and
  mixed batches (``per_example_adapters``).
- ``what_lora_learns`` (09): the LoRA paper's subspace similarity φ and amplification factor, intruder dimensions,
  and the shared digits sweeps (LoRA at several ranks, learning rates and seeds; full fine-tuning beside it).
- ``quantization``, ``variants`` (10): 4-bit blockwise quantization from scratch (QLoRA's NF4, int4, FP4),
  byte-equal to bitsandbytes; LoRA+, DoRA and PiSSA (``lora_edu.variants``); the memory estimator is
  ``counting.finetuning_memory_bytes``.
"""
import logging as _logging

# `import peft` imports bitsandbytes where it is installed, and on some CPUs bitsandbytes logs a warning at import
# ("Failed to load CPU gemm_4bit_forward from kernels-community") that would land in a notebook cell's stderr.
# Every notebook imports lora_edu first, so this one line keeps them all quiet.
_logging.getLogger("bitsandbytes").setLevel(_logging.ERROR)

from . import checks, course, exercises  # noqa: F401  (lora_edu.exercises.nbNN in every notebook)
from . import counting, linalg  # noqa: F401  (notebooks 01-03)
from .environment import (ALLOWED_DEVICES, DEVICE_ENV_VAR, environment_report, format_report,
                          get_device, seed_everything, setup)
from .lora import (LoraConfig, LoRALinear, add_lora, lora_layers, lora_state_dict, merge_lora,  # notebook 04
                   unmerge_lora)
from .lora import active_adapter, adapter_names  # notebook 07
from .peft_io import load_peft_adapter, save_peft_adapter  # notebook 04
from . import data, measure, models, strategies, training  # noqa: F401  (05; not pretrain, bench: scripts)
from .strategies import STRATEGIES, apply_strategy, merge_and_unload  # notebook 05
from . import batched, scaling_rules, update_analysis  # noqa: F401  (notebook 06)
from . import what_lora_learns  # noqa: F401  (notebook 09)
from .adapters import delete_adapter, disable_adapter, per_example_adapters, set_adapter  # notebook 07
from . import quantization  # noqa: F401  (notebook 10)

__version__ = "0.1.0"
