"""Pretraining the course's two base models, and loading them.

Explained in notebook 05_finetuning_strategies_compared.

- The tiny GPT is pretrained on English prose (Python's documentation topics) by this script and shipped
  in the package as ``lora_edu/checkpoints/tiny_gpt_prose.safetensors``. Reproduce it with::

      python -m lora_edu.pretrain            # writes the checkpoint, prints how long it took
      python -m lora_edu.pretrain --check    # retrains into a temporary file and compares with the shipped one

  Training is deterministic given ``--seed`` and ``--threads`` (torch gives bit-identical results only
  at the same thread count; the default is 1 thread).
- The digits MLP trains in about a second, so notebooks pretrain it at run time with
  `pretrained_digits_mlp` (cached per process).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from . import _validate
from .data import DIGITS_TASKS, DigitsTask, evaluation_windows, load_corpus, load_digits_task, random_windows
from .models import DigitsMLP, GPTConfig, TinyGPT, count_parameters
from .training import evaluate_accuracy, evaluate_loss, train

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
GPT_CHECKPOINT = CHECKPOINT_DIR / "tiny_gpt_prose.safetensors"

GPT_PRETRAINING = {"seed": 0, "steps": 3000, "batch_size": 32, "lr": 3e-3, "warmup_steps": 100,
                   "final_lr_fraction": 0.1, "weight_decay": 0.01}
DIGITS_PRETRAINING = {"seed": 0, "steps": 300, "batch_size": 128, "lr": 3e-3, "hidden": 256}


def pretrain_gpt(steps: int = GPT_PRETRAINING["steps"], seed: int = GPT_PRETRAINING["seed"],
                 config: GPTConfig | None = None, progress: bool | None = None):
    """Pretrain a `TinyGPT` on the prose corpus (next-character prediction), on the CPU.

    Batches of ``GPT_PRETRAINING['batch_size']`` random windows of ``config.context`` characters;
    AdamW with warm-up and cosine decay. Returns ``(model, TrainingResult)``.
    """
    config = config or GPTConfig()
    prose = load_corpus("prose")
    torch.manual_seed(seed)
    model = TinyGPT(config)
    batches = torch.Generator().manual_seed(seed)
    val_x, val_y = evaluation_windows(prose.val, config.context, max_windows=256)
    settings = GPT_PRETRAINING
    result = train(model, lambda step: random_windows(prose.train, settings["batch_size"], config.context, batches),
                   steps, settings["lr"], weight_decay=settings["weight_decay"],
                   warmup_steps=min(settings["warmup_steps"], steps // 2),
                   final_lr_fraction=settings["final_lr_fraction"],
                   evaluate=lambda m: {"prose val loss": evaluate_loss(m, val_x, val_y)},
                   eval_every=max(steps // 10, 1), progress=progress, description="pretraining tiny GPT")
    return model, result


def save_gpt_checkpoint(model: TinyGPT, path: Path, metadata: dict) -> int:
    """Write the model's weights and config (as safetensors metadata) to ``path``; return its size in bytes."""
    info = {"config": json.dumps(model.config.to_dict()), **{k: str(v) for k, v in metadata.items()}}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(path), metadata=info)
    return path.stat().st_size


