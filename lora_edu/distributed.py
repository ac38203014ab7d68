"""The fine-tune of notebook 08 as a script that runs on one process or, data-parallel, on several.

Explained in notebook 08_lora_with_peft. The tiny Llama (`lora_edu.hf_model`) gets a PEFT LoRA adapter and learns
Python source code (`lora_edu.data`'s "python" corpus). Every step draws one *global* batch of
``global_batch`` windows from a seeded generator (the same on every process); process ``rank`` of ``world``
trains on its slice ``x.chunk(world)[rank]``, and ``accelerate`` all-reduces (averages) the gradients, so the
update equals that of one process on the whole global batch, up to the order of floating-point sums::

    python -m lora_edu.distributed --steps 20                                    # one process
    torchrun --standalone --nproc_per_node 2 -m lora_edu.distributed --steps 20  # two (CPU: gloo backend)

The first process prints one JSON line: ``{"processes": ..., "losses": [...], "seconds": ...}``; ``losses`` are
the global batch's mean loss per step (each process's loss averaged across processes). Dropout is 0 here: each
process would draw its own dropout masks, which one process on the whole batch cannot reproduce.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from .data import load_corpus, random_windows
from .hf_model import TINY_LLAMA_DIR, lm_loss, load_tiny_llama

__all__ = ["FINETUNE", "peft_config", "finetune", "main"]

FINETUNE = {"steps": 30, "global_batch": 16, "context": 128, "lr": 3e-3, "seed": 0, "r": 8, "lora_alpha": 16,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def peft_config(r: int = FINETUNE["r"], lora_alpha: float = FINETUNE["lora_alpha"],
                target_modules=tuple(FINETUNE["target_modules"]), lora_dropout: float = 0.0):
    """The ``peft.LoraConfig`` of the fine-tune (``task_type="CAUSAL_LM"``). See notebook 08_lora_with_peft."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules),
                      task_type="CAUSAL_LM")


def finetune(steps: int = FINETUNE["steps"], global_batch: int = FINETUNE["global_batch"],
             lr: float = FINETUNE["lr"], seed: int = FINETUNE["seed"], model_path=TINY_LLAMA_DIR,
             accelerator=None) -> dict:
    """LoRA-fine-tune the tiny Llama on Python code for ``steps`` AdamW steps of ``global_batch`` windows of
    ``FINETUNE['context']`` characters (AdamW without weight decay, gradients clipped to norm 1: the `transformers`
    Trainer's defaults, at a constant rate). ``accelerator``: an ``accelerate.Accelerator`` (data-parallel over its
    processes; ``global_batch`` must divide by their number) or None (one process, no accelerate).
    Returns ``{"processes", "losses" (one per step, the global batch's mean), "seconds" (the training loop)}``."""
    from peft import get_peft_model

    world = accelerator.num_processes if accelerator is not None else 1
    rank = accelerator.process_index if accelerator is not None else 0
    if global_batch % world:
        raise ValueError(f"global_batch={global_batch} must divide by the number of processes ({world})")
    model, _ = load_tiny_llama(model_path)
    torch.manual_seed(seed)  # the same adapter start on every process
    model = get_peft_model(model, peft_config())
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)  # the Trainer's defaults
    if accelerator is not None:
        model, optimizer = accelerator.prepare(model, optimizer)
    device = next(model.parameters()).device
    code = load_corpus("python")
    batches = torch.Generator().manual_seed(seed)
    losses = []
    start = time.perf_counter()
    for _ in range(steps):
        x, y = random_windows(code.train, global_batch, FINETUNE["context"], batches)
        x, y = x.chunk(world)[rank].to(device), y.chunk(world)[rank].to(device)
        loss = lm_loss(model, x, y)
        if accelerator is not None:
            accelerator.backward(loss)  # DDP all-reduces the gradients: every process then holds their mean
            accelerator.clip_grad_norm_(trainable, 1.0)
            loss = accelerator.reduce(loss.detach(), reduction="mean")
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return {"processes": world, "losses": losses, "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_edu.distributed",
                                     description="LoRA-fine-tune the tiny Llama on Python code, on one process or "
                                                 "data-parallel under torchrun.")
    parser.add_argument("--steps", type=int, default=FINETUNE["steps"])
    parser.add_argument("--global-batch", type=int, default=FINETUNE["global_batch"])
    parser.add_argument("--lr", type=float, default=FINETUNE["lr"])
    parser.add_argument("--seed", type=int, default=FINETUNE["seed"])
    parser.add_argument("--model", type=Path, default=TINY_LLAMA_DIR, help="a save_pretrained folder")
    parser.add_argument("--gpu", action="store_true", help="train on the GPUs (default: the CPU, gloo backend)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.global_batch < 1:
        parser.error("--steps and --global-batch must be positive")
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=not args.gpu)
    result = finetune(args.steps, args.global_batch, args.lr, args.seed, args.model, accelerator)
    if accelerator.is_main_process:
        print(json.dumps({**result, "backend": str(accelerator.state.backend)}), flush=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    # Run as a script, this quantizes nothing, and `import peft` imports bitsandbytes wherever it is installed
    # (about two seconds of CPU per process on the course's machine): mark it absent, unless already imported.
    sys.modules.setdefault("bitsandbytes", None)
    sys.exit(main())
