"""The capstone of notebook 11_choosing_a_strategy: adapt the tiny `transformers` Llama of notebook 08 with PEFT to
a domain it has not seen (the ``"reference"`` corpus: the ``help()`` pages of standard-library modules) under a
stated budget, and grade the run on held-out text.

A *plan* is a dict ``{"config": peft.LoraConfig, "steps": int, "lr": float}``. `run` trains it with a plain loop
(AdamW, gradients clipped to norm 1, ``BATCH`` windows of ``CONTEXT`` characters per step, seeded, CPU by default)
and measures the held-out loss (nats per character) of the base model and of the adapted one. `grade` passes a
run whose held-out loss is at least ``MARGIN`` nats below the base model's and which keeps to `BUDGET`; it
explains a miss by what it measured (over budget, too few steps, α/r too small, a learning rate too small, targets
that miss the attention and MLP projections).
"""
from __future__ import annotations

import copy
import functools
import warnings
from dataclasses import dataclass

import torch

from . import _validate
from .counting import training_memory_bytes
from .data import evaluation_windows, load_corpus, random_windows
from .hf_model import evaluate_lm_loss, lm_loss, load_tiny_llama

__all__ = ["CORPUS", "base_loss", "BUDGET", "MARGIN", "BATCH", "CONTEXT", "PROJECTIONS", "CapstoneRun", "reference_plan",
           "check_plan", "run", "grade", "diagnose"]

CORPUS = "reference"  # notebook 08 adapted the tiny Llama to "python"; this domain is new to it
BUDGET = {"trainable": 25_000, "steps": 40, "memory_bytes": 2 * 2 ** 20}  # memory: weights + grads + Adam, fp32
MARGIN = 0.30          # nats per character the adapted model must gain over the base model on held-out text
BATCH, CONTEXT, EVAL_WINDOWS = 8, 64, 32
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FEW_STEPS = 20         # below this many steps a miss is put down to too few steps
SMALL_SCALING = 1.0    # α/r below this: the update is scaled down (PEFT's default α = 8 at r = 8 gives 1)
SMALL_LR = 1e-3        # AdamW rates below this move LoRA's factors slowly in 40 steps


def reference_plan() -> dict:
    """The reference solution: rank 4, α = 8 on every projection (``"all-linear"`` leaves ``lm_head`` out),
    40 steps at lr 5e-3: 21,888 trainable parameters."""
    from peft import LoraConfig

    return {"config": LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=list(PROJECTIONS)),
            "steps": 40, "lr": 5e-3}


def check_plan(plan) -> dict:
    """Validate a plan and return it as ``{"config", "steps", "lr"}``; a clear error names the bad field."""
    from peft import LoraConfig

    if not isinstance(plan, dict):
        raise TypeError(f"plan must be a dict with keys 'config', 'steps' and 'lr', got {type(plan).__name__}")
    missing = [k for k in ("config", "steps", "lr") if k not in plan]
    if missing:
        raise ValueError(f"plan is missing {missing}; it needs 'config' (a peft.LoraConfig), 'steps' and 'lr'")
    config = _validate.instance("plan['config']", plan["config"], LoraConfig, "a peft.LoraConfig")
    steps = _validate.integer("plan['steps']", plan["steps"], 0)
    lr = _validate.real("plan['lr']", plan["lr"], 0.0)
    return {"config": config, "steps": steps, "lr": lr}


@functools.lru_cache(maxsize=1)
def _base_and_data():
    base, _ = load_tiny_llama()
    corpus = load_corpus(CORPUS)
    val = evaluation_windows(corpus.val, CONTEXT, max_windows=EVAL_WINDOWS)
    return base, corpus.train, val, evaluate_lm_loss(base, *val)


def base_loss() -> float:
    """The base model's held-out loss on the capstone's text (nats per character): the bar is `MARGIN` below it."""
    return _base_and_data()[3]


@dataclass
class CapstoneRun:
    """What `run` measured: counts, the adapted module kinds, α/r, memory (bytes) and held-out losses (nats/char)."""
    trainable: int
    total: int
    targets: tuple
    scaling: float
    steps: int
    lr: float
    memory_bytes: int
    base_loss: float
    loss: float

    @property
    def gain(self) -> float:
        """Nats per character the adaptation gained on held-out text (base loss − adapted loss)."""
        return self.base_loss - self.loss


