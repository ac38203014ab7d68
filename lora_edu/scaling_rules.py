"""α, LoRA's scaling rules and the initial ``A``: the one place the batched runs and the analyses take them from.

Explained in notebook 06_rank_and_alpha_explorer. An α rule picks α from the rank (``"r"``, ``"2r"``,
``"fixed"``); a scaling rule turns α into the factor ``s`` that multiplies ``B A x``: ``α/r`` (LoRA) or
``α/√r`` (rsLoRA).
"""
from __future__ import annotations

import torch

from . import _validate, lora

RANKS = (1, 2, 4, 8, 16, 32, 64)
FIXED_ALPHA = 16
ALPHA_RULES = ("r", "2r", "fixed")  # alpha = r, alpha = 2r, alpha = FIXED_ALPHA
ALPHA_RULE_LABELS = {"r": "α = r", "2r": "α = 2r", "fixed": f"α = {FIXED_ALPHA}"}
SCALING_RULES = ("alpha/r", "alpha/sqrt(r)")  # LoRA's rule and rsLoRA's
SCALING_RULE_LABELS = {"alpha/r": "α/r (LoRA)", "alpha/sqrt(r)": "α/√r (rsLoRA)"}

__all__ = ["RANKS", "FIXED_ALPHA", "ALPHA_RULES", "ALPHA_RULE_LABELS", "SCALING_RULES", "SCALING_RULE_LABELS",
           "alpha_for", "lora_scaling", "lora_init_A"]


def alpha_for(rule: str, r: int, fixed_alpha: float = FIXED_ALPHA) -> float:
    """The α an α rule gives at rank ``r``: ``"r"`` → ``r``, ``"2r"`` → ``2r``, ``"fixed"`` → ``fixed_alpha``.
    See notebook 06_rank_and_alpha_explorer."""
    _validate.choice("rule", rule, ALPHA_RULES)
    r = _validate.integer("r", r, 1)
    fixed_alpha = _validate.positive("fixed_alpha", fixed_alpha)
    return {"r": float(r), "2r": 2.0 * r, "fixed": fixed_alpha}[rule]


def lora_scaling(alpha: float, r: int, rule: str = "alpha/r") -> float:
    """The factor LoRA multiplies ``B A x`` by: ``α / r`` (LoRA) or ``α / √r`` (rsLoRA, ``rule="alpha/sqrt(r)"``).
    With ``α = 2r`` and the α/r rule it is 2 for every rank. See notebook 06_rank_and_alpha_explorer."""
    alpha = _validate.positive("alpha", alpha)
    r = _validate.integer("r", r, 1)
    _validate.choice("rule", rule, SCALING_RULES)
    return lora.lora_scaling(r, alpha, use_rslora=rule == "alpha/sqrt(r)")


def lora_init_A(in_features: int, rank: int, seed: int = 0, device=None, *,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """LoRA's initial ``A``, shape ``(rank, in_features)``: uniform on ``[-1/√in, 1/√in]``.

    PEFT's default (Kaiming-uniform with ``a = √5``, `lora_edu.lora.init_lora_A_`, as `lora_edu.LoRALinear`),
    drawn from its own CPU generator seeded with ``seed`` (or from ``generator``, a CPU
    ``torch.Generator``, when given: then ``seed`` is not used), never from torch's global state. With a
    seed, the first ``r`` rows of a rank-64 draw are the rank-``r`` draw, so adapters of different ranks
    start from nested directions. See notebook 06_rank_and_alpha_explorer.
    """
    in_features = _validate.integer("in_features", in_features, 1)
    rank = _validate.integer("rank", rank, 1)
    if generator is None:
        generator = torch.Generator().manual_seed(_validate.integer("seed", seed, 0))
    elif not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator or None, got {generator!r}")
    a = lora.init_lora_A_(torch.empty(rank, in_features), generator=generator)
    return a.to(device) if device is not None else a