def checkpoint_metadata(path: Path | str = GPT_CHECKPOINT) -> dict:
    """The metadata stored with a checkpoint: config, seed, steps, thread count, losses, seconds taken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"path={str(path)!r}: no checkpoint there; run `python -m lora_edu.pretrain`")
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_pretrained_gpt(device=None, path: Path | str = GPT_CHECKPOINT) -> TinyGPT:
    """A fresh `TinyGPT` with the shipped prose-pretrained weights, on ``device`` (default CPU), in eval mode.

    Each call returns a new model, so a strategy applied to one does not touch the next.
    See notebook 05_finetuning_strategies_compared.
    """
    metadata = checkpoint_metadata(path)
    if "config" not in metadata:
        raise ValueError(f"path={str(path)!r} has no 'config' in its metadata: not a lora_edu GPT checkpoint")
    model = TinyGPT(GPTConfig(**json.loads(metadata["config"])))
    model.load_state_dict(load_file(str(path)))
    model.eval()
    return model.to(device) if device is not None else model


_DIGITS_CACHE: dict[tuple, DigitsMLP] = {}


def pretrained_digits_mlp(device=None, seed: int = DIGITS_PRETRAINING["seed"]) -> DigitsMLP:
    """A `DigitsMLP` trained on the original digits task (AdamW on random batches, about a second on a CPU).

    Trained once per process, device and seed; every call returns a fresh copy in eval mode.
    See notebook 05_finetuning_strategies_compared.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    key = (str(device), seed)
    if key not in _DIGITS_CACHE:
        task = load_digits_task("original", device)
        torch.manual_seed(seed)
        model = DigitsMLP(DIGITS_PRETRAINING["hidden"]).to(device)
        batches = torch.Generator().manual_seed(seed)

        def next_batch(step):
            rows = torch.randint(0, len(task.x_train), (DIGITS_PRETRAINING["batch_size"],), generator=batches)
            rows = rows.to(task.x_train.device)
            return task.x_train[rows], task.y_train[rows]

        train(model, next_batch, DIGITS_PRETRAINING["steps"], DIGITS_PRETRAINING["lr"], progress=False)
        _DIGITS_CACHE[key] = model.eval()
    return copy.deepcopy(_DIGITS_CACHE[key])


def digits_accuracy(model, task) -> float:
    """Validation accuracy of ``model`` on a digits task, in [0, 1].

    ``task``: a `lora_edu.data.DigitsTask`, or a task's name (one of `lora_edu.data.DIGITS_TASKS`,
    loaded onto the model's device). See notebook 05_finetuning_strategies_compared.
    """
    _validate.module("model", model)
    if isinstance(task, str):
        task = load_digits_task(task, next(model.parameters()).device)  # checks the name
    _validate.instance("task", task, DigitsTask, f"a DigitsTask or a task name ({', '.join(DIGITS_TASKS)})")
    return evaluate_accuracy(model, task.x_val, task.y_val)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_edu.pretrain",
                                     description="Pretrain the tiny GPT on Python's documentation topics.")
    parser.add_argument("--steps", type=int, default=GPT_PRETRAINING["steps"])
    parser.add_argument("--seed", type=int, default=GPT_PRETRAINING["seed"])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (results are bit-identical only at the same count; default 1)")
    parser.add_argument("--out", type=Path, default=GPT_CHECKPOINT, help="where to write the checkpoint")
    parser.add_argument("--check", action="store_true",
                        help="train into a temporary file and compare with the checkpoint at --out")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1:
        parser.error("--steps and --threads must be positive")
    torch.set_num_threads(args.threads)
    print(load_corpus("prose").report())
    start = time.perf_counter()
    model, result = pretrain_gpt(args.steps, args.seed)
    seconds = time.perf_counter() - start
    metadata = {"seed": args.seed, "steps": args.steps, "threads": args.threads,
                "final_train_loss": f"{result.train_losses[-1]:.4f}",
                "prose_val_loss": f"{result.final('prose val loss'):.4f}",
                "seconds": f"{seconds:.1f}", "python": sys.version.split()[0], "torch": torch.__version__}
    target = Path(tempfile.mkdtemp()) / "tiny_gpt_prose.safetensors" if args.check else args.out
    size = save_gpt_checkpoint(model, target, metadata)
    print(f"pretrained {model.__class__.__name__} ({count_parameters(model):,} parameters) "
          f"for {args.steps} steps in {seconds:.1f} s on {args.threads} CPU thread(s)")
    print(f"prose validation loss {result.final('prose val loss'):.4f} nats/char; "
          f"wrote {size:,} bytes to {target}")
    if args.check:
        retrained, shipped = load_file(str(target)), load_file(str(args.out))
        difference = (max(float((retrained[k].float() - shipped[k].float()).abs().max()) for k in shipped)
                      if retrained.keys() == shipped.keys() else float("inf"))
        print(f"largest difference from {args.out}: {difference:.3g}")
        return 0 if difference == 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
