"""The course map: every notebook, in reading order, with what the learner leaves with.

Printed by notebook 00_welcome. The hygiene tests check that the files in notebooks/ are exactly the notebooks
this map lists as written, in this order.
"""
from __future__ import annotations

COURSE_MAP: list[tuple[str, str, str]] = [  # (file stem, title, what the learner leaves with)
    ("00_welcome", "Welcome", "how to use the course, the map, an environment and widget check"),
    ("01_rank_and_decomposition", "Rank and decomposition",
     "rank; a 10×10 rank-2 matrix stored as 10×2 and 2×10 factors; numerical rank under noise"),
    ("02_svd_and_low_rank_approximation", "SVD and low-rank approximation",
     "SVD; Eckart–Young; compressing a real photo with a rank slider"),
    ("03_parameter_savings", "Parameter savings",
     "r(d+k) vs d·k; 156.25× at 2500×2500, r=8; real LLM layer counts; memory and checkpoints"),
    ("04_lora_from_scratch", "LoRA from scratch",
     "the LoRA layer, injection by module name, merge/unmerge, saving only the adapter, equal to PEFT"),
    ("05_finetuning_strategies_compared", "Fine-tuning strategies compared",
     "full fine-tuning, dense ΔW, adapters, LoRA and head-only, measured on the same models"),
    ("06_rank_and_alpha_explorer", "Rank and α explorer",
     "sliders for rank, α and learning rate; rsLoRA; the intrinsic rank of a full fine-tuning update"),
    ("07_many_tasks_one_model", "Many tasks, one model",
     "task adapters on one base; storage; each swap route timed next to its bound; mixed batches; combining"),
    ("08_lora_with_peft", "LoRA with PEFT",
     "a tiny transformers Llama; LoraConfig, Trainer, save/load, merge in bf16; lora_edu = PEFT; torchrun"),
    ("09_what_lora_learns", "What LoRA learns",
     "the LoRA paper's §7 at toy scale (targets, rank, φ, amplification), forgetting, intruders, next to published"),
    ("10_lora_variants", "LoRA variants",
     "LoRA+, DoRA, PiSSA and QLoRA's NF4 from scratch, equal to PEFT and bitsandbytes; a memory estimator"),
    ("11_choosing_a_strategy", "Choosing a strategy", "decision guide, summary table, capstone"),
]


COMING: tuple[str, ...] = ()  # the notebooks still to be written


def course_status() -> list[tuple[str, str, str, bool]]:
    """The map with a flag per notebook: True when it is written, False while it is coming."""
    return [(stem, title, summary, stem not in COMING) for stem, title, summary in COURSE_MAP]