def run(plan, seed: int = 0, device=None, train: bool = True) -> CapstoneRun:
    """Train ``plan`` on the tiny Llama (a copy; the shipped model is never changed) and measure it. With
    ``train=False`` it only builds and counts (no steps, no evaluation: ``loss`` is the base loss).

    Memory is `lora_edu.counting.training_memory_bytes` (fp32: 4 B per weight, 16 B per trainable parameter;
    notebook 03). The learner's random numbers are not moved on."""
    from peft import get_peft_model

    plan = check_plan(plan)
    train = _validate.boolean("train", train)
    base, train_ids, val, base_loss = _base_and_data()
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_peft_model(copy.deepcopy(base), copy.deepcopy(plan["config"]))
        if device is not None:
            model.to(device)
        trainable, total = model.get_nb_trainable_parameters()
        kinds = tuple(sorted({name.rsplit(".", 1)[-1] for name in model.targeted_module_names}))
        config = plan["config"]
        scaling = config.lora_alpha / config.r
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=plan["lr"], weight_decay=0.0)
        batches = torch.Generator().manual_seed(seed)
        model.train()
        for _ in range(plan["steps"] if train else 0):
            x, y = random_windows(train_ids, BATCH, CONTEXT, batches, device=device)
            loss = lm_loss(model, x, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
        loss = evaluate_lm_loss(model, *val) if train else base_loss
    finally:
        torch.random.set_rng_state(state)
    memory = training_memory_bytes(total, max(trainable, 1))["total"]
    return CapstoneRun(trainable, total, kinds, scaling, plan["steps"], plan["lr"], memory, base_loss, loss)


def over_budget(result: CapstoneRun) -> list[str]:
    """The limits of `BUDGET` the run breaks, each as a sentence (empty when it keeps to them all)."""
    problems = []
    if result.trainable > BUDGET["trainable"]:
        problems.append(f"{result.trainable:,} trainable parameters is over the budget of "
                        f"{BUDGET['trainable']:,}: lower r or adapt fewer projections.")
    if result.steps > BUDGET["steps"]:
        problems.append(f"{result.steps} steps is over the budget of {BUDGET['steps']}.")
    if result.memory_bytes > BUDGET["memory_bytes"]:
        problems.append(f"an estimated {result.memory_bytes / 2 ** 20:.2f} MiB for weights, gradients and Adam is "
                        f"over the budget of {BUDGET['memory_bytes'] / 2 ** 20:.0f} MiB (modules_to_save and "
                        "full fine-tuning train whole matrices).")
    return problems


def diagnose(result: CapstoneRun) -> list[str]:
    """Why a run that keeps to the budget may fall short, from what it measured (empty: nothing stands out)."""
    reasons = []
    if not set(result.targets) & set(PROJECTIONS):
        reasons.append(f"wrong targets: the config adapts {list(result.targets) or 'nothing'}, none of the "
                       "attention or MLP projections (q/k/v/o_proj, gate/up/down_proj), where a new domain's "
                       "patterns are learned.")
    if result.steps < FEW_STEPS:
        reasons.append(f"too few steps: {result.steps}; B starts at zero, so an adapter needs some tens of steps "
                       "before it changes much.")
    if result.scaling < SMALL_SCALING:
        reasons.append(f"α/r too small: α/r = {result.scaling:g} scales the update ΔW = (α/r)·B·A down; "
                       f"take α ≥ r (α = 2r is common).")
    if result.lr < SMALL_LR:
        reasons.append(f"learning rate too small: {result.lr:g}; LoRA's factors move slowly below {SMALL_LR:g} "
                       "with AdamW (notebook 09: LoRA's best rate is about 10× full fine-tuning's).")
    return reasons


def grade(result: CapstoneRun) -> tuple[bool, list[str]]:
    """``(passed, reasons)``: passed when the run keeps to `BUDGET` and gains at least `MARGIN` nats per
    character over the base model on held-out text; otherwise the reasons (budget first, then `diagnose`)."""
    problems = over_budget(result)
    if problems:
        return False, problems
    if result.gain >= MARGIN:
        return True, []
    reasons = diagnose(result) or ["nothing in the settings stands out: adapt more of the model (attention and "
                                   "MLP projections) or raise the learning rate, within the budget."]
    return False, reasons
